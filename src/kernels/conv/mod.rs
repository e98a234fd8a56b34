//! Convolutions on planar (channel-major) activations: im2col into C4 words, the planar GEMM
//! with its fused store, the last pixels of a plane as dot products, and stride-1 "same" layers
//! that read their planes in place.

pub(super) mod im2col;
pub(super) mod planar;
#[cfg(target_arch = "x86_64")]
pub(super) mod planar_avx2;
#[cfg(target_arch = "x86_64")]
pub(super) mod planar_avx512;
#[cfg(target_arch = "aarch64")]
pub(super) mod planar_neon;
pub(super) mod planar_tail;
pub(super) mod shifted;
