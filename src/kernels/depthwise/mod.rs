//! Depthwise convolutions: on f32 planes split into stride phases (`phased`), on u8 codes four
//! taps per dot product (`bytes`: a padded copy; `strips`: straight from the plane), and with
//! 16 channels in a vector's lanes (`lanes`).

pub(super) mod bytes;
#[cfg(target_arch = "x86_64")]
pub(super) mod bytes_avx2;
#[cfg(target_arch = "aarch64")]
pub(super) mod bytes_neon;
#[cfg(test)]
pub(super) mod cases;
pub(super) mod lanes;
pub(super) mod phased;
pub(super) mod strips;
#[cfg(target_arch = "x86_64")]
pub(super) mod strips_avx512;
