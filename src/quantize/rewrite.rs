//! Finding the layers to quantize in a decluttered tract graph, and swapping them for int8 ops.
//!
//! A layer is a `Conv` (NCHW, OIHW kernel) or an `EinSum` with a constant weight — a Gemm /
//! MatMul, or a pointwise convolution, which tract's declutter turns into an EinSum — plus what
//! follows it when that can be fused exactly: a constant per-channel bias `Add`, then `Max` /
//! `Min` with constants (ReLU, ReLU6 and other clips).

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::input::InputStats;
use crate::kernels::Activation;

/// The shape of a layer's computation.
#[derive(Debug, Clone)]
pub enum LayerKind {
    Conv { pool_spec: Box<PoolSpec>, group: usize, depthwise: bool },
    Linear { kept_axes: usize },
}

/// A layer that can run in int8.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The tract node name (the ONNX node name, for most models).
    pub name: String,
    pub kind: LayerKind,
    /// The float activation the layer reads.
    pub input: OutletId,
    /// The outlet its fused chain ends at.
    pub output: OutletId,
    /// `n` rows of `k` float weights, in the kernel's k order.
    pub weights: Vec<f32>,
    /// How the weight constant's values map to `weights` (to apply updates to the source).
    pub order: WeightOrder,
    pub n: usize,
    pub k: usize,
    pub bias: Vec<f32>,
    pub activation: Activation,
    /// What calibration learned about the input (means, 8-bit lattice); empty when unknown.
    pub input_stats: Arc<InputStats>,
}

/// How the values of a layer's weight constant (flat, row-major) map to the kernel's `n × k`
/// order, and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightOrder {
    /// An OIHW convolution kernel, read as (output, tap, channel): patches channel-fastest.
    Conv { n: usize, channels: usize, taps: usize },
    /// A tensor of `shape` whose axes are permuted by `order`, then flattened.
    Axes { shape: Vec<usize>, order: Vec<usize> },
}

impl WeightOrder {
    /// Whether the constant's values already are in kernel order.
    pub fn is_identity(&self) -> bool {
        match self {
            WeightOrder::Conv { taps, channels, .. } => *taps == 1 || *channels == 1,
            WeightOrder::Axes { order, .. } => order.iter().enumerate().all(|(i, &a)| i == a),
        }
    }

    /// The kernel-order values of the constant `values`; `None` if the length does not fit.
    pub fn to_kernel(&self, values: &[f32]) -> Option<Vec<f32>> {
        match self {
            WeightOrder::Conv { n, channels, taps } => {
                let k = channels * taps;
                (values.len() == n * k).then(|| {
                    let mut out = vec![0f32; n * k];
                    for o in 0..*n {
                        for i in 0..*channels {
                            for t in 0..*taps {
                                out[o * k + t * channels + i] =
                                    values[(o * channels + i) * taps + t];
                            }
                        }
                    }
                    out
                })
            }
            WeightOrder::Axes { shape, order } => {
                let array = ndarray::ArrayViewD::from_shape(shape.as_slice(), values).ok()?;
                if order.iter().enumerate().all(|(i, &axis)| i == axis) {
                    return Some(values.to_vec()); // already in order (Gemm with transB)
                }
                Some(
                    array
                        .permuted_axes(order.as_slice())
                        .as_standard_layout()
                        .into_owned()
                        .into_raw_vec_and_offset()
                        .0,
                )
            }
        }
    }

    /// The inverse of [`WeightOrder::to_kernel`]: constant-order values of kernel-order `kernel`.
    pub fn from_kernel(&self, kernel: &[f32]) -> Option<Vec<f32>> {
        match self {
            WeightOrder::Conv { n, channels, taps } => {
                let k = channels * taps;
                (kernel.len() == n * k).then(|| {
                    let mut out = vec![0f32; n * k];
                    for o in 0..*n {
                        for i in 0..*channels {
                            for t in 0..*taps {
                                out[(o * channels + i) * taps + t] =
                                    kernel[o * k + t * channels + i];
                            }
                        }
                    }
                    out
                })
            }
            WeightOrder::Axes { shape, order } => {
                let permuted: Vec<usize> =
                    order.iter().map(|&a| shape.get(a).copied()).collect::<Option<_>>()?;
                let mut inverse = vec![0; order.len()];
                for (position, &axis) in order.iter().enumerate() {
                    *inverse.get_mut(axis)? = position;
                }
                if order.iter().enumerate().all(|(i, &axis)| i == axis) {
                    return (kernel.len() == permuted.iter().product::<usize>())
                        .then(|| kernel.to_vec());
                }
                let array = ndarray::ArrayViewD::from_shape(permuted, kernel).ok()?;
                Some(
                    array
                        .permuted_axes(inverse)
                        .as_standard_layout()
                        .into_owned()
                        .into_raw_vec_and_offset()
                        .0,
                )
            }
        }
    }
}

