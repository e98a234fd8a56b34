//! Files from other quantizers (onnxruntime's `quantize_static`): their QDQ layers run on this
//! runtime's int8 ops with the same activation parameters and weight codes.

use std::collections::HashMap;

use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::{SavedInt8, SavedLayer, SavedOptions};
use crate::error::Result;
use crate::quantize::input::InputStats;

/// If `proto` is a QDQ model from another quantizer (onnxruntime's `quantize_static`): for every
/// Conv/Gemm/MatMul whose activation comes through QuantizeLinear→DequantizeLinear and whose
/// weight is a DequantizeLinear of int8 codes, reconnects the layer to the float activation and
/// to the dequantized float weight (and bias), and returns the activation parameters, so the
/// layer runs on this runtime's int8 ops with the same codes. Other Q/DQ pairs stay (float).
pub fn import_qdq(proto: &mut pb::ModelProto) -> Result<Option<SavedInt8>> {
    let Some(graph) = proto.graph.as_mut() else { return Ok(None) };
    let producer: HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let initializers: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let load = |name: &str| -> Option<Tensor> {
        let ix = *initializers.get(name)?;
        tract_onnx::tensor::load_tensor(&MmapDataResolver, &graph.initializer[ix], None).ok()
    };
    let dequantize_linear = |tensor: &str| -> Option<&pb::NodeProto> {
        let node = &graph.node[*producer.get(tensor)?];
        (node.op_type == "DequantizeLinear").then_some(node)
    };
    let mut layers = Vec::new();
    let mut rewires: Vec<(usize, usize, String)> = Vec::new();
    let mut new_weights: Vec<pb::TensorProto> = Vec::new();
    for (ix, node) in graph.node.iter().enumerate() {
        if !matches!(node.op_type.as_str(), "Conv" | "Gemm" | "MatMul") || node.input.len() < 2 {
            continue;
        }
        // Activation: x → QuantizeLinear → DequantizeLinear → (Flatten/Reshape →) layer.
        let (through, dq) = match dequantize_linear(&node.input[0]) {
            Some(dq) => (None, dq),
            None => {
                let Some(&shape_ix) = producer.get(&node.input[0]) else { continue };
                let shaping = &graph.node[shape_ix];
                if !matches!(shaping.op_type.as_str(), "Flatten" | "Reshape") {
                    continue;
                }
                let Some(dq) = shaping.input.first().and_then(|i| dequantize_linear(i)) else {
                    continue;
                };
                (Some(shape_ix), dq)
            }
        };
        let Some(q) = producer
            .get(&dq.input[0])
            .map(|&i| &graph.node[i])
            .filter(|n| n.op_type == "QuantizeLinear")
        else {
            continue;
        };
        let (Some(scale), Some(zero)) =
            (q.input.get(1).and_then(|s| load(s)), q.input.get(2).and_then(|z| load(z)))
        else {
            continue;
        };
        let Some(activation) = activation_params(&scale, &zero) else { continue };
        // Weight: int8 codes → DequantizeLinear → layer.
        let Some(weight_dq) = dequantize_linear(&node.input[1]) else { continue };
        let Some(float_weight) = dequantized(weight_dq, &load) else { continue };
        let name = format!("{}_jp_float", weight_dq.input[0]);
        new_weights.push(float_initializer(&name, &float_weight));
        rewires.push((through.unwrap_or(ix), 0, q.input[0].clone()));
        rewires.push((ix, 1, name));
        if let Some(bias_dq) = node.input.get(2).and_then(|b| dequantize_linear(b)) {
            if let Some(bias) = dequantized(bias_dq, &load) {
                let name = format!("{}_jp_float", bias_dq.input[0]);
                new_weights.push(float_initializer(&name, &bias));
                rewires.push((ix, 2, name));
            }
        }
        layers.push(SavedLayer {
            name: node.name.clone(),
            scale: activation.0,
            zero_point: activation.1,
            input: InputStats::default(),
        });
    }
    if layers.is_empty() {
        return Ok(None);
    }
    for (ix, slot, tensor) in rewires {
        graph.node[ix].input[slot] = tensor;
    }
    graph.initializer.extend(new_weights);
    let options = SavedOptions { method: "imported".into(), per_channel: true };
    Ok(Some(SavedInt8 { layers, options, deployable: false }))
}

/// (scale, u8 zero point) of a per-tensor activation quantization; an int8 zero point maps to
/// the equivalent u8 one (`q + 128`), which represents exactly the same values.
fn activation_params(scale: &Tensor, zero: &Tensor) -> Option<(f32, u8)> {
    if scale.len() != 1 || zero.len() != 1 {
        return None;
    }
    let scale = *scale.to_plain_array_view::<f32>().ok()?.iter().next()?;
    let zero_point = match zero.datum_type() {
        DatumType::U8 => *zero.to_plain_array_view::<u8>().ok()?.iter().next()?,
        DatumType::I8 => {
            (i16::from(*zero.to_plain_array_view::<i8>().ok()?.iter().next()?) + 128) as u8
        }
        _ => return None,
    };
    (scale.is_finite() && scale > 0.0).then_some((scale, zero_point))
}

/// The float values of a DequantizeLinear of constant codes: `(codes - zero) * scale`, per tensor
/// or along its `axis`.
fn dequantized(node: &pb::NodeProto, load: &dyn Fn(&str) -> Option<Tensor>) -> Option<Tensor> {
    let codes = load(node.input.first()?)?;
    let scale = load(node.input.get(1)?)?;
    let zero = node.input.get(2).and_then(|z| load(z));
    let codes = codes.cast_to::<f32>().ok()?.into_owned();
    let scale = scale.to_plain_array_view::<f32>().ok()?.iter().copied().collect::<Vec<f32>>();
    let zero: Vec<f32> = match zero {
        Some(z) => {
            z.cast_to::<f32>().ok()?.to_plain_array_view::<f32>().ok()?.iter().copied().collect()
        }
        None => vec![0.0; scale.len()],
    };
    let rank = codes.rank() as i64;
    let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
    let axis = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
    let mut values = codes.into_plain_array::<f32>().ok()?;
    if scale.len() == 1 {
        values.mapv_inplace(|c| (c - zero[0]) * scale[0]);
    } else {
        if axis >= values.ndim() || values.shape()[axis] != scale.len() || zero.len() != scale.len()
        {
            return None;
        }
        for (channel, mut lane) in values.axis_iter_mut(ndarray::Axis(axis)).enumerate() {
            lane.mapv_inplace(|c| (c - zero[channel]) * scale[channel]);
        }
    }
    Some(Tensor::from(values))
}

fn float_initializer(name: &str, tensor: &Tensor) -> pb::TensorProto {
    let values = tensor
        .to_plain_array_view::<f32>()
        .map(|v| v.iter().copied().collect::<Vec<_>>())
        .unwrap_or_default();
    pb::TensorProto {
        name: name.to_string(),
        dims: tensor.shape().iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}
