//! ONNX `Loop` whose loop-carried values keep their shapes and which has no scan outputs (an
//! autoregressive decoder writing into preallocated buffers, as PaddleOCR's SLANet table
//! recognizer does): the body runs op by op on the actual tensors, once per iteration while the
//! trip count and the condition allow.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::computed::{input, wrap, Compute};
use super::Parsed;

/// The body, runnable without typing.
type BodyPlan = SimplePlan<InferenceFact, Box<dyn InferenceOp>>;

#[derive(Debug, Clone)]
struct Loop {
    body: Arc<InferenceModel>,
    /// Whether the node gives a trip count and a condition (both inputs are optional).
    has_trip_count: bool,
    has_condition: bool,
    /// Loop-carried values (inputs after the two control inputs, before outer-scope ones).
    carried: usize,
    /// The body's plan, made on the first call.
    plan: Arc<Mutex<Option<Arc<BodyPlan>>>>,
}

/// Loops are compared by identity: their bodies are graphs.
impl PartialEq for Loop {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.body, &other.body)
    }
}

impl Eq for Loop {}

impl Hash for Loop {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.body).hash(state);
    }
}

pub(super) fn onnx_loop(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let graph: &GraphProto = node.get_attr("body")?;
    let parsed = ctx.parse_graph(graph)?;
    let slots: Vec<Option<usize>> = optional_inputs(node).take(2).collect();
    let (has_trip_count, has_condition) =
        (slots[0].is_some(), slots.get(1).is_some_and(|s| s.is_some()));
    // The node's inputs are [M], [cond], carried...; the body's are iteration, cond, carried...
    let declared = node.input.len();
    let carried = declared.saturating_sub(2);
    ensure!(
        graph.output.len() == 1 + carried,
        "Loop {}: scan outputs are not supported ({} body outputs for {carried} loop-carried values)",
        node.name,
        graph.output.len()
    );
    let op = Loop {
        body: Arc::new(parsed.model),
        has_trip_count,
        has_condition,
        carried,
        plan: Arc::new(Mutex::new(None)),
    };
    Ok((wrap(op), parsed.unresolved_inputs))
}

impl Loop {
    /// Index of the first loop-carried value among the op's inputs (absent controls are not
    /// inputs).
    fn first_carried(&self) -> usize {
        usize::from(self.has_trip_count) + usize::from(self.has_condition)
    }

    /// A control scalar shaped as the body declares it (some exporters say `[1]`).
    fn control<T: Datum + Copy>(&self, body_input: usize, value: T) -> TractResult<Tensor> {
        let fact = self.body.input_fact(body_input)?;
        let rank = fact.shape.rank().concretize().unwrap_or(0);
        Ok(if rank == 1 { tensor1(&[value]) } else { tensor0(value) })
    }

    /// The body's plan: its decoded graph run op by op on the actual tensors, since shapes
    /// inside a decoder's body often depend on values it computes (a step counter).
    fn plan(&self) -> TractResult<Arc<BodyPlan>> {
        let mut cached =
            self.plan.lock().map_err(|_| format_err!("Loop body plan lock poisoned"))?;
        if let Some(plan) = cached.as_ref() {
            return Ok(plan.clone());
        }
        // The body's declared input shapes hold exporter symbols (`DynamicDimension.5`) no one
        // binds; run-time values decide the shapes instead.
        let mut body = (*self.body).clone();
        for ix in 0..body.inputs.len() {
            body.set_input_fact(ix, InferenceFact::default())?;
        }
        let plan = SimplePlan::new(body)?;
        *cached = Some(plan.clone());
        Ok(plan)
    }
}

impl Compute for Loop {
    fn name(&self) -> &'static str {
        "Loop"
    }

    fn min_inputs(&self) -> usize {
        self.first_carried() + self.carried
    }

    fn outputs(&self) -> usize {
        self.carried
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let first = self.first_carried();
        (first..first + self.carried)
            .map(|ix| Ok(input(self.name(), inputs, ix)?.without_value()))
            .collect()
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let first = self.first_carried();
        let trip_count =
            if self.has_trip_count { Some(inputs[0].cast_to_scalar::<i64>()?) } else { None };
        let mut running =
            if self.has_condition { inputs[first - 1].cast_to_scalar::<bool>()? } else { true };
        let mut carried: TVec<TValue> = inputs[first..first + self.carried].into();
        let outer: TVec<TValue> = inputs[first + self.carried..].into();
        let mut iteration = 0i64;
        while running && trip_count.is_none_or(|m| iteration < m) {
            let mut body_inputs: TVec<TValue> = tvec![
                self.control(0, iteration)?.into_tvalue(),
                self.control(1, running)?.into_tvalue(),
            ];
            body_inputs.extend(carried.iter().cloned());
            body_inputs.extend(outer.iter().cloned());
            let plan = self.plan()?;
            let outputs = plan.run(body_inputs)?;
            ensure!(outputs.len() == 1 + self.carried, "Loop body gave {} outputs", outputs.len());
            let next: TVec<TValue> = outputs[1..].into();
            for (k, (before, after)) in carried.iter().zip(&next).enumerate() {
                ensure!(
                    before.shape() == after.shape(),
                    "Loop: loop-carried value #{k} changed shape from {:?} to {:?} (not supported)",
                    before.shape(),
                    after.shape()
                );
            }
            carried = next;
            running = outputs[0].cast_to_scalar::<bool>()?;
            iteration += 1;
        }
        Ok(carried)
    }
}