/// A layer left in float, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// Every Conv/EinSum in `model`, as a candidate or with the reason it stays float.
pub fn find_layers(
    model: &TypedModel,
    exclude: &[String],
) -> TractResult<(Vec<Candidate>, Vec<Skipped>)> {
    let (mut candidates, mut skipped) = (Vec::new(), Vec::new());
    for node in model.nodes() {
        let found = if let Some(conv) = node.op_as::<Conv>() {
            conv_layer(model, node, conv)?
        } else if let Some(einsum) = node.op_as::<EinSum>() {
            einsum_layer(model, node, einsum)?
        } else {
            continue;
        };
        match found {
            Err(reason) => skipped.push(Skipped { name: node.name.clone(), reason }),
            Ok(mut layer) => {
                fuse_successors(model, &mut layer)?;
                let labels = [
                    model.outlet_label(layer.output),
                    model.outlet_label(OutletId::new(node.id, 0)),
                ];
                let excluded =
                    exclude.iter().any(|e| *e == node.name || labels.contains(&Some(e.as_str())));
                if excluded {
                    skipped.push(Skipped {
                        name: node.name.clone(),
                        reason: "excluded by the caller".into(),
                    });
                } else {
                    candidates.push(layer);
                }
            }
        }
    }
    Ok((candidates, skipped))
}

fn const_f32(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    match &fact.konst {
        Some(t) if t.datum_type() == f32::datum_type() => {
            Ok(Some(t.to_plain_array_view::<f32>()?.iter().copied().collect()))
        }
        _ => Ok(None),
    }
}

fn is_f32_activation(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    let fact = model.outlet_fact(outlet)?;
    Ok(fact.datum_type == f32::datum_type() && fact.konst.is_none())
}

fn conv_layer(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Result<Candidate, String>> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some() {
        return Ok(Err("already a quantized convolution".into()));
    }
    if spec.data_format != DataFormat::NCHW
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.len() != 2
    {
        return Ok(Err(format!(
            "layout {:?}/{:?} with {}-d kernel is not supported",
            spec.data_format,
            conv.kernel_fmt,
            spec.kernel_shape.len()
        )));
    }
    if node.inputs.len() != 3 || !is_f32_activation(model, node.inputs[0])? {
        return Ok(Err("input is not a float activation".into()));
    }
    let (Some(kernel), Some(bias)) =
        (const_f32(model, node.inputs[1])?, const_f32(model, node.inputs[2])?)
    else {
        return Ok(Err("weights are not constant".into()));
    };
    let (n, group) = (spec.output_channels, conv.group);
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let per_group_in = spec.input_channels / group;
    let taps = kh * kw;
    let k = taps * per_group_in;
    if kernel.len() != n * k {
        return Ok(Err(format!("kernel has {} values, expected {}", kernel.len(), n * k)));
    }
    let order = WeightOrder::Conv { n, channels: per_group_in, taps };
    let Some(weights) = order.to_kernel(&kernel) else {
        return Ok(Err(format!("kernel has {} values, expected {}", kernel.len(), n * k)));
    };
    // The depthwise kernel's limits (exact f32 sums, its stride buffer); beyond them (unheard of
    // in real models) a depthwise conv stays float below.
    let depthwise = group > 1
        && per_group_in == 1
        && n == group
        && taps <= crate::kernels::MAX_DEPTHWISE_TAPS
        && spec.strides().iter().all(|&s| s <= crate::kernels::MAX_DEPTHWISE_STRIDE);
    if group > 1 && !depthwise && !per_group_in.is_multiple_of(4) {
        return Ok(Err(format!(
            "grouped convolution with {per_group_in} channels per group (not a multiple of 4)"
        )));
    }
    let Some(bias) = broadcast_bias(&bias, n) else {
        return Ok(Err(format!("bias of {} values for {n} channels", bias.len())));
    };
    Ok(Ok(Candidate {
        name: node.name.clone(),
        kind: LayerKind::Conv { pool_spec: Box::new(spec.clone()), group, depthwise },
        input: node.inputs[0],
        output: OutletId::new(node.id, 0),
        weights,
        order,
        n,
        k,
        bias,
        activation: Activation::Identity,
        input_stats: Arc::default(),
    }))
}

