//! The project's tract ops: `RowBroadcast` (a float `Add`/`Mul` tract leaves on its slow
//! broadcasting path), and the int8 ones, `Int8Conv` and `Int8Linear`. These take float
//! activations, quantize them to u8 with calibrated parameters, multiply with i8 weights in the
//! kernels, and store float results with bias and activation applied. Consecutive int8
//! convolutions are linked (`Links`): the first stores u8 codes with the second's input
//! parameters, which the second reads as they are.

mod broadcast;
mod conv;
mod depthwise;
mod linear;
mod parallel;
mod planar;
mod pool;
mod scratch;

use std::sync::Arc;

use tract_onnx::prelude::TypedOp;

pub use broadcast::RowBroadcast;
pub use conv::Int8Conv;
pub use linear::Int8Linear;
pub use parallel::SpinningWorkers;
pub use pool::MaxPool2d;

use crate::kernels::ActivationQuant;
use crate::kernels::{
    byte_kernel_fits, tap_words, Activation, Epilogue, PackedWeights, PlanarWeights, LANE_CHANNELS,
    MAX_TAP_WORDS,
};

/// The channel-input parameters of a built layer: per input channel scale and zero point, the
/// common scale `s̄` the weights were folded to, and the accumulator offset per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelInput {
    pub scales: Vec<f32>,
    pub zero_points: Vec<u8>,
    pub common_scale: f32,
    /// `Σ_k code[o][k] · z_c(k)`, subtracted from output channel `o`'s accumulator.
    pub offsets: Vec<i32>,
    /// The padding word of each channel group (`kernels::fill_words`), made once per build.
    pub fills: Vec<u32>,
}

/// How a layer's weights are laid out for its kernels.
#[derive(Debug, Clone, PartialEq)]
pub enum Packed {
    /// Row-major GEMM weights (linear layers).
    Rows(PackedWeights),
    /// Planar GEMM weights, one per convolution group; k order (tap, channel padded to 4).
    Planar(Vec<PlanarWeights>),
    /// Depthwise: one filter per channel.
    Depthwise(DepthwiseTaps),
}

/// The int8 weights of one layer and everything derived from them, immutable once built: an
/// update builds a new one and swaps the `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Output channels.
    pub n: usize,
    /// Reduction length per output channel (per group for grouped convs), before padding.
    pub k: usize,
    /// Per output channel, what finishes its sums: zero-point correction (for the input's zero
    /// point), `input scale × weight scale`, bias and the layer's activation.
    pub epilogues: Vec<Epilogue>,
    pub packed: Packed,
    /// Per-input-channel quantization of an 8-bit input (`quantize::input` makes it); `None`: the
    /// layer's per-tensor input parameters.
    pub channel_input: Option<ChannelInput>,
}

/// The weight layout a layer's kernel needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Linear,
    Conv { groups: usize, taps: usize },
    Depthwise { kernel: [usize; 2] },
}

/// A depthwise layer's filters in the forms its kernels read.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthwiseTaps {
    /// The kernel's taps (row-major) as f32, exact, in blocks of 16 channels: each tap's 16
    /// channel weights together (channels past `n` 0), the lane kernel's operand.
    lanes: Vec<f32>,
    /// Taps per channel.
    taps: usize,
    /// The byte kernels' weight words ([`tap_words`]), `per_channel` per channel, packed once
    /// here rather than per channel and call (empty for kernels wider than those take).
    words: Vec<i32>,
    per_channel: usize,
    /// `Σ taps` per channel (the zero-point term of sums of raw codes).
    pub sums: Vec<i32>,
}

impl DepthwiseTaps {
    fn new(codes: &[i8], n: usize, kernel: [usize; 2]) -> Self {
        let taps = kernel[0] * kernel[1];
        let mut lanes = vec![0f32; n.div_ceil(LANE_CHANNELS) * taps * LANE_CHANNELS];
        for (c, filter) in codes.chunks_exact(taps.max(1)).take(n).enumerate() {
            let block = (c / LANE_CHANNELS) * taps * LANE_CHANNELS;
            for (t, &v) in filter.iter().enumerate() {
                lanes[block + t * LANE_CHANNELS + c % LANE_CHANNELS] = f32::from(v);
            }
        }
        let per_channel = kernel[0] * kernel[1].div_ceil(4);
        let (mut words, mut sums) = (Vec::new(), Vec::new());
        if byte_kernel_fits(kernel) {
            let mut filter_words = [0; MAX_TAP_WORDS];
            for filter in codes.chunks_exact(taps.max(1)).take(n) {
                let filter: Vec<f32> = filter.iter().map(|&v| f32::from(v)).collect();
                sums.push(tap_words(kernel, &filter, &mut filter_words));
                words.extend_from_slice(&filter_words[..per_channel]);
            }
        }
        DepthwiseTaps { lanes, taps, words, per_channel, sums }
    }

    /// Channel `c`'s weight words, as the byte kernels take them.
    pub fn words(&self, c: usize) -> &[i32] {
        &self.words[c * self.per_channel..(c + 1) * self.per_channel]
    }

    /// The weight words of `channels`, one run per channel.
    pub fn words_of(&self, channels: std::ops::Range<usize>) -> &[i32] {
        &self.words[channels.start * self.per_channel..channels.end * self.per_channel]
    }

    /// The weights of the 16 channels from `16 · block`, as the lane kernel takes them.
    pub fn lane_block(&self, block: usize) -> &[f32] {
        let len = self.taps * LANE_CHANNELS;
        &self.lanes[block * len..(block + 1) * len]
    }

