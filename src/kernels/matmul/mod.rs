//! Row-major u8 × i8 matrix products: the Gemm and MatMul layers' kernel.

pub(super) mod gemm;