fn broadcast_bias(bias: &[f32], n: usize) -> Option<Vec<f32>> {
    match bias.len() {
        0 => Some(vec![0.0; n]),
        1 => Some(vec![bias[0]; n]),
        len if len == n => Some(bias.to_vec()),
        _ => None,
    }
}

fn einsum_layer(
    model: &TypedModel,
    node: &TypedNode,
    einsum: &EinSum,
) -> TractResult<Result<Candidate, String>> {
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || node.inputs.len() != 2
    {
        return Ok(Err("not a float matrix product of two operands".into()));
    }
    if !is_f32_activation(model, node.inputs[0])? {
        return Ok(Err("first operand is not a float activation".into()));
    }
    let Some(weight) = const_f32(model, node.inputs[1])? else {
        return Ok(Err("second operand is not a constant weight".into()));
    };
    let text = einsum.axes.to_string();
    let Some((inputs, output)) = text.split_once("->") else {
        return Ok(Err(format!("axes {text}")));
    };
    let Some((a, w)) = inputs.split_once(',') else { return Ok(Err(format!("axes {text}"))) };
    let (a, w, out): (Vec<char>, Vec<char>, Vec<char>) =
        (a.chars().collect(), w.chars().collect(), output.chars().collect());
    // The weight holds one output axis (n, not in `a`) and one or more reduced axes (k: in `a`
    // and the weight, not in the output), which must sit together, in order, in `a`.
    let reduced: Vec<char> =
        a.iter().copied().filter(|c| w.contains(c) && !out.contains(c)).collect();
    let outputs: Vec<char> =
        w.iter().copied().filter(|c| out.contains(c) && !a.contains(c)).collect();
    if reduced.is_empty() || outputs.len() != 1 || reduced.len() + 1 != w.len() {
        return Ok(Err(format!("weight axes in {text} are not (output, reduced…)")));
    }
    let n_label = outputs[0];
    let k_axis = a.iter().position(|c| *c == reduced[0]).unwrap_or(0);
    if a.get(k_axis..k_axis + reduced.len()) != Some(&reduced[..]) {
        return Ok(Err(format!("reduced axes of {text} are not contiguous in the input")));
    }
    let (prefix, rest) = (&a[..k_axis], &a[k_axis + reduced.len()..]);
    let a_shape = &model.outlet_fact(node.inputs[0])?.shape;
    let Some(w_shape) = model.outlet_fact(node.inputs[1])?.shape.as_concrete().map(|s| s.to_vec())
    else {
        return Ok(Err("weight shape is not concrete".into()));
    };
    // Reorder the weight to (n, reduced axes in the input's order), then flatten to n × k.
    let order: Vec<usize> =
        [n_label].iter().chain(&reduced).filter_map(|c| w.iter().position(|x| x == c)).collect();
    let order = WeightOrder::Axes { shape: w_shape.clone(), order };
    let Some(weights) = order.to_kernel(&weight) else {
        return Ok(Err(format!("weight of {} values for shape {w_shape:?}", weight.len())));
    };
    let n = w_shape[w.iter().position(|&c| c == n_label).unwrap_or(0)];
    let k = weights.len() / n.max(1);
    let n_label = &n_label;
    let expected_linear: Vec<char> = prefix.iter().copied().chain([*n_label]).collect();
    let expected_pointwise: Vec<char> =
        prefix.iter().chain([n_label]).chain(rest).copied().collect();
    let kind = if out == expected_linear
        && rest.iter().enumerate().all(|(i, _)| a_shape[k_axis + 1 + i].is_one())
    {
        LayerKind::Linear { kept_axes: prefix.len() }
    } else if out == expected_pointwise
        && reduced.len() == 1
        && prefix.len() == 1
        && rest.len() == 2
    {
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(1, 1),
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: None,
            input_channels: k,
            output_channels: n,
        };
        LayerKind::Conv { pool_spec: Box::new(pool_spec), group: 1, depthwise: false }
    } else {
        return Ok(Err(format!(
            "axes {text} are neither a linear layer nor a pointwise convolution"
        )));
    };
    Ok(Ok(Candidate {
        name: node.name.clone(),
        kind,
        input: node.inputs[0],
        output: OutletId::new(node.id, 0),
        weights,
        order,
        n,
        k,
        bias: vec![0.0; n],
        activation: Activation::Identity,
        input_stats: Arc::default(),
    }))
}

