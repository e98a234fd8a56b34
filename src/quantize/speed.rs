//! Never slower than float: each layer runs both ways on its calibration input, alone, and a
//! layer whose int8 op measures slower than tract's float layer, or whose output is too far from
//! it, stays float (the report says so, with both times or the error).
//!
//! Int8 wins by far on big convolutions and MatMuls; it can lose on tiny ones (a 16-channel
//! convolution on a few pixels, a 1-row MatMul) where quantizing the input and dequantizing the
//! output cost more than the products save. Each side is an optimized plan of just that layer
//! (its fused bias and activation included) on the real input, run in alternation so that load
//! from elsewhere on the machine falls on both.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use super::layer::build_op;
use super::qparams::ActivationQuant;
use super::report::{compare, outlet_values};
use super::rewrite::Candidate;
use crate::error::Result;
use crate::model::TensorSpec;

/// Fewest and most timed runs of each side; the runs stop after [`BUDGET`] once the fewest are
/// done.
const MIN_RUNS: usize = 3;
const MAX_RUNS: usize = 9;
const BUDGET: Duration = Duration::from_millis(40);
/// Nodes a layer's fused chain (`Conv`/`EinSum`, bias `Add`, clamps) can hold; a longer walk
/// means the chain is not a simple one and the layer is not timed.
const MAX_CHAIN: usize = 8;

/// One layer measured alone: median times, and how close its int8 output came to float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerTimes {
    pub float_ms: f64,
    pub int8_ms: f64,
    /// SQNR (dB) of the int8 op's output against the float layer's, on the same float input.
    pub sqnr_db: f64,
    /// Whether int8 was the slower one in nearly every round ([`CONSISTENTLY`]), not only in
    /// the median: load from elsewhere on the machine makes single rounds noisy.
    pub consistently_slower: bool,
}

/// Share of the rounds int8 must lose to be [`LayerTimes::consistently_slower`].
const CONSISTENTLY: f64 = 0.8;

/// Times every candidate both ways on its input from the float model run on `batch`; returns,
/// per candidate, its times (`None`: not measurable, which keeps it int8).
#[allow(clippy::too_many_arguments)]
pub fn time_layers(
    float: &TypedModel,
    candidates: &[Candidate],
    activations: &[ActivationQuant],
    per_channel: bool,
    inputs: &[TensorSpec],
    batch: Vec<Tensor>,
    executor: Executor,
) -> Result<Vec<Option<LayerTimes>>> {
    let outlets: Vec<OutletId> = candidates.iter().map(|c| c.input).collect();
    let values = outlet_values(float, &outlets, inputs, batch, executor.clone())?;
    let options = RunOptions { executor: Some(executor), ..Default::default() };
    let mut times = Vec::with_capacity(candidates.len());
    for ((layer, &quant), input) in candidates.iter().zip(activations).zip(values) {
        let measured = (|| -> TractResult<Option<LayerTimes>> {
            let Some(float_model) = float_layer(float, layer, &input)? else { return Ok(None) };
            let op = build_op(layer, &layer.weights, quant, per_channel)?;
            let mut int8_model = TypedModel::default();
            let source = int8_model.add_source("input", f32::fact(input.shape()))?;
            let output = int8_model.wire_node(&layer.name, op, &[source])?;
            int8_model.select_output_outlets(&output)?;
            let plan = |m: TypedModel| m.into_optimized()?.into_runnable_with_options(&options);
            Ok(Some(time_pair(&plan(float_model)?, &plan(int8_model)?, &input)?))
        })();
        times.push(measured.unwrap_or_else(|e| {
            log::debug!("{}: not timed ({e:#})", layer.name);
            None
        }));
    }
    Ok(times)
}

/// A model of `layer`'s float chain alone, reading `input`; `None` when the chain reaches past
/// constants and the layer's input.
fn float_layer(
    model: &TypedModel,
    layer: &Candidate,
    input: &Tensor,
) -> TractResult<Option<TypedModel>> {
    let mut chain = Vec::new();
    let mut stack = vec![layer.output.node];
    while let Some(id) = stack.pop() {
        if chain.contains(&id) {
            continue;
        }
        if chain.len() == MAX_CHAIN {
            return Ok(None);
        }
        chain.push(id);
        for outlet in &model.node(id).inputs {
            if *outlet != layer.input && model.outlet_fact(*outlet)?.konst.is_none() {
                stack.push(outlet.node);
            }
        }
    }
    chain.sort_unstable(); // node ids are in evaluation order
    let mut sub = TypedModel::default();
    let mut wires: HashMap<OutletId, OutletId> = HashMap::new();
    wires.insert(layer.input, sub.add_source("input", f32::fact(input.shape()))?);
    for &id in &chain {
        let node = model.node(id);
        let mut node_inputs = TVec::new();
        for (slot, outlet) in node.inputs.iter().enumerate() {
            let wire = match wires.get(outlet) {
                Some(&wire) => wire,
                None => {
                    let konst = model.outlet_fact(*outlet)?.konst.clone();
                    let konst = konst.with_context(|| format!("{}: input {slot}", node.name))?;
                    let wire = sub.add_const(format!("{}.input{slot}", node.name), konst)?;
                    wires.insert(*outlet, wire);
                    wire
                }
            };
            node_inputs.push(wire);
        }
        let outputs = sub.wire_node(&node.name, node.op.clone(), &node_inputs)?;
        for (slot, wire) in outputs.into_iter().enumerate() {
            wires.insert(OutletId::new(id, slot), wire);
        }
    }
    let output = wires.get(&layer.output).copied().context("the chain misses its output")?;
    sub.select_output_outlets(&[output])?;
    Ok(Some(sub))
}

/// Median times of the two plans on `input`, run in alternation after one warm-up run each.
fn time_pair(
    float: &Arc<TypedSimplePlan>,
    int8: &Arc<TypedSimplePlan>,
    input: &TValue,
) -> TractResult<LayerTimes> {
    let run = |plan: &Arc<TypedSimplePlan>| -> TractResult<f64> {
        let start = Instant::now();
        plan.run(tvec![input.clone()])?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    let values = |plan: &Arc<TypedSimplePlan>| -> TractResult<Vec<f32>> {
        let outputs = plan.run(tvec![input.clone()])?;
        Ok(outputs[0].cast_to::<f32>()?.to_plain_array_view::<f32>()?.iter().copied().collect())
    };
    let sqnr_db = compare(&values(float)?, &values(int8)?).0;
    let (mut float_ms, mut int8_ms) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while float_ms.len() < MAX_RUNS && (float_ms.len() < MIN_RUNS || start.elapsed() < BUDGET) {
        float_ms.push(run(float)?);
        int8_ms.push(run(int8)?);
    }
    let lost = float_ms.iter().zip(&int8_ms).filter(|(f, i)| i > f).count();
    Ok(LayerTimes {
        consistently_slower: lost as f64 >= CONSISTENTLY * float_ms.len() as f64,
        float_ms: median(&mut float_ms),
        int8_ms: median(&mut int8_ms),
        sqnr_db,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
