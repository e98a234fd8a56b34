//! Residual `Add`s fused into the int8 convolution that computes one of their operands: the
//! convolution's output starts as the other operand and its float store adds to it
//! ([`FloatStore::AddTo`](crate::kernels::FloatStore::AddTo)), then applies the ReLU or clip
//! that followed the `Add`. The `Add` (and the clip) then cost no pass of their own: tract ran
//! them as one more read of two float tensors and a write, on one thread (2 % of ResNet18 on
//! one thread, 3.5 % on two). The float operations are the same, in the same order, so the
//! results are bit-identical.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;

use super::rewrite::{binary_with_const, clip_activation, only_successor};
use crate::kernels::Activation;
use crate::ops::{Int8Conv, Packed};

/// Fuses every float `Add` of two same-shape tensors, one of them a planar int8 convolution's
/// output read by nothing else (no activation of its own, not a model output), into that
/// convolution, with the `Max`/`Min` clips that alone follow the `Add`; returns how many.
pub fn fuse_residual_adds(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in 0..model.nodes().len() {
        let Some((conv, residual)) = fusable(model, id)? else { continue };
        let (end, activation) = trailing_clips(model, OutletId::new(id, 0))?;
        let conv_node = model.node(conv.node);
        let Some(op) = conv_node.op_as::<Int8Conv>() else { continue };
        let mut op = op.clone();
        op.residual = true;
        op.layer = op.layer.with_activation(activation);
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, conv_node.inputs[0])?;
        let residual = patch.tap_model(model, residual)?;
        let wired = patch.wire_node(&conv_node.name, op, &[input, residual])?;
        patch.shunt_outside(model, end, wired[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    if fused > 0 {
        // The replaced convolutions hold their weights until dropped from the graph.
        model.compact()?;
    }
    Ok(fused)
}

/// For node `id`, a float `Add` of two tensors of one shape: the operand a fusable int8
/// convolution computes, and the other one.
fn fusable(model: &TypedModel, id: usize) -> TractResult<Option<(OutletId, OutletId)>> {
    let node = model.node(id);
    let is_add = node.op_as::<TypedBinOp>().is_some_and(|op| op.0.name() == "Add");
    if !is_add || node.inputs.len() != 2 {
        return Ok(None);
    }
    let output = model.outlet_fact(OutletId::new(id, 0))?;
    for (conv, other) in [(node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])] {
        let (a, b) = (model.outlet_fact(conv)?, model.outlet_fact(other)?);
        let floats = [a, b, output].iter().all(|f| f.datum_type == f32::datum_type());
        if floats && a.shape == b.shape && a.shape == output.shape && fusable_conv(model, conv)? {
            return Ok(Some((conv, other)));
        }
    }
    Ok(None)
}

/// Whether `outlet` is a planar int8 convolution's float output that one `Add` alone reads, and
/// whose activation (none) the `Add`'s clips may replace.
fn fusable_conv(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    let Some(conv) = model.node(outlet.node).op_as::<Int8Conv>() else { return Ok(false) };
    let layer = &conv.layer;
    Ok(outlet.slot == 0
        && !conv.residual
        && layer.activation == Activation::Identity
        && layer.links.output_codes.is_none()
        && matches!(layer.weights.packed, Packed::Planar(_))
        && only_successor(model, outlet)?.is_some())
}

/// The end of the `Max`/`Min` clips by constant scalars that alone follow `outlet`, and the
/// activation they make.
fn trailing_clips(model: &TypedModel, outlet: OutletId) -> TractResult<(OutletId, Activation)> {
    let (mut end, mut low, mut high) = (outlet, f32::NEG_INFINITY, f32::INFINITY);
    while let Some(next) = only_successor(model, end)? {
        match binary_with_const(model, next, end)? {
            Some(("Max", values, _)) if values.len() == 1 => low = low.max(values[0]),
            Some(("Min", values, _)) if values.len() == 1 => high = high.min(values[0]),
            _ => break,
        }
        end = OutletId::new(next.id, 0);
    }
    Ok((end, clip_activation(low, high)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::internal::*;

    use crate::quantize::build_op;
    use crate::quantize::link::tests::{conv, run, values};
    use crate::quantize::qparams::ActivationQuant;

    /// x → conv a (ReLU) → conv b → add(b, x') → ReLU, x' = 1×1 conv c of x (a ResNet
    /// downsample block): b (or c) takes the add and the ReLU; outputs are bit-identical.
    #[test]
    fn a_residual_add_and_its_relu_fuse_into_the_convolution() -> TractResult<()> {
        let q = ActivationQuant::from_range;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 8, 9, 9]))?;
        let first = conv("a", 8, 16, 3, 1, false, Activation::Relu);
        let a =
            model.wire_node("a", build_op(&first, &first.weights, q(-3.0, 3.0), true)?, &[x])?;
        let second = conv("b", 16, 16, 3, 1, false, Activation::Identity);
        let b = model.wire_node("b", build_op(&second, &second.weights, q(0.0, 6.0), true)?, &a)?;
        let skip = conv("c", 8, 16, 1, 1, false, Activation::Identity);
        let c = model.wire_node("c", build_op(&skip, &skip.weights, q(-3.0, 3.0), true)?, &[x])?;
        let add = tract_onnx::tract_core::ops::math::add();
        let sum = model.wire_node("sum", add, &[b[0], c[0]])?;
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]]))?;
        let max = tract_onnx::tract_core::ops::math::max();
        let relu = model.wire_node("relu", max, &[sum[0], zero])?;
        model.select_output_outlets(&relu)?;
        let mut fused = model.clone();
        assert_eq!(fuse_residual_adds(&mut fused)?, 1);
        assert_eq!(fuse_residual_adds(&mut fused)?, 0, "fused once");
        let convs: Vec<&Int8Conv> =
            fused.nodes().iter().filter_map(|n| n.op_as::<Int8Conv>()).collect();
        assert_eq!(convs.len(), 3, "the replaced convolution left the graph");
        let residual: Vec<_> = convs.iter().filter(|c| c.residual).collect();
        assert_eq!(residual.len(), 1);
        assert_eq!(residual[0].layer.activation, Activation::Relu);
        assert!(fused.nodes().iter().all(|n| n.op_as::<TypedBinOp>().is_none()), "add left");
        let input = Tensor::from_shape(&[2, 8, 9, 9], &values(2 * 8 * 81, 11, 3.0))?;
        let (want, got) = (run(&model, &input)?, run(&fused, &input)?);
        assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0), "the ReLU clips some");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&want), bits(&got));
        // An update rebuilds the layer from the model's convolution, without the ReLU: the op
        // keeps applying it after the add.
        let node =
            fused.nodes().iter().position(|n| n.op_as::<Int8Conv>().is_some_and(|c| c.residual));
        let node = node.context("no residual conv")?;
        let rebuilt = build_op(&second, &second.weights, q(0.0, 6.0), true)?;
        let layer = crate::ops::int8_layer(rebuilt.as_ref()).context("not an int8 op")?;
        assert_eq!(layer.activation, Activation::Identity);
        let updated = crate::ops::with_layer(fused.node(node).op.as_ref(), layer);
        fused.node_mut(node).op = updated.context("not an int8 op")?;
        assert_eq!(bits(&run(&fused, &input)?), bits(&want), "the update dropped the ReLU");
        Ok(())
    }

    /// An add whose convolution operand has other readers, or broadcasts, stays as it is.
    #[test]
    fn shared_or_broadcast_operands_stay_unfused() -> TractResult<()> {
        let q = ActivationQuant::from_range;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 8, 5, 5]))?;
        let layer = conv("a", 8, 8, 1, 1, false, Activation::Identity);
        let a =
            model.wire_node("a", build_op(&layer, &layer.weights, q(-1.0, 1.0), true)?, &[x])?;
        let add = tract_onnx::tract_core::ops::math::add;
        let shared = model.wire_node("shared", add(), &[a[0], x])?;
        let bias = model.add_const("bias", tensor4(&[[[[0.5f32]]]]))?;
        let broadcast = model.wire_node("broadcast", add(), &[a[0], bias])?;
        model.select_output_outlets(&[shared[0], broadcast[0]])?;
        assert_eq!(fuse_residual_adds(&mut model)?, 0);
        Ok(())
    }
}
