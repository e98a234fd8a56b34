//! `BatchNormalization` with computed statistics (tf2onnx writes layer normalisation that way):
//! tract folds constant statistics only; computed ones are wired as elementwise math.

use std::collections::HashMap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_hir::infer::InferenceOp;
use tract_onnx::tract_hir::internal::*;

use super::{tract_parser, Parsed};

pub(super) fn batch_normalization(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
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
