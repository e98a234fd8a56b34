//! The project's int8 tract ops: `Int8Conv` and `Int8Linear`. They take float activations,
//! quantize them to u8 with calibrated parameters, multiply with i8 weights in the kernels, and
//! store float results with bias and activation applied.

mod conv;
mod linear;
mod parallel;

use std::sync::Arc;

pub use conv::Int8Conv;
pub use linear::Int8Linear;

use crate::kernels::{Activation, PackedWeights};
use crate::quantize::qparams::ActivationQuant;

/// The int8 weights of one layer and everything derived from them, immutable once built: an
/// update builds a new one and swaps the `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Output channels.
    pub n: usize,
    /// Reduction length per output channel (per group for grouped convs).
    pub k: usize,
    /// Codes, `n` rows of `k` in the kernel's k order.
    pub codes: Vec<i8>,
    /// Per-output-channel weight scales.
    pub scales: Vec<f32>,
    pub bias: Vec<f32>,
    /// `activation scale × weight scale` per output channel: the epilogue's multiplier.
    pub output_scales: Vec<f32>,
    /// Packed for the GEMM kernels, one per group (empty for depthwise convs).
    pub packed: Vec<PackedWeights>,
}

impl LayerWeights {
    /// Builds the layer from codes; `groups` splits the output channels for packing
    /// (0 = depthwise: no packing).
    pub fn new(
        codes: Vec<i8>,
        scales: Vec<f32>,
        bias: Vec<f32>,
        n: usize,
        k: usize,
        input: ActivationQuant,
        groups: usize,
    ) -> Self {
        let packed = match n.checked_div(groups) {
            None => Vec::new(), // depthwise: the direct kernel reads `codes`
            Some(per_group) => (0..groups)
                .map(|g| {
                    let rows = &codes[g * per_group * k..(g + 1) * per_group * k];
                    PackedWeights::pack(rows, per_group, k)
                })
                .collect(),
        };
        let output_scales = scales.iter().map(|s| s * input.scale).collect();
        LayerWeights { n, k, codes, scales, bias, output_scales, packed }
    }

    /// Bytes of int8 weights held (codes and packed copies), for memory reports.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.packed.iter().map(PackedWeights::bytes).sum::<usize>() + 12 * self.n
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
