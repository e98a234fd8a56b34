//! `If` whose condition is a constant once the inputs are known (Silero VAD branches on its
//! sample-rate input): only the branch taken is analysed and typed, inlined in the graph.
//! tract analyses both branches and requires their outputs to agree, which they do not when
//! each branch expects a different chunk size.

use std::collections::HashMap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_hir::infer::{Factoid, InferenceOp};
use tract_onnx::tract_hir::internal::*;

use super::{tract_parser, Parsed};

pub(super) fn constant_if(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let (general, outer_inputs) = tract_parser("If", ctx, node)?;
    let branch = |attr: &str| -> TractResult<Branch> {
        let graph: &GraphProto = node.get_attr(attr)?;
        let body = ctx.parse_graph(graph)?.model;
        // The branch's sources are the outer tensors it reads, named as they are; input 0 of
        // the If is the condition, so outer tensor k is input k + 1.
        let inputs =
            body.input_outlets()?
                .iter()
                .map(|outlet| {
                    let name = &body.node(outlet.node).name;
                    outer_inputs.iter().position(|outer| outer == name).map(|p| p + 1).ok_or_else(
                        || format_err!("branch {attr} reads {name}, not an input of If"),
                    )
                })
                .collect::<TractResult<Vec<usize>>>()?;
        Ok(Branch { body, inputs })
    };
    let op = ConstantIf {
        general,
        then_branch: branch("then_branch")?,
        else_branch: branch("else_branch")?,
    };
    Ok((Box::new(op), outer_inputs))
}

/// A branch of an `If`: its graph, and for each of its inputs the `If` input it reads.
#[derive(Debug, Clone)]
struct Branch {
    body: InferenceModel,
    inputs: Vec<usize>,
}

/// An `If` that, when its condition is known, is only the branch taken.
#[derive(Debug, Clone)]
struct ConstantIf {
    /// tract's `If`, for conditions known only at run time.
    general: Box<dyn InferenceOp>,
    then_branch: Branch,
    else_branch: Branch,
}

impl ConstantIf {
    fn taken(&self, condition: &Tensor) -> TractResult<&Branch> {
        Ok(if condition.cast_to_scalar::<bool>()? { &self.then_branch } else { &self.else_branch })
    }
}

impl Op for ConstantIf {
    fn name(&self) -> StaticName {
        "If".into()
    }

    not_a_typed_op!();
}

impl EvalOp for ConstantIf {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.general.as_op().eval(ctx, inputs)
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        self.general.as_op().eval_out_of_plan(inputs)
    }
}

/// Graph ops are never merged as equal (as tract's own `If`).
impl PartialEq for ConstantIf {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl Eq for ConstantIf {}

impl InferenceOp for ConstantIf {
    fn infer_facts(
        &mut self,
        inputs: TVec<&InferenceFact>,
        outputs: TVec<&InferenceFact>,
        observed: TVec<&InferenceFact>,
    ) -> TractResult<(TVec<InferenceFact>, TVec<InferenceFact>, TVec<InferenceFact>)> {
        let Some(condition) = inputs.first().and_then(|c| c.value.concretize()) else {
            return self.general.infer_facts(inputs, outputs, observed);
        };
        let taken = condition.cast_to_scalar::<bool>()?;
        let branch = if taken { &mut self.then_branch } else { &mut self.else_branch };
        let mut inputs: TVec<InferenceFact> = inputs.into_iter().cloned().collect();
        let mut outputs: TVec<InferenceFact> = outputs.into_iter().cloned().collect();
        loop {
            let mut changed = false;
            for (body_ix, &outer_ix) in branch.inputs.iter().enumerate() {
                changed |=
                    branch.body.input_fact_mut(body_ix)?.unify_with_mut(&mut inputs[outer_ix])?;
            }
            for (ix, output) in outputs.iter_mut().enumerate() {
                changed |= branch.body.output_fact_mut(ix)?.unify_with_mut(output)?;
            }
            changed |= branch.body.analyse(false)?;
            if !changed {
                return Ok((inputs, outputs, observed.into_iter().cloned().collect()));
            }
        }
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.then_branch.body.outputs.len())
    }

    fn to_typed(
        &self,
        source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let condition = target.outlet_fact(mapping[&node.inputs[0]])?.konst.clone();
        let Some(condition) = condition else {
            return self.general.to_typed(source, node, target, mapping);
        };
        let branch = self.taken(&condition)?;
        let body = branch.body.clone().into_typed()?;
        let mut wired: HashMap<OutletId, OutletId> = HashMap::new();
        for (body_input, &outer_ix) in body.input_outlets()?.iter().zip(&branch.inputs) {
            wired.insert(*body_input, mapping[&node.inputs[outer_ix]]);
        }
        for id in body.eval_order()? {
            let inner = body.node(id);
            if inner.op_is::<TypedSource>() {
                continue;
            }
            let inputs: TVec<OutletId> = inner.inputs.iter().map(|o| wired[o]).collect();
            let name = format!("{}.{}", node.name, inner.name);
            let outputs = target.wire_node(name, inner.op.clone(), &inputs)?;
            for (slot, outlet) in outputs.into_iter().enumerate() {
                wired.insert(OutletId::new(id, slot), outlet);
            }
        }
        body.output_outlets()?.iter().map(|o| Ok(wired[o])).collect()
    }

    as_op!();
}
