//! ONNX operators whose tract translation gives up on files real exporters write, parsed by the
//! project instead (falling back to tract's own translation wherever that one works):
//!
//! - `If` whose condition is a constant once the inputs are known (Silero VAD branches on its
//!   sample-rate input): only the branch taken is analysed and typed, inlined in the graph.
//!   tract analyses both branches and requires their outputs to agree, which they do not when
//!   each branch expects a different chunk size.
//! - `BatchNormalization` with computed statistics (tf2onnx writes layer normalisation that
//!   way): tract folds constant statistics only; computed ones are wired as elementwise math.
//! - `Squeeze` of opset < 13 without `axes`: squeezes every unit axis, as the spec says.

use std::collections::HashMap;
use std::sync::LazyLock;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_hir::infer::{Factoid, InferenceOp};
use tract_onnx::tract_hir::internal::*;

type Parsed = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own parsers, which the project's delegate to.
static TRACT_OPS: LazyLock<OnnxOpRegister> = LazyLock::new(|| tract_onnx::onnx().op_register);

/// Puts the project's parsers in front of tract's.
pub fn register(ops: &mut OnnxOpRegister) {
    ops.insert("If", constant_if);
    ops.insert("BatchNormalization", batch_normalization);
    ops.insert("Squeeze", squeeze);
}

fn tract_parser(op_type: &str, ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let parse =
        TRACT_OPS.0.get(op_type).ok_or_else(|| format_err!("tract has no parser for {op_type}"))?;
    parse(ctx, node)
}

fn constant_if(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
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

fn batch_normalization(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let (folding, closures) = tract_parser("BatchNormalization", ctx, node)?;
    let epsilon = node.get_attr_opt("epsilon")?.unwrap_or(1e-5f32);
    Ok((Box::new(ComputedBatchNorm { folding, epsilon }), closures))
}

/// Batch normalisation whose statistics may be computed by the graph.
#[derive(Debug, Clone)]
struct ComputedBatchNorm {
    /// tract's, which folds constant statistics into a multiply-add.
    folding: Box<dyn InferenceOp>,
    epsilon: f32,
}

impl Op for ComputedBatchNorm {
    fn name(&self) -> StaticName {
        "BatchNormalization".into()
    }

    not_a_typed_op!();
}

impl EvalOp for ComputedBatchNorm {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.folding.as_op().eval(ctx, inputs)
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        self.folding.as_op().eval_out_of_plan(inputs)
    }
}

/// Never merged as equal: the wrapped op carries the data format, which is not compared here.
impl PartialEq for ComputedBatchNorm {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl Eq for ComputedBatchNorm {}

impl InferenceOp for ComputedBatchNorm {
    fn infer_facts(
        &mut self,
        inputs: TVec<&InferenceFact>,
        outputs: TVec<&InferenceFact>,
        observed: TVec<&InferenceFact>,
    ) -> TractResult<(TVec<InferenceFact>, TVec<InferenceFact>, TVec<InferenceFact>)> {
        self.folding.infer_facts(inputs, outputs, observed)
    }

    fn to_typed(
        &self,
        source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let inputs: TVec<OutletId> = node.inputs.iter().map(|o| mapping[o]).collect();
        ensure!(inputs.len() == 5, "BatchNormalization takes 5 inputs, {} given", inputs.len());
        let constant =
            inputs[1..].iter().all(|&o| target.outlet_fact(o).is_ok_and(|f| f.konst.is_some()));
        if constant {
            return self.folding.to_typed(source, node, target, mapping);
        }
        let name = &node.name;
        let x = target.outlet_fact(inputs[0])?.clone();
        let rank = x.rank();
        ensure!(rank >= 2, "BatchNormalization input has rank {rank}, needs a channel axis");
        // Statistics [C] as [1, C, 1, …] to broadcast over the batch and spatial axes.
        let mut params = TVec::new();
        for (ix, &param) in inputs[1..].iter().enumerate() {
            let mut wire =
                target.wire_node(format!("{name}.param{ix}.batch"), AxisOp::Add(0), &[param])?[0];
            for axis in 2..rank {
                wire = target.wire_node(
                    format!("{name}.param{ix}.axis{axis}"),
                    AxisOp::Add(axis),
                    &[wire],
                )?[0];
            }
            params.push(wire);
        }
        let (scale, bias, mean, var) = (params[0], params[1], params[2], params[3]);
        let epsilon = tensor0(self.epsilon).cast_to_dt(x.datum_type)?.into_owned();
        let epsilon =
            target.add_const(format!("{name}.epsilon"), epsilon.broadcast_into_rank(rank)?)?;
        let var = target.wire_node(format!("{name}.var_eps"), math::add(), &[var, epsilon])?[0];
        let std = target.wire_node(format!("{name}.std"), math::sqrt(), &[var])?[0];
        let slope = target.wire_node(format!("{name}.slope"), math::div(), &[scale, std])?[0];
        let centred =
            target.wire_node(format!("{name}.centred"), math::sub(), &[inputs[0], mean])?[0];
        let scaled = target.wire_node(format!("{name}.scaled"), math::mul(), &[centred, slope])?[0];
        target.wire_node(name, math::add(), &[scaled, bias])
    }

    as_op!();
}

fn squeeze(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let no_axes = node.get_attr_opt_vec::<i64>("axes")?.is_none();
    if ctx.onnx_operator_set_version < 13 && no_axes {
        return Ok((expand(tract_onnx::tract_hir::ops::array::Squeeze::new(None)), vec![]));
    }
    tract_parser("Squeeze", ctx, node)
}
