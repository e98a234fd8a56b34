//! The per-layer quantization report: which layers run in int8 (and why others do not), and how
//! far each int8 layer's output is from float on calibration data.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use super::rewrite::{Candidate, LayerKind, Skipped};
use crate::error::{catch_panics, chain, Error, Result};
use crate::model::bind_inputs;
use crate::model::TensorSpec;
use crate::plan::Plans;

/// One Conv/MatMul-like layer of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub name: String,
    /// `conv`, `depthwise`, `pointwise`, `linear`, or `float` for layers left alone.
    pub kind: String,
    pub int8: bool,
    /// Why the layer stayed float.
    pub reason: Option<String>,
    /// Signal-to-quantization-noise ratio of the layer's output (int8 model vs float model, so
    /// error accumulated from earlier layers counts), in dB; higher is better.
    pub sqnr_db: Option<f64>,
    /// Cosine similarity of the same outputs.
    pub cosine: Option<f64>,
    /// How the input is quantized: `per-tensor`, `per-row` (each row on its own range, as it
    /// runs), or `per-channel lattice` for 8-bit data quantized losslessly on its own
    /// per-channel steps (`None` for float layers).
    pub input: Option<String>,
    /// Whether the bias is corrected for the mean shift of the quantized weights.
    pub bias_corrected: bool,
    /// How the weights were rounded: `data-aware` (codes chosen for the output error from the
    /// input's patch moments, `quantize::rounding`) or `nearest` (`None` for float layers).
    pub rounding: Option<String>,
}

impl LayerReport {
    /// An int8 layer, with its (SQNR dB, cosine) against float when measured.
    pub(crate) fn int8(layer: &Candidate, measured: Option<(f64, f64)>) -> Self {
        LayerReport {
            name: layer.name.clone(),
            kind: kind_name(&layer.kind).into(),
            int8: true,
            reason: None,
            sqnr_db: measured.map(|m| m.0),
            cosine: measured.map(|m| m.1),
            input: Some(
                if layer.input_stats.lattice.is_some() {
                    "per-channel lattice"
                } else if layer.input_stats.per_row {
                    "per-row"
                } else {
                    "per-tensor"
                }
                .into(),
            ),
            bias_corrected: !layer.input_stats.means.is_empty(),
            rounding: Some(
                if super::rounding::is_data_aware(layer) { "data-aware" } else { "nearest" }.into(),
            ),
        }
    }

    /// A layer a saved file quantizes, before any graph of it is typed (kind and rounding are
    /// only known per signature).
    pub(crate) fn saved(name: &str) -> Self {
        LayerReport {
            name: name.to_string(),
            kind: "int8".into(),
            int8: true,
            reason: None,
            sqnr_db: None,
            cosine: None,
            input: None,
            bias_corrected: false,
            rounding: None,
        }
    }

    /// A layer left in float, and why.
    pub(crate) fn float(skipped: &Skipped) -> Self {
        LayerReport {
            name: skipped.name.clone(),
            kind: "float".into(),
            int8: false,
            reason: Some(skipped.reason.clone()),
            sqnr_db: None,
            cosine: None,
            input: None,
            bias_corrected: false,
            rounding: None,
        }
    }
}

/// Runs both graphs on `batch` and compares each int8 layer's output with float's; returns the
/// report, int8 layers worst first, then the float ones.
#[allow(clippy::too_many_arguments)]
pub fn measure_layers(
    float: &TypedModel,
    quantized: &TypedModel,
    layers: &[Candidate],
    int8_outlets: &[OutletId],
    skipped: &[Skipped],
    inputs: &[TensorSpec],
    batch: Vec<Tensor>,
    executor: Executor,
) -> Result<Vec<LayerReport>> {
    let float_outputs: Vec<OutletId> = layers.iter().map(|l| l.output).collect();
    let expected =
        run_with_outputs(float, &float_outputs, inputs, batch.clone(), executor.clone())?;
    let got = run_with_outputs(quantized, int8_outlets, inputs, batch, executor)?;
    let mut report: Vec<LayerReport> = layers
        .iter()
        .zip(expected.iter().zip(&got))
        .map(|(layer, (want, have))| LayerReport::int8(layer, Some(compare(want, have))))
        .collect();
    report.sort_by(|a, b| a.sqnr_db.partial_cmp(&b.sqnr_db).unwrap_or(std::cmp::Ordering::Equal));
    report.extend(skipped.iter().map(LayerReport::float));
    Ok(report)
}

fn kind_name(kind: &LayerKind) -> &'static str {
    match kind {
        LayerKind::Conv { depthwise: true, .. } => "depthwise",
        LayerKind::Conv { pool_spec, .. } if pool_spec.kernel_shape.iter().all(|&k| k == 1) => {
            "pointwise"
        }
        LayerKind::Conv { .. } => "conv",
        LayerKind::Linear { .. } => "linear",
    }
}

fn run_with_outputs(
    model: &TypedModel,
    outputs: &[OutletId],
    inputs: &[TensorSpec],
    batch: Vec<Tensor>,
    executor: Executor,
) -> Result<Vec<Vec<f32>>> {
    outlet_values(model, outputs, inputs, batch, executor)?
        .iter()
        .map(|v| {
            let view =
                v.to_plain_array_view::<f32>().map_err(|e| Error::Calibration(format!("{e:#}")))?;
            Ok(view.iter().copied().collect())
        })
        .collect()
}

/// The values of `outputs` of `model` run on `batch`.
pub(super) fn outlet_values(
    model: &TypedModel,
    outputs: &[OutletId],
    inputs: &[TensorSpec],
    batch: Vec<Tensor>,
    executor: Executor,
) -> Result<TVec<TValue>> {
    let mut model = model.clone();
    model.select_output_outlets(outputs).map_err(|e| Error::Calibration(chain(&e)))?;
    let plans = Plans::new(&model, Some(executor), "quantization report")?;
    let plan = plans.get(&bind_inputs(inputs, &batch)?, &batch)?;
    catch_panics("quantization report", || {
        plan.run(batch.into_iter().map(TValue::from).collect())
            .map_err(|e| Error::Calibration(chain(&e)))
    })
}

/// (SQNR in dB, cosine similarity) of `have` against `want`.
pub fn compare(want: &[f32], have: &[f32]) -> (f64, f64) {
    let (mut signal, mut noise, mut dot, mut have_sq) = (0f64, 0f64, 0f64, 0f64);
    for (&w, &h) in want.iter().zip(have) {
        let (w, h) = (f64::from(w), f64::from(h));
        signal += w * w;
        noise += (w - h) * (w - h);
        dot += w * h;
        have_sq += h * h;
    }
    let sqnr = if noise == 0.0 { f64::INFINITY } else { 10.0 * (signal / noise).log10() };
    let cosine =
        if signal == 0.0 || have_sq == 0.0 { 1.0 } else { dot / (signal.sqrt() * have_sq.sqrt()) };
    (sqnr, cosine)
}
