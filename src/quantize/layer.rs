//! One int8 layer's numbers — codes, scales, the corrected bias, an 8-bit input's channel
//! parameters — computed in one place, and the int8 op built from them. The op, live updates
//! and the saved file all take their numbers from [`quantize_layer`].

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::input::{self, FixedKernel};
use super::qparams::{quantize_weights, ActivationQuant};
use super::rewrite::{Candidate, LayerKind};
use super::{bias, rounding};
use crate::error::{Error, Result};
use crate::ops::{ChannelInput, Int8Conv, Int8Layer, Int8Linear, LayerWeights, Layout};

/// What an int8 layer computes with, in kernel order.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNumbers {
    /// `n × k` codes, k in the kernel's order.
    pub codes: Vec<i8>,
    /// One weight scale per output channel.
    pub scales: Vec<f32>,
    /// The bias the kernel adds (bias correction applied).
    pub bias: Vec<f32>,
    /// How the layer's input is quantized: per tensor, or per channel of an 8-bit lattice.
    pub input: ActivationQuant,
    pub channel_input: Option<ChannelInput>,
}

/// The numbers of `layer` with float `weights` (`n × k`, kernel order; the layer's own or an
/// update's), reading activations quantized with `input`: weights quantized per channel or
/// per tensor, codes refined for correlated inputs, bias corrected. A layer whose input stats
/// carry fixed numbers (a deployable file) takes its codes from its weights as they are.
pub fn quantize_layer(
    layer: &Candidate,
    weights: &[f32],
    input: ActivationQuant,
    per_channel: bool,
) -> Result<LayerNumbers> {
    if let Some(fixed) = &layer.input_stats.fixed_kernel {
        return fixed_numbers(layer, weights, input, fixed);
    }
    // An 8-bit input quantized per channel folds its channel steps into the weights.
    let lattice = layer.input_stats.lattice.as_ref();
    let (weights, common) = input::fold_weights(layer, weights, lattice);
    let (mut codes, scales) = quantize_weights(&weights, layer.n, layer.k, per_channel);
    if let LayerKind::Conv { group, .. } = &layer.kind {
        // Correlated inputs: codes chosen for the output error, not weight by weight.
        let factors = lattice.zip(common).map(|(l, c)| input::folded_input_factors(l, c, layer.k));
        let moments = &layer.input_stats.moments;
        rounding::refine_codes(
            &weights,
            &mut codes,
            &scales,
            layer.k,
            *group,
            moments,
            factors.as_deref(),
        );
    }
    Ok(match (lattice, common) {
        (Some(lattice), Some(common)) => {
            let (means, shifts) = input::folded_means_and_shifts(layer, lattice, common);
            let bias = bias::corrected_bias(layer, &weights, &codes, &scales, &means, &shifts);
            let channel_input = Some(input::channel_input(layer, lattice, common, &codes));
            let input = ActivationQuant { scale: common, zero_point: 0 };
            LayerNumbers { codes, scales, bias, input, channel_input }
        }
        _ => {
            let means = &layer.input_stats.means;
            let bias = bias::corrected_bias(layer, &weights, &codes, &scales, means, &[]);
            LayerNumbers { codes, scales, bias, input, channel_input: None }
        }
    })
}

/// The numbers of a layer a deployable file fixed: its weights are codes × scales (as the
/// file's DequantizeLinear computes them in f32), so each quotient rounds back to its code.
fn fixed_numbers(
    layer: &Candidate,
    weights: &[f32],
    input: ActivationQuant,
    fixed: &FixedKernel,
) -> Result<LayerNumbers> {
    let misfit = |what: &str| Error::ModelLoad {
        path: layer.name.clone(),
        reason: format!("the saved int8 layer does not fit the graph: {what}"),
    };
    let (n, k) = (layer.n, layer.k);
    if fixed.scales.len() != n || fixed.bias.len() != n || weights.len() != n * k {
        return Err(misfit("channel counts"));
    }
    let mut codes = Vec::with_capacity(n * k);
    for (row, &scale) in weights.chunks(k.max(1)).zip(&fixed.scales) {
        for &w in row {
            let code = (w / scale).round();
            if !(code.abs() <= 127.0 && code * scale == w) {
                return Err(misfit("weights that are not codes × scales"));
            }
            codes.push(code as i8);
        }
    }
    let lattice = layer.input_stats.lattice.as_ref();
    let (input, channel_input) =
        match lattice.and_then(|l| Some((l, input::common_step(layer, l)?))) {
            Some((lattice, common)) => (
                ActivationQuant { scale: common, zero_point: 0 },
                Some(input::channel_input(layer, lattice, common, &codes)),
            ),
            None => (input, None),
        };
    Ok(LayerNumbers {
        codes,
        scales: fixed.scales.clone(),
        bias: fixed.bias.clone(),
        input,
        channel_input,
    })
}

/// The int8 op standing for `layer` with float `weights` (see [`quantize_layer`]), packed for
/// its kernel.
pub fn build_op(
    layer: &Candidate,
    weights: &[f32],
    input: ActivationQuant,
    per_channel: bool,
) -> Result<Box<dyn TypedOp>> {
    let numbers = quantize_layer(layer, weights, input, per_channel)?;
    let per_row = layer.input_stats.per_row && matches!(layer.kind, LayerKind::Linear { .. });
    let layout = match &layer.kind {
        LayerKind::Conv { depthwise: true, pool_spec, .. } => {
            let kernel = &pool_spec.kernel_shape;
            Layout::Depthwise { kernel: [kernel[0], kernel.get(1).copied().unwrap_or(1)] }
        }
        LayerKind::Conv { pool_spec, group, .. } => {
            Layout::Conv { groups: *group, taps: pool_spec.kernel_shape.iter().product() }
        }
        LayerKind::Linear { .. } => Layout::Linear,
    };
    // Rows quantized as they come: the epilogues scale by the weight scales alone.
    let input = if per_row { ActivationQuant { scale: 1.0, zero_point: 0 } } else { numbers.input };
    let weights = LayerWeights::new(
        numbers.codes,
        numbers.scales,
        numbers.bias,
        (layer.n, layer.k),
        input,
        numbers.channel_input,
        layer.activation,
        layout,
    );
    let int8 = Int8Layer {
        name: layer.name.clone(),
        input,
        activation: layer.activation,
        weights: Arc::new(weights),
        links: Default::default(),
    };
    Ok(match &layer.kind {
        LayerKind::Conv { pool_spec, group, depthwise } => Box::new(Int8Conv {
            layer: int8,
            pool_spec: (**pool_spec).clone(),
            group: *group,
            depthwise: *depthwise,
            layouts: Default::default(),
            residual: false,
        }),
        LayerKind::Linear { kept_axes } => {
            Box::new(Int8Linear { layer: int8, kept_axes: *kept_axes, per_row })
        }
    })
}
