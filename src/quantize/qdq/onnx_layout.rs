//! The int8 numbers of a layer the runtime cannot state in its ONNX node's layout (a graph typed
//! per input signature, a layer tract split in parts, a weight tract changed other than by
//! folding the `BatchNormalization` after it): computed here from the ONNX weight in OIHW order
//! — the bias correction as a corrected bias input, an 8-bit lattice as folded weights, codes
//! refined from the patch moments — so other runtimes see what this one runs, up to the last
//! bits of the bias (summed in another order).

use std::collections::HashMap;

use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb;

use super::write::{float_tensor, weight_axis};
use crate::calibrate::ChannelLattice;
use crate::quantize::input::{folded_input_factors, InputStats};
use crate::quantize::qparams::quantize_weights;
use crate::quantize::rounding::refine_codes;

type Fallible<T> = std::result::Result<T, String>;

fn read(t: &pb::TensorProto) -> Fallible<(Vec<usize>, Vec<f32>)> {
    let tensor = tract_onnx::tensor::load_tensor(&MmapDataResolver, t, None)
        .map_err(|e| format!("reading {}: {e:#}", t.name))?;
    let view = tensor.to_plain_array_view::<f32>().map_err(|e| format!("{}: {e:#}", t.name))?;
    Ok((view.shape().to_vec(), view.iter().copied().collect()))
}

/// An OIHW convolution weight with input channel `c` scaled by `s_c / s̄`, as the int8 op
/// folds it (`s̄` the largest step).
pub fn fold_weight(
    weight: &pb::TensorProto,
    lattice: &ChannelLattice,
    node: &str,
) -> Fallible<pb::TensorProto> {
    let (shape, values) = read(weight)?;
    let channels = lattice.scales.len();
    if shape.len() < 2 || shape[1] != channels {
        return Err(format!("weight {} does not have {channels} input channels", weight.name));
    }
    let common = lattice.scales.iter().fold(0f32, |m, &s| m.max(s));
    let taps: usize = shape[2..].iter().product();
    let folded = values
        .iter()
        .enumerate()
        .map(|(i, &w)| w * (lattice.scales[(i / taps.max(1)) % channels] / common))
        .collect();
    let dims = shape.iter().map(|&d| d as i64).collect();
    Ok(float_tensor(format!("{node}_jp_folded_weight"), dims, folded))
}

fn group_of(node: &pb::NodeProto) -> usize {
    node.attribute.iter().find(|a| a.name == "group").map_or(1, |a| a.i.max(1) as usize)
}

/// Re-chooses the `codes` of a Conv's OIHW weight `rows` (shape `dims`, folded when the layer
/// has a lattice) from the layer's patch moments, as the int8 layer does
/// (`quantize::rounding`, which works in kernel column order: tap, then channel): the same
/// weights and moments give the same codes in the file as in the runtime.
pub fn refine_onnx_codes(
    node: &pb::NodeProto,
    dims: &[usize],
    rows: &[f32],
    codes: &mut [i8],
    scales: &[f32],
    stats: &InputStats,
) {
    if node.op_type != "Conv" || stats.moments.is_empty() || dims.len() < 3 {
        return;
    }
    let (per_group, taps) = (dims[1], dims[2..].iter().product::<usize>());
    let (n, k) = (scales.len(), per_group * taps);
    if k == 0 || rows.len() != n * k || codes.len() != n * k {
        return;
    }
    // Kernel column j reads channel j % per_group at tap j / per_group: OIHW index c·taps + tap.
    let onnx_index = |o: usize, j: usize| o * k + (j % per_group) * taps + j / per_group;
    let weights: Vec<f32> = (0..n * k).map(|i| rows[onnx_index(i / k, i % k)]).collect();
    let mut kernel_codes: Vec<i8> = (0..n * k).map(|i| codes[onnx_index(i / k, i % k)]).collect();
    let factors = stats.lattice.as_ref().map(|l| {
        let common = l.scales.iter().fold(0f32, |m, &s| m.max(s));
        folded_input_factors(l, common, k)
    });
    let moments = &stats.moments;
    if refine_codes(
        &weights,
        &mut kernel_codes,
        scales,
        k,
        group_of(node),
        moments,
        factors.as_deref(),
    ) {
        for (i, &q) in kernel_codes.iter().enumerate() {
            codes[onnx_index(i / k, i % k)] = q;
        }
    }
}

/// The bias onnxruntime should add to `node` (weight `weight`, folded when the layer has a
/// lattice) so it computes what this runtime does (see `quantize::bias`); `None` for a MatMul,
/// which has no bias input to carry it.
pub fn corrected_bias(
    node: &pb::NodeProto,
    weight: &pb::TensorProto,
    initializers: &[pb::TensorProto],
    by_name: &HashMap<String, usize>,
    stats: &InputStats,
) -> Fallible<Option<Vec<f32>>> {
    if node.op_type == "MatMul" {
        return Ok(None);
    }
    let axis = weight_axis(node, weight);
    let (dims, values) = read(weight)?;
    let n = dims.get(axis).copied().unwrap_or(0);
    if n == 0 || values.len() % n != 0 {
        return Ok(None);
    }
    let k = values.len() / n;
    // Rows of output channels: OIHW as is; a Gemm weight `k × n` (transB = 0) transposed.
    let rows: Vec<f32> =
        if axis == 0 { values } else { (0..n * k).map(|i| values[(i % k) * n + i / k]).collect() };
    let (mut codes, scales) = quantize_weights(&rows, n, k, true);
    refine_onnx_codes(node, &dims, &rows, &mut codes, &scales, stats);
    let group = group_of(node);
    let (per_group, taps) = match node.op_type.as_str() {
        "Conv" => (dims.get(1).copied().unwrap_or(1).max(1), dims[2..].iter().product::<usize>()),
        _ => (k, 1),
    };
    let mut bias = match node.input.get(2).filter(|b| !b.is_empty()).and_then(|b| by_name.get(b)) {
        Some(&b) => read(&initializers[b])?.1,
        None => vec![0.0; n],
    };
    if bias.len() != n || per_group * taps != k {
        return Ok(None);
    }
    // In the folded domain means and shifts scale by s̄ / s_c (see `quantize::input`).
    let (means, shifts) = match &stats.lattice {
        Some(l) => {
            let common = l.scales.iter().fold(0f32, |m, &s| m.max(s));
            let ratio = |c: usize| l.scales.get(c).map_or(1.0, |s| common / s);
            let means = stats.means.iter().enumerate().map(|(c, &m)| m * ratio(c)).collect();
            (means, l.shifts.iter().enumerate().map(|(c, &d)| d * ratio(c)).collect())
        }
        None => (stats.means.clone(), Vec::new()),
    };
    for (o, b) in bias.iter_mut().enumerate() {
        let first = (o / (n / group).max(1)) * per_group;
        let mut shift = 0f64;
        for j in 0..k {
            let c = first + j / taps.max(1);
            let Some(&mean) = means.get(c) else { return Ok(None) };
            let quantized = f64::from(codes[o * k + j]) * f64::from(scales[o]);
            shift += (quantized - f64::from(rows[o * k + j])) * f64::from(mean);
            if let Some(&moved) = shifts.get(c) {
                shift += quantized * f64::from(moved);
            }
        }
        *b = (f64::from(*b) - shift) as f32;
    }
    Ok(Some(bias))
}