/// The single consumer of `outlet`, unless the outlet is a model output or feeds several nodes.
pub(super) fn only_successor(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<&TypedNode>> {
    if model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    match model.outlet_successors(outlet) {
        [one] => Ok(Some(model.node(one.node))),
        _ => Ok(None),
    }
}

/// A binary op's name, and its constant operand's values and shape.
pub(super) type ConstOperand<'m> = (&'m str, Vec<f32>, TVec<usize>);

/// The other operand of a binary node reading `outlet`, when it is a constant.
pub(super) fn binary_with_const<'m>(
    model: &'m TypedModel,
    node: &'m TypedNode,
    outlet: OutletId,
) -> TractResult<Option<ConstOperand<'m>>> {
    let Some(op) = node.op_as::<TypedBinOp>() else { return Ok(None) };
    if node.inputs.len() != 2 {
        return Ok(None);
    }
    let other = if node.inputs[0] == outlet { node.inputs[1] } else { node.inputs[0] };
    let Some(values) = const_f32(model, other)? else { return Ok(None) };
    let shape = model
        .outlet_fact(other)?
        .shape
        .as_concrete()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    Ok(Some((op.0.name(), values, shape)))
}

/// Extends the layer over a following per-channel bias `Add` and `Max`/`Min` clips.
fn fuse_successors(model: &TypedModel, layer: &mut Candidate) -> TractResult<()> {
    let out_rank = model.outlet_fact(layer.output)?.rank();
    let channel_axis = match layer.kind {
        LayerKind::Conv { .. } => 1,
        LayerKind::Linear { .. } => out_rank - 1,
    };
    let (mut low, mut high) = (f32::NEG_INFINITY, f32::INFINITY);
    let mut bias_allowed = true;
    while let Some(next) = only_successor(model, layer.output)? {
        let Some((op, values, shape)) = binary_with_const(model, next, layer.output)? else {
            break;
        };
        let per_channel = shape.len() <= out_rank
            && shape
                .iter()
                .rev()
                .enumerate()
                .all(|(i, &d)| d == 1 || out_rank - 1 - i == channel_axis);
        match op {
            "Add" if bias_allowed && per_channel => {
                let Some(extra) = broadcast_bias(&values, layer.n) else { break };
                layer.bias.iter_mut().zip(extra).for_each(|(b, e)| *b += e);
            }
            "Max" if values.len() == 1 => low = low.max(values[0]),
            "Min" if values.len() == 1 => high = high.min(values[0]),
            _ => break,
        }
        if op != "Add" {
            bias_allowed = false; // a bias after a clip does not commute with it
        }
        layer.output = OutletId::new(next.id, 0);
    }
    layer.activation = clip_activation(low, high);
    Ok(())
}

/// The activation clipping values to `[low, high]`.
pub(super) fn clip_activation(low: f32, high: f32) -> Activation {
    match (low, high) {
        (l, h) if l == f32::NEG_INFINITY && h == f32::INFINITY => Activation::Identity,
        (l, h) if l == 0.0 && h == f32::INFINITY => Activation::Relu,
        (l, h) => Activation::Clip(l, h),
    }
}

/// Replaces the layer's fused chain in `model` by `op` reading the same input. `replaced` maps
/// the ends of chains replaced earlier to the int8 outlets now standing for them; this layer's
/// end is added to it.
pub fn substitute(
    model: &mut TypedModel,
    layer: &Candidate,
    op: Box<dyn TypedOp>,
    replaced: &mut HashMap<OutletId, OutletId>,
) -> TractResult<OutletId> {
    let source = replaced.get(&layer.input).copied().unwrap_or(layer.input);
    let mut patch = TypedModelPatch::default();
    let input = patch.tap_model(model, source)?;
    let wired = patch.wire_node(format!("{}.int8", layer.name), op, &[input])?;
    patch.shunt_outside(model, layer.output, wired[0])?;
    patch.apply(model)?;
    // `apply` appends the new node last; the caller needs its outlet in the patched model.
    let new = OutletId::new(model.nodes().len() - 1, 0);
    ensure!(model.node(new.node).name.ends_with(".int8"), "patch did not append the int8 op last");
    replaced.insert(layer.output, new);
    Ok(new)
}
