//! What calibration learns about a layer's input beyond its range: per-channel means (bias
//! correction) and, for an 8-bit input such as a normalised image, its per-channel lattice
//! (lossless per-channel quantization). Folding the lattice into the layer: the kernel reads
//! codes `q_c = round(x / s_c) + z_c`, so the weights of input channel `c` are scaled by
//! `s_c / s̄` before their own quantization, and the accumulator is corrected by
//! `Σ_k code[o][k] · z_c(k)` per output channel.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::rewrite::{Candidate, LayerKind};
use crate::calibrate::ChannelLattice;
use crate::ops::ChannelInput;

/// Calibration statistics of a layer's input, shared by every build of the layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputStats {
    /// Per-channel means (empty when unknown).
    pub means: Vec<f32>,
    /// Per-channel quantization, when the input is 8-bit data and the layer can use it.
    pub lattice: Option<ChannelLattice>,
    /// Centred second moments of the input patches, packed per group (data-aware rounding,
    /// `quantize::rounding`); empty when not recorded.
    pub moments: Vec<f32>,
    /// The layer's int8 numbers as a deployable file carries them (no float master to
    /// quantize): its weights are then exactly codes × these scales.
    pub fixed_kernel: Option<FixedKernel>,
    /// The input's rows (tokens, batch rows) span ranges too different for one calibrated
    /// range: a linear layer quantizes each row on its own range when it runs
    /// (`quantize::rows` measures and decides).
    pub per_row: bool,
}

/// The weight scales (per output channel) and the bias the kernel adds (bias correction
/// applied) of a layer whose codes are fixed.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedKernel {
    pub scales: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Input statistics of int8 layers, by tract layer name.
pub type InputStatsByLayer = HashMap<String, Arc<InputStats>>;

/// Whether `layer` can take per-channel input quantization: a dense (ungrouped) convolution
/// reading a model input directly, where 8-bit data arrives.
pub fn lattice_eligible(model: &TypedModel, layer: &Candidate) -> bool {
    let dense = matches!(&layer.kind, LayerKind::Conv { group: 1, depthwise: false, .. });
    let source = model.input_outlets().is_ok_and(|inputs| inputs.contains(&layer.input));
    dense && source
}

/// The input channel of kernel column `k` of a dense convolution (k order: tap, channel).
fn channel(k: usize, channels: usize) -> usize {
    k % channels.max(1)
}

/// For a layer with a lattice: the weights with channel `c` scaled by `s_c / s̄` (`s̄` the
/// largest step), and `s̄`; otherwise the weights as they are.
pub fn fold_weights<'w>(
    layer: &Candidate,
    weights: &'w [f32],
    lattice: Option<&ChannelLattice>,
) -> (Cow<'w, [f32]>, Option<f32>) {
    let Some((lattice, common)) = lattice.and_then(|l| Some((l, common_step(layer, l)?))) else {
        return (Cow::Borrowed(weights), None);
    };
    if weights.len() != layer.n * layer.k {
        return (Cow::Borrowed(weights), None);
    }
    let channels = lattice.scales.len();
    let folded = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| w * (lattice.scales[channel(i % layer.k, channels)] / common))
        .collect();
    (Cow::Owned(folded), Some(common))
}

/// The common step `s̄` (the largest) a layer folds its lattice's channel steps to, if the
/// lattice fits the layer: a dense convolution whose input has exactly the lattice's channels
/// (a saved file could claim any); anything else keeps its per-tensor input.
pub fn common_step(layer: &Candidate, lattice: &ChannelLattice) -> Option<f32> {
    let channels = lattice.scales.len();
    let common = lattice.scales.iter().fold(0f32, |m, &s| m.max(s));
    let taps = match &layer.kind {
        LayerKind::Conv { pool_spec, group: 1, depthwise: false } => {
            pool_spec.kernel_shape.iter().product::<usize>()
        }
        _ => 0,
    };
    let fits = channels > 0
        && lattice.zero_points.len() == channels
        && lattice.shifts.len() == channels
        && channels * taps == layer.k;
    (fits && common > 0.0 && !common.is_nan()).then_some(common)
}

/// The kernel-domain statistics of a folded layer: means and lattice shifts scaled by
/// `s̄ / s_c` (the inverse of the weights' scaling), so bias correction works on the folded
/// weights unchanged.
pub fn folded_means_and_shifts(
    layer: &Candidate,
    lattice: &ChannelLattice,
    common: f32,
) -> (Vec<f32>, Vec<f32>) {
    let means = &layer.input_stats.means;
    let ratio = |c: usize| lattice.scales.get(c).map_or(1.0, |s| common / s);
    let scaled_means = means.iter().enumerate().map(|(c, &m)| m * ratio(c)).collect();
    let shifts = lattice.shifts.iter().enumerate().map(|(c, &d)| d * ratio(c)).collect();
    (scaled_means, shifts)
}

/// Per kernel column (k order: tap, channel), the factor `s̄ / s_c` by which the folded layer's
/// input exceeds the original, so input statistics of the original carry over (rounding).
pub fn folded_input_factors(lattice: &ChannelLattice, common: f32, k: usize) -> Vec<f64> {
    let channels = lattice.scales.len();
    (0..k)
        .map(|j| {
            let step = lattice.scales.get(channel(j, channels)).copied().unwrap_or(common);
            f64::from(common) / f64::from(step)
        })
        .collect()
}

/// The channel input of a layer whose folded weights quantized to `codes` (`n × k`).
pub fn channel_input(
    layer: &Candidate,
    lattice: &ChannelLattice,
    common: f32,
    codes: &[i8],
) -> ChannelInput {
    let channels = lattice.scales.len();
    let offsets = codes
        .chunks(layer.k.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(k, &w)| i32::from(w) * i32::from(lattice.zero_points[channel(k, channels)]))
                .sum()
        })
        .collect();
    ChannelInput {
        fills: crate::kernels::fill_words(&lattice.zero_points),
        scales: lattice.scales.clone(),
        zero_points: lattice.zero_points.clone(),
        common_scale: common,
        offsets,
    }
}
