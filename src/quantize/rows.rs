//! Choosing how each linear layer quantizes its input: with the calibrated per-tensor range, or
//! row by row on each row's own range when it runs.
//!
//! One range for a whole tensor fails when its rows differ by orders of magnitude, as the tokens
//! of a transformer do after GELU (a few outlier features reach 10–100× the rest): most rows
//! then use a handful of the 256 codes. The choice is measured, not guessed: each linear layer
//! runs both ways on the float model's own input to it from the first calibration batch, and
//! per-row quantization is kept where it is markedly closer to float and per-tensor is not
//! already good. Per-tensor stays where it is good, so that a classifier head's numbers stay the
//! ones a QDQ file states.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use super::input::InputStats;
use super::layer::build_op;
use super::qparams::ActivationQuant;
use super::report::{compare, outlet_values};
use super::rewrite::{Candidate, LayerKind};
use crate::error::{chain, Error, Result};
use crate::model::TensorSpec;
use crate::ops::Int8Linear;

/// Signal-to-noise ratio (dB) from which per-tensor quantization is good enough: the layer's
/// error is then ~1 % of what a 6-layer encoder accumulates (cosine ≈ 0.99995).
const GOOD_ENOUGH_DB: f64 = 40.0;
/// How much closer to float (dB) per-row quantization must come to be chosen.
const MARGIN_DB: f64 = 1.0;

/// A linear layer's measured output SQNR (dB) with each input quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowChoice {
    pub per_tensor_db: f64,
    pub per_row_db: f64,
    pub per_row: bool,
}

/// Measures every linear layer of `candidates` (their input statistics set) both ways on the
/// float model's values for `batch`, sets `per_row` in the statistics of those that gain, and
/// returns each measured layer's index and numbers.
#[allow(clippy::too_many_arguments)]
pub fn choose_row_quantization(
    float: &TypedModel,
    candidates: &mut [Candidate],
    activations: &[ActivationQuant],
    per_channel: bool,
    inputs: &[TensorSpec],
    batch: Vec<Tensor>,
    executor: Executor,
) -> Result<Vec<(usize, RowChoice)>> {
    let linear: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.kind, LayerKind::Linear { .. }))
        .filter(|(_, c)| c.input_stats.lattice.is_none() && c.input_stats.fixed_kernel.is_none())
        .map(|(i, _)| i)
        .collect();
    if linear.is_empty() {
        return Ok(Vec::new());
    }
    let outlets: Vec<OutletId> =
        linear.iter().flat_map(|&i| [candidates[i].input, candidates[i].output]).collect();
    let values = outlet_values(float, &outlets, inputs, batch, executor)?;
    let mut choices = Vec::with_capacity(linear.len());
    for (&i, pair) in linear.iter().zip(values.chunks_exact(2)) {
        let (input, want) = (&pair[0], &pair[1]);
        let want = floats(want)?;
        let measure = |per_row: bool| -> Result<f64> {
            let mut layer = candidates[i].clone();
            layer.input_stats = Arc::new(InputStats { per_row, ..(*layer.input_stats).clone() });
            let op = build_op(&layer, &layer.weights, activations[i], per_channel)?;
            let linear = op
                .downcast_ref::<Int8Linear>()
                .ok_or_else(|| Error::Rewrite(format!("{}: not a linear layer", layer.name)))?;
            let have = linear.run(input).map_err(|e| Error::Rewrite(chain(&e)))?;
            Ok(compare(&want, &floats(&have)?).0)
        };
        let (per_tensor_db, per_row_db) = (measure(false)?, measure(true)?);
        let per_row = per_tensor_db < GOOD_ENOUGH_DB && per_row_db > per_tensor_db + MARGIN_DB;
        if per_row {
            let stats = &mut candidates[i].input_stats;
            *stats = Arc::new(InputStats { per_row: true, ..(**stats).clone() });
        }
        log::debug!(
            "{}: input per tensor {per_tensor_db:.1} dB, per row {per_row_db:.1} dB: {}",
            candidates[i].name,
            if per_row { "per row" } else { "per tensor" }
        );
        choices.push((i, RowChoice { per_tensor_db, per_row_db, per_row }));
    }
    Ok(choices)
}

fn floats(tensor: &Tensor) -> Result<Vec<f32>> {
    let view = tensor.to_plain_array_view::<f32>().map_err(|e| Error::Rewrite(chain(&e)))?;
    Ok(view.iter().copied().collect())
}
