//! What int8 layers store: activations as floats or u8 codes (`codes`, finishing a layer's i32
//! sums), and the output tensors the threads initialise part by part (`output`).

pub(super) mod codes;
#[cfg(target_arch = "x86_64")]
pub(super) mod codes_avx2;
#[cfg(target_arch = "x86_64")]
pub(super) mod codes_avx512;
#[cfg(target_arch = "aarch64")]
pub(super) mod codes_neon;
pub(super) mod output;
