//! INT8 compute kernels: u8 activations × i8 weights → i32, quantize and requantize loops.
//!
//! Every kernel has a portable scalar reference; the AVX-512-VNNI paths (`vpdpbusd`, which
//! multiplies u8 by i8 natively), for x86 CPUs without AVX-512 the 256-bit AVX-VNNI and AVX2 ones,
//! and on aarch64 the NEON ones (`usdot`, `sdot`, `smull`) are chosen at run time ([`Isa`]) and
//! checked against the scalar reference by property tests on every instruction set the CPU runs.
//! Nothing here knows about graphs; `store/output.rs` allocates the tract tensors the kernels store
//! into.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod conv;
mod depthwise;
mod geometry;
mod isa;
mod matmul;
mod moments;
#[cfg(target_arch = "aarch64")]
mod neon;
mod pool;
#[cfg(target_arch = "aarch64")]
mod pool_neon;
mod quant;
#[cfg(target_arch = "aarch64")]
mod quant_neon;
mod store;

pub use conv::im2col::{im2col_c4_rows, PatchFill};
pub use conv::planar::{fill_words, quantize_c4, quantize_c4_channels, PlanarWeights, Planes};
#[cfg(target_arch = "x86_64")]
pub use conv::planar_tail::MAX_TAIL_PIXELS;
pub use conv::planar_tail::{conv_planar_with_tail, tail_scratch_len, VECTOR_PIXELS};
pub use conv::shifted::{conv_shifted, ShiftedOperand, ShiftedPlanes};
pub use depthwise::bytes::{byte_kernel_fits, tap_words, BytePlane, MAX_TAP_WORDS};
pub use depthwise::lanes::{LanePlanes, LANE_CHANNELS};
pub use depthwise::phased::{PhasedPlane, MAX_DEPTHWISE_STRIDE, MAX_DEPTHWISE_TAPS};
pub use depthwise::strips::StripPlan;
pub use geometry::ConvGeometry;
pub use isa::{Isa, Tier};
pub use matmul::gemm::{gemm_u8i8, PackedWeights};
pub use moments::{add_column_sums, add_pair_products};
pub use pool::{max_pool_plane, max_pool_row_len, CodePool};
pub use quant::{
    abs_max, dequantize_codes, min_max, quantize_i8_symmetric, quantize_u8, Activation,
    ActivationQuant, EpilogueColumns,
};
pub use store::codes::{Element, Epilogue, FloatStore, OutputCodes, SimdElement};
pub use store::output::{OutputPart, OutputTensor};

// What the bench (and tests elsewhere in the crate) call directly; the crate's ops reach them
// through the above.
#[cfg(any(test, feature = "bench-internals"))]
pub use conv::im2col::im2col_c4;
#[cfg(any(test, feature = "bench-internals"))]
pub use conv::planar::conv_planar;
#[cfg(any(test, feature = "bench-internals"))]
pub use quant::quantize_value;
