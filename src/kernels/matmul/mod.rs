//! Row-major u8 × i8 matrix products: the Gemm and MatMul layers' kernel.

pub(super) mod gemm;
#[cfg(target_arch = "aarch64")]
pub(super) mod gemm_neon;
