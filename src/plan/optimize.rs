//! tract's optimisation, then the project's replacements for what tract leaves slow.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;

use crate::ops::RowBroadcast;

/// `model` optimized by tract, with every binary op tract left on its generic broadcasting path
/// that [`RowBroadcast`] can take (an f32 `Add`/`Mul` of same-rank operands) swapped for it.
pub(crate) fn optimize(model: TypedModel) -> TractResult<TypedModel> {
    let mut model = model.into_optimized()?;
    for id in 0..model.nodes().len() {
        if let Some(row_op) = row_broadcast(&model, id)? {
            model.node_mut(id).op = Box::new(row_op);
        }
    }
    Ok(model)
}

/// The row-wise form of node `id`, if it is a binary op [`RowBroadcast`] can take.
fn row_broadcast(model: &TypedModel, id: usize) -> TractResult<Option<RowBroadcast>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<TypedBinOp>() else { return Ok(None) };
    let facts = model.node_input_facts(id)?;
    let output = &node.outputs[0].fact;
    let same_rank = facts.len() == 2 && facts[0].rank() == facts[1].rank();
    // The row-wise path writes into the first operand: it must have the output's shape.
    let into_first = facts.first().is_some_and(|a| a.shape == output.shape);
    let fits = same_rank && into_first && output.datum_type == f32::datum_type();
    Ok(RowBroadcast::of(op).filter(|_| fits))
}
