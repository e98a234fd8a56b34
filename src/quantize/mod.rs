//! Post-training INT8 quantization: calibrate, choose parameters, rewrite the graph with the
//! project's int8 ops, and measure each layer against float.

pub mod qparams;
mod report;
mod rewrite;

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

pub use report::{compare, measure_layers, LayerReport};
pub use rewrite::{find_layers, Candidate, LayerKind, Skipped};

use crate::calibrate::{Calibrator, Method};
use crate::error::{chain, Error, Result};
use crate::model::TensorSpec;
use crate::ops::{Int8Conv, Int8Layer, Int8Linear, LayerWeights, Layout};
use qparams::{quantize_weights, ActivationQuant};

/// How to quantize.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub method: Method,
    /// One weight scale per output channel (else one per tensor).
    pub per_channel: bool,
    /// Node or tensor names of layers to keep in float.
    pub exclude: Vec<String>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions { method: Method::DEFAULT, per_channel: true, exclude: Vec::new() }
    }
}

/// A source of calibration batches (inputs in model order); `Ok(None)` ends the data.
pub type BatchSource<'a> = dyn FnMut() -> Result<Option<Vec<Tensor>>> + Send + 'a;

/// What quantization produced, for reports.
#[derive(Debug, Clone)]
pub struct QuantizationSummary {
    pub options: QuantizeOptions,
    /// One entry per Conv/MatMul-like layer: int8 ones worst first, then those left in float.
    pub report: Vec<LayerReport>,
    /// Calibration batches and samples seen.
    pub batches: usize,
    pub samples: usize,
    /// The fixed bound on calibration memory (histograms), whatever the data size.
    pub calibration_bytes: usize,
    /// Bytes of float weights replaced, and of int8 weights holding them now.
    pub float_weight_bytes: usize,
    pub int8_weight_bytes: usize,
}

/// The outcome of [`quantize`]: the graph with int8 ops in place of the quantized layers.
#[derive(Debug)]
pub struct Quantized {
    pub typed: TypedModel,
    pub summary: QuantizationSummary,
}

/// Calibrates `decluttered` on `batches` and returns the int8 graph with its report.
pub fn quantize(
    decluttered: &TypedModel,
    inputs: &[TensorSpec],
    batches: &mut BatchSource<'_>,
    options: &QuantizeOptions,
    executor: Executor,
) -> Result<Quantized> {
    let calibration = |e: TractError| Error::Calibration(chain(&e));
    let (candidates, skipped) = find_layers(decluttered, &options.exclude).map_err(calibration)?;
    let observed: Vec<OutletId> = candidates.iter().map(|c| c.input).collect();
    let mut calibrator = Calibrator::new(decluttered, inputs, &observed, executor.clone())?;
    let mut first_batch = None;
    while let Some(batch) = batches()? {
        if first_batch.is_none() {
            first_batch = Some(batch.clone());
        }
        calibrator.observe(batch)?;
    }
    let Some(first_batch) = first_batch else {
        return Err(Error::Calibration("no calibration data: the source yielded nothing".into()));
    };
    let (batch_count, samples) = calibrator.seen();
    log::info!("calibrated on {samples} samples in {batch_count} batches ({})", options.method);

    let mut typed = decluttered.clone();
    let mut replaced = HashMap::new();
    let mut int8_outlets = Vec::with_capacity(candidates.len());
    let (mut float_bytes, mut int8_bytes) = (0, 0);
    for (layer, observer) in candidates.iter().zip(calibrator.observers()) {
        let (low, high) = observer.range(options.method);
        let input = ActivationQuant::from_range(low, high);
        let op = build_op(layer, input, options.per_channel);
        float_bytes += layer.weights.len() * 4 + layer.bias.len() * 4;
        int8_bytes += op_weights(&*op).map_or(0, LayerWeights::bytes);
        let outlet =
            rewrite::substitute(&mut typed, layer, op, &mut replaced).map_err(calibration)?;
        int8_outlets.push(outlet);
    }
    let report = measure_layers(
        decluttered,
        &typed,
        &candidates,
        &int8_outlets,
        &skipped,
        inputs,
        first_batch,
        executor,
    )?;
    let summary = QuantizationSummary {
        options: options.clone(),
        report,
        batches: batch_count,
        samples,
        calibration_bytes: calibrator.memory_bound_bytes(),
        float_weight_bytes: float_bytes,
        int8_weight_bytes: int8_bytes,
    };
    Ok(Quantized { typed, summary })
}

fn build_op(layer: &Candidate, input: ActivationQuant, per_channel: bool) -> Box<dyn TypedOp> {
    let (codes, scales) = quantize_weights(&layer.weights, layer.n, layer.k, per_channel);
    let layout = match &layer.kind {
        LayerKind::Conv { depthwise: true, .. } => Layout::Depthwise,
        LayerKind::Conv { pool_spec, group, .. } => {
            Layout::Conv { groups: *group, taps: pool_spec.kernel_shape.iter().product() }
        }
        LayerKind::Linear { .. } => Layout::Linear,
    };
    let weights =
        LayerWeights::new(codes, scales, layer.bias.clone(), layer.n, layer.k, input, layout);
    let int8 = Int8Layer {
        name: layer.name.clone(),
        input,
        activation: layer.activation,
        weights: Arc::new(weights),
    };
    match &layer.kind {
        LayerKind::Conv { pool_spec, group, depthwise } => Box::new(Int8Conv {
            layer: int8,
            pool_spec: (**pool_spec).clone(),
            group: *group,
            depthwise: *depthwise,
        }),
        LayerKind::Linear { kept_axes } => {
            Box::new(Int8Linear { layer: int8, kept_axes: *kept_axes })
        }
    }
}

fn op_weights(op: &dyn TypedOp) -> Option<&LayerWeights> {
    if let Some(conv) = op.downcast_ref::<Int8Conv>() {
        return Some(&conv.layer.weights);
    }
    op.downcast_ref::<Int8Linear>().map(|l| &*l.layer.weights)
}
