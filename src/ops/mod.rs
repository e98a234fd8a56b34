//! The project's int8 tract ops: `Int8Conv` and `Int8Linear`. They take float activations,
//! quantize them to u8 with calibrated parameters, multiply with i8 weights in the kernels, and
//! store float results with bias and activation applied.

mod conv;
mod linear;
mod parallel;
mod scratch;

use std::sync::Arc;

use tract_onnx::prelude::TypedOp;

pub use conv::Int8Conv;
pub use linear::Int8Linear;

use crate::kernels::{Activation, PackedWeights, PlanarWeights};
use crate::quantize::input::ChannelInput;
use crate::quantize::qparams::ActivationQuant;

/// How a layer's weights are laid out for its kernels.
#[derive(Debug, Clone, PartialEq)]
pub enum Packed {
    /// Row-major GEMM weights (linear layers).
    Rows(PackedWeights),
    /// Planar GEMM weights, one per convolution group; k order (tap, channel padded to 4).
    Planar(Vec<PlanarWeights>),
    /// Depthwise: `n` rows of `taps` codes as f32 (exact), which the direct kernel multiplies.
    Depthwise(Vec<f32>),
}

/// The int8 weights of one layer and everything derived from them, immutable once built: an
/// update builds a new one and swaps the `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Output channels.
    pub n: usize,
    /// Reduction length per output channel (per group for grouped convs), before padding.
    pub k: usize,
    /// Per-output-channel weight scales.
    pub scales: Vec<f32>,
    pub bias: Vec<f32>,
    /// `activation scale × weight scale` per output channel: the epilogue's multiplier.
    pub output_scales: Vec<f32>,
    pub packed: Packed,
    /// Per-input-channel quantization of an 8-bit input (`quantize::input`); `None`: the
    /// layer's per-tensor input parameters.
    pub channel_input: Option<ChannelInput>,
}

/// The weight layout a layer's kernel needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Linear,
    Conv { groups: usize, taps: usize },
    Depthwise,
}

impl LayerWeights {
    /// Builds the layer from codes (`n` rows of `k`) and packs them for `layout`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        codes: Vec<i8>,
        scales: Vec<f32>,
        bias: Vec<f32>,
        n: usize,
        k: usize,
        input: ActivationQuant,
        layout: Layout,
    ) -> Self {
        let packed = match layout {
            Layout::Linear => Packed::Rows(PackedWeights::pack(&codes, n, k)),
            Layout::Depthwise => Packed::Depthwise(codes.iter().map(|&c| f32::from(c)).collect()),
            Layout::Conv { groups, taps } => {
                let per_group = n / groups.max(1);
                let channels = k / taps.max(1);
                let padded = channels.div_ceil(4) * 4;
                let planes = (0..groups.max(1))
                    .map(|g| {
                        // (tap, channel) rows, each tap's channels padded to a multiple of 4.
                        let mut rows = vec![0i8; per_group * taps * padded];
                        for o in 0..per_group {
                            for t in 0..taps {
                                let src =
                                    &codes[(g * per_group + o) * k + t * channels..][..channels];
                                rows[(o * taps + t) * padded..][..channels].copy_from_slice(src);
                            }
                        }
                        PlanarWeights::pack(&rows, per_group, taps * padded / 4)
                    })
                    .collect();
                Packed::Planar(planes)
            }
        };
        let output_scales = scales.iter().map(|s| s * input.scale).collect();
        LayerWeights { n, k, scales, bias, output_scales, packed, channel_input: None }
    }

    /// Bytes of int8 weights held (packed codes, sums, scales, bias), for memory reports.
    pub fn bytes(&self) -> usize {
        let packed = match &self.packed {
            Packed::Rows(p) => p.bytes(),
            Packed::Planar(planes) => planes.iter().map(PlanarWeights::bytes).sum(),
            Packed::Depthwise(taps) => taps.len() * 4,
        };
        packed + 12 * self.n
    }
}

/// What every int8 layer shares: its name, input quantization, fused activation, weights.
#[derive(Debug, Clone)]
pub struct Int8Layer {
    /// The name of the layer in reports (the ONNX node it replaced).
    pub name: String,
    pub input: ActivationQuant,
    pub activation: Activation,
    pub weights: Arc<LayerWeights>,
}

impl PartialEq for Int8Layer {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.weights, &other.weights)
    }
}
impl Eq for Int8Layer {}

/// The int8 layer inside `op`, if it is one of the project's int8 ops.
pub fn int8_layer(op: &dyn TypedOp) -> Option<&Int8Layer> {
    if let Some(conv) = op.downcast_ref::<Int8Conv>() {
        return Some(&conv.layer);
    }
    op.downcast_ref::<Int8Linear>().map(|linear| &linear.layer)
}
