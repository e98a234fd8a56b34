//! INT8 compute kernels: u8 activations × i8 weights → i32, quantize and requantize loops.
//!
//! Every kernel has a portable scalar reference; the AVX-512-VNNI paths (`vpdpbusd`, which
//! multiplies u8 by i8 natively) and, for CPUs without AVX-512, the 256-bit AVX-VNNI and AVX2
//! ones ([`Isa`]) are chosen at run time and checked against the scalar reference by property
//! tests on every instruction set the CPU runs. Nothing here knows about graphs; `output.rs` allocates the tract tensors the
//! kernels store into.

mod codes;
#[cfg(target_arch = "x86_64")]
mod codes_avx2;
mod depthwise;
mod depthwise_bytes;
#[cfg(target_arch = "x86_64")]
mod depthwise_bytes_avx2;
#[cfg(test)]
mod depthwise_cases;
mod depthwise_lanes;
mod depthwise_strips;
mod gemm;
mod im2col;
mod moments;
mod output;
mod planar;
#[cfg(target_arch = "x86_64")]
mod planar_avx2;
mod planar_tail;
mod pool;
mod quant;
mod shifted;

use std::sync::OnceLock;

pub use codes::{Element, Epilogue, FloatStore, OutputCodes, SimdElement, SimdSum, Sum};
pub use depthwise::{PhasedPlane, MAX_DEPTHWISE_STRIDE, MAX_DEPTHWISE_TAPS};
pub use depthwise_bytes::{byte_kernel_fits, tap_words, BytePlane, MAX_TAP_WORDS};
pub use depthwise_lanes::{LanePlanes, LANE_CHANNELS};
pub use depthwise_strips::StripPlan;
pub use gemm::{gemm_u8i8, gemm_u8i8_block, gemm_u8i8_reference, PackedWeights, BLOCK_N};
pub use im2col::{im2col_c4, im2col_c4_fills, im2col_c4_rows, PatchFill};
pub use moments::{add_column_sums, add_pair_products};
pub use output::{OutputPart, OutputTensor};
pub use planar::{
    conv_planar, fill_words, quantize_c4, quantize_c4_channels, ConvGeometry, PlanarWeights, Planes,
};
pub use planar_tail::{
    conv_planar_tail, conv_planar_with_tail, tail_pixels, tail_scratch_len, MAX_TAIL_PIXELS,
    VECTOR_PIXELS,
};
pub use pool::{max_pool_plane, max_pool_row_len, CodePool, PoolValue};
pub use quant::{
    abs_max, dequantize_codes, dequantize_rows, quantize_i8_symmetric, quantize_u8, quantize_value,
    round_half_even, saturate_i8, saturate_u8, Activation, ActivationQuant,
};
pub use shifted::{conv_shifted, ShiftedOperand, ShiftedPlanes};

/// The instruction set the int8 kernels use, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with VNNI (`vpdpbusd` on 512-bit vectors).
    Avx512Vnni,
    /// AVX2 with AVX-VNNI (`vpdpbusd` on 256-bit vectors: Intel laptop cores since Alder Lake).
    AvxVnni,
    /// AVX2 and FMA (products of u8 by i8 widened to 16 bits, exact: Haswell to Zen 3).
    Avx2,
    /// Portable Rust; the reference every other path is tested against.
    Scalar,
}

/// Environment variable that makes the kernels use a lower instruction set than the CPU's best
/// (`avx_vnni`, `avx2` or `scalar`): to compare them, or to reproduce a laptop's path here.
pub const ISA_ENV: &str = "JARVIS_PERF_ISA";

impl Isa {
    const ALL: [Isa; 4] = [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2, Isa::Scalar];

    /// The name used in logs, status and [`ISA_ENV`] (`avx512_vnni`, `avx_vnni`, `avx2`,
    /// `scalar`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512_vnni",
            Isa::AvxVnni => "avx_vnni",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }

    /// Whether this CPU runs this instruction set's kernels.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Isa::Avx512Vnni => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
                Isa::AvxVnni => avx2 && has!("avxvnni"),
                Isa::Avx2 => avx2,
                Isa::Scalar => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }

    /// Every instruction set this CPU runs, best first (the property tests compare each with
    /// the scalar reference).
    pub fn supported() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.runs_here())
    }

    /// Whether this is one of the 256-bit instruction sets (AVX2, with or without AVX-VNNI).
    pub fn is_avx2(self) -> bool {
        matches!(self, Isa::AvxVnni | Isa::Avx2)
    }

    /// The instruction set the kernels use: the best this CPU runs, or the one [`ISA_ENV`] names
    /// if the CPU runs it (a name it does not know, or an instruction set the CPU lacks, is
    /// logged and ignored).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Isa::supported().next().unwrap_or(Isa::Scalar);
            let Ok(asked) = std::env::var(ISA_ENV) else { return best };
            match Isa::ALL.into_iter().find(|isa| isa.name() == asked.trim()) {
                Some(isa) if isa.runs_here() => isa,
                Some(isa) => {
                    log::warn!(
                        "{ISA_ENV}={}: this CPU cannot run it, using {}",
                        isa.name(),
                        best.name()
                    );
                    best
                }
                None => {
                    let names = Isa::ALL.map(Isa::name).join(", ");
                    log::warn!("{ISA_ENV}={asked:?} is none of {names}, using {}", best.name());
                    best
                }
            }
        })
    }
}

#[cfg(test)]
impl Isa {
    /// The scalar reference, then every other instruction set this CPU runs: what the property
    /// tests compare.
    pub(crate) fn reference_first() -> impl Iterator<Item = Isa> {
        std::iter::once(Isa::Scalar).chain(Isa::supported().filter(|&isa| isa != Isa::Scalar))
    }
}