    /// Channel `c`'s taps (row-major) into `filter` (at least one per tap), as the f32 plane
    /// kernel takes them.
    pub fn filter(&self, c: usize, filter: &mut [f32]) {
        let block = self.lane_block(c / LANE_CHANNELS);
        let lane = block.iter().skip(c % LANE_CHANNELS).step_by(LANE_CHANNELS);
        filter.iter_mut().zip(lane).for_each(|(f, &w)| *f = w);
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        (self.lanes.len() + self.words.len() + self.sums.len()) * 4
    }
}

impl LayerWeights {
    /// Builds the layer from codes (`n` rows of `k`) and packs them for `layout`; the input is
    /// quantized per tensor with `input`, or per channel with `channel_input`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        codes: Vec<i8>,
        scales: Vec<f32>,
        bias: Vec<f32>,
        (n, k): (usize, usize),
        input: ActivationQuant,
        channel_input: Option<ChannelInput>,
        activation: Activation,
        layout: Layout,
    ) -> Self {
        let packed = match layout {
            Layout::Linear => Packed::Rows(PackedWeights::pack(&codes, n, k)),
            Layout::Depthwise { kernel } => {
                Packed::Depthwise(DepthwiseTaps::new(&codes, n, kernel))
            }
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
        let output_scales: Vec<f32> = scales.iter().map(|s| s * input.scale).collect();
        // Σ_k W[o][k] per output channel: the input's zero point times it is the part of the
        // sums the centred codes would not have (depthwise sums are of centred codes already).
        let column_sums: Vec<i32> = match &packed {
            Packed::Rows(rows) => rows.column_sums.clone(),
            Packed::Planar(groups) => groups.iter().flat_map(|g| g.column_sums.clone()).collect(),
            Packed::Depthwise(_) => vec![0; n],
        };
        let zero_point = i32::from(input.zero_point);
        let epilogues = (0..n)
            .map(|o| Epilogue {
                // Per-channel zero points (an 8-bit input's lattice) have their own offsets.
                offset: match &channel_input {
                    Some(c) => c.offsets.get(o).copied().unwrap_or(0),
                    None => zero_point * column_sums.get(o).copied().unwrap_or(0),
                },
                scale: output_scales[o],
                bias: bias[o],
                activation,
            })
            .collect();
        LayerWeights { n, k, epilogues, packed, channel_input }
    }

    /// Bytes of int8 weights held (packed codes, sums, epilogues), for memory reports.
    pub fn bytes(&self) -> usize {
        let packed = match &self.packed {
            Packed::Rows(p) => p.bytes(),
            Packed::Planar(planes) => planes.iter().map(PlanarWeights::bytes).sum(),
            Packed::Depthwise(taps) => taps.bytes(),
        };
        packed + self.n * std::mem::size_of::<Epilogue>()
    }
}

/// How an int8 layer exchanges activations with its neighbours in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Links {
    /// The input is a u8 tensor of codes already quantized with the layer's `input` parameters
    /// (the previous int8 layer wrote them), not floats.
    pub input_codes: bool,
    /// Store u8 codes with these parameters (the input parameters of every int8 layer reading
    /// the output) instead of floats.
    pub output_codes: Option<ActivationQuant>,
}

/// What every int8 layer shares: its name, input quantization, fused activation, weights.
#[derive(Debug, Clone)]
pub struct Int8Layer {
    /// The name of the layer in reports (the ONNX node it replaced).
    pub name: String,
    pub input: ActivationQuant,
    pub activation: Activation,
    pub weights: Arc<LayerWeights>,
    pub links: Links,
}

impl PartialEq for Int8Layer {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.links == other.links
            && Arc::ptr_eq(&self.weights, &other.weights)
    }
}
impl Eq for Int8Layer {}

impl Int8Layer {
    /// This layer with `activation` applied by its stores: the layer's and each channel's
    /// epilogue's (updates rebuild the epilogues from the layer's activation).
    pub fn with_activation(&self, activation: Activation) -> Int8Layer {
        let mut weights = (*self.weights).clone();
        weights.epilogues.iter_mut().for_each(|e| e.activation = activation);
        Int8Layer { activation, weights: Arc::new(weights), ..self.clone() }
    }
}

/// The int8 layer inside `op`, if it is one of the project's int8 ops.
pub fn int8_layer(op: &dyn TypedOp) -> Option<&Int8Layer> {
    if let Some(conv) = op.downcast_ref::<Int8Conv>() {
        return Some(&conv.layer);
    }
    op.downcast_ref::<Int8Linear>().map(|linear| &linear.layer)
}

/// A copy of the int8 op `op` running `layer` (new weights after an update) with `op`'s links
/// to its neighbours kept, and a residual convolution's activation (the ReLU after the `Add` it
/// took over, which `layer`, built from the model's layer, does not have); `None` if `op` is
/// not an int8 op.
pub fn with_layer(op: &dyn TypedOp, layer: &Int8Layer) -> Option<Box<dyn TypedOp>> {
    let relinked = |old: &Int8Layer| Int8Layer { links: old.links, ..layer.clone() };
    if let Some(conv) = op.downcast_ref::<Int8Conv>() {
        let mut layer = relinked(&conv.layer);
        if conv.residual && layer.activation != conv.layer.activation {
            layer = layer.with_activation(conv.layer.activation);
        }
        return Some(Box::new(Int8Conv { layer, ..conv.clone() }));
    }
    op.downcast_ref::<Int8Linear>().map(|linear| {
        Box::new(Int8Linear { layer: relinked(&linear.layer), ..linear.clone() })
            as Box<dyn TypedOp>
    })
}
