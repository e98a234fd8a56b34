//! Rewrites of the int8 graph around its int8 layers, where tract's own ops cost more than the
//! layers need:
//! - max pools run on [`MaxPool2d`], whose kernel vectorises and runs planes in parallel
//!   (tract's walked each window element by element on one thread: 1.1 of ResNet18's 14 ms);
//! - a strided 1×1 convolution, which tract splits into `Downsample` ops (an element-by-element
//!   copy per axis) and a stride-1 product, reads its input directly again: the int8 layer's
//!   im2col gathers the pixels it needs.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::Downsample;

use crate::ops::{Int8Conv, MaxPool2d};

/// Folds `Downsample` chains (modulo 0, on the spatial axes, read by nothing else) into the
/// stride of the 1×1 stride-1 int8 convolution they feed; returns how many convolutions.
pub fn fold_downsamples(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in 0..model.nodes().len() {
        let Some(conv) = model.node(id).op_as::<Int8Conv>() else { continue };
        let spec = &conv.pool_spec;
        let plain = spec.kernel_shape.len() == 2
            && spec.kernel_shape.iter().all(|&k| k == 1)
            && spec.strides().iter().all(|&s| s == 1)
            && spec.dilations().iter().all(|&d| d == 1)
            && no_padding(&spec.padding)
            && spec.data_format == DataFormat::NCHW;
        if !plain {
            continue;
        }
        let mut strides = [1usize, 1];
        let mut source = model.node(id).inputs[0];
        while let Some(down) = model.node(source.node).op_as::<Downsample>() {
            let axis = down.axis.checked_sub(2).filter(|&a| a < 2);
            let single = model.outlet_successors(source).len() == 1;
            let (Some(axis), true, 0, true) = (axis, down.stride > 0, down.modulo, single) else {
                break;
            };
            strides[axis] *= down.stride as usize;
            source = model.node(source.node).inputs[0];
        }
        if strides == [1, 1] {
            continue;
        }
        let mut op = conv.clone();
        op.pool_spec.strides = Some(strides.into_iter().collect());
        let patch = TypedModelPatch::replace_single_op(model, model.node(id), &[source], op)?;
        patch.apply(model)?;
        folded += 1;
    }
    Ok(folded)
}

/// Whether `padding` adds nothing on any side (so a 1×1 window's stride alone picks pixels).
fn no_padding(padding: &PaddingSpec) -> bool {
    let zeros = |v: &[usize]| v.iter().all(|&p| p == 0);
    match padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(before, after) => zeros(before) && zeros(after),
        PaddingSpec::ExplicitOnnxPool(before, after, ceil) => {
            !ceil && zeros(before) && zeros(after)
        }
        PaddingSpec::SameUpper | PaddingSpec::SameLower => false,
    }
}

/// Replaces every 2-D NCHW f32 `MaxPool` without an index output; returns how many.
pub fn replace_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(pool) = node.op_as::<MaxPool>() else { continue };
        let input = model.outlet_fact(node.inputs[0])?;
        if pool.with_index_outputs.is_some()
            || pool.pool_spec.data_format != DataFormat::NCHW
            || pool.pool_spec.kernel_shape.len() != 2
            || input.rank() != 4
            || input.datum_type != f32::datum_type()
        {
            continue;
        }
        let op = MaxPool2d { pool_spec: pool.pool_spec.clone(), input_codes: None };
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Activation;
    use crate::quantize::build_op;
    use crate::quantize::link::tests::{conv, run, values};
    use crate::quantize::qparams::ActivationQuant;
    use tract_onnx::tract_core::ops::cnn::PoolSpec;

    /// Downsample(H, 2) → Downsample(W, 3) → 1×1 int8 conv becomes one conv of stride [2, 3]
    /// reading the source: same results, no Downsample left.
    #[test]
    fn strided_pointwise_reads_its_input_directly() -> TractResult<()> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 8, 10, 11]))?;
        let h = model.wire_node("h", Downsample::new(2, 2, 0), &[x])?;
        let w = model.wire_node("w", Downsample::new(3, 3, 0), &h)?;
        let layer = conv("pointwise", 8, 16, 1, 1, false, Activation::Relu);
        let input = ActivationQuant::from_range(-2.0, 2.0);
        let c = model.wire_node("pointwise", build_op(&layer, &layer.weights, input, true)?, &w)?;
        model.select_output_outlets(&c)?;
        let mut folded = model.clone();
        assert_eq!(fold_downsamples(&mut folded)?, 1);
        let folded = folded.into_decluttered()?;
        assert!(!folded.nodes().iter().any(|n| n.op_is::<Downsample>()));
        let x = Tensor::from_shape(&[2, 8, 10, 11], &values(2 * 8 * 110, 5, 2.5))?;
        assert_eq!(run(&model, &x)?, run(&folded, &x)?);
        Ok(())
    }

    /// A graph of one max pool, run by tract and after the replacement: same values, for
    /// ResNet's stem pool, ceil mode, stride 1 and a window cut by asymmetric padding.
    #[test]
    fn replaced_pools_equal_tracts() -> TractResult<()> {
        let cases = [
            ([3, 3], [2, 2], PaddingSpec::ExplicitOnnxPool(tvec![1, 1], tvec![1, 1], false)),
            ([3, 3], [2, 2], PaddingSpec::ExplicitOnnxPool(tvec![0, 0], tvec![0, 0], true)),
            ([2, 3], [1, 1], PaddingSpec::Explicit(tvec![0, 1], tvec![1, 0])),
            ([3, 3], [2, 1], PaddingSpec::SameUpper),
        ];
        for (kernel, strides, padding) in cases {
            let pool_spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: kernel.into_iter().collect(),
                padding,
                dilations: None,
                strides: Some(strides.into_iter().collect()),
                input_channels: 3,
                output_channels: 3,
            };
            let mut model = TypedModel::default();
            let source = model.add_source("x", f32::fact([2, 3, 13, 11]))?;
            let pooled = model.wire_node("pool", MaxPool::new(pool_spec, None), &[source])?;
            model.select_output_outlets(&pooled)?;
            let x = Tensor::from_shape(
                &[2, 3, 13, 11],
                &(0..2 * 3 * 13 * 11).map(|i| ((i * 37 % 101) as f32) - 50.0).collect::<Vec<_>>(),
            )?;
            let want = model.clone().into_runnable()?.run(tvec!(x.clone().into()))?;
            let mut ours = model.clone();
            assert_eq!(replace_max_pools(&mut ours)?, 1);
            assert!(ours.nodes().iter().any(|n| n.op_is::<MaxPool2d>()));
            let got = ours.into_runnable()?.run(tvec!(x.into()))?;
            assert_eq!(got[0].shape(), want[0].shape());
            assert_eq!(got[0].to_plain_array_view::<f32>()?, want[0].to_plain_array_view::<f32>()?);
        }
        Ok(())
    }
}
