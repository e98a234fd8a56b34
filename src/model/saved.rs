//! Reading back the INT8 files `Runtime::save` writes: a standard QDQ ONNX graph for other
//! runtimes, whose metadata lets this runtime restore the float graph (the float master weights
//! travel as the original initializers) and the calibrated activation parameters.

use std::collections::HashMap;

use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::calibrate::ChannelLattice;
use crate::error::{Error, Result};
use crate::quantize::input::InputStats;
use crate::quantize::save::stats_names;

/// Metadata keys written into `ModelProto.metadata_props`.
pub const LAYERS_KEY: &str = "jarvis_performance.int8_layers";
pub const OPTIONS_KEY: &str = "jarvis_performance.int8_options";
pub const ADDED_NODES_KEY: &str = "jarvis_performance.added_nodes";
pub const ADDED_INITIALIZERS_KEY: &str = "jarvis_performance.added_initializers";
pub const REWIRED_KEY: &str = "jarvis_performance.rewired_inputs";

/// One int8 layer's activation quantization, as saved.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedLayer {
    /// The tract node name of the layer.
    pub name: String,
    pub scale: f32,
    pub zero_point: u8,
    /// Its input's calibration statistics (bias correction, 8-bit lattice); empty in files
    /// written before they existed and in other quantizers' files.
    pub input: InputStats,
}

/// The quantization a saved file carries.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedInt8 {
    pub layers: Vec<SavedLayer>,
    /// The calibration method's name, as it was.
    pub method: String,
    pub per_channel: bool,
}

fn metadata<'p>(proto: &'p pb::ModelProto, key: &str) -> Option<&'p str> {
    proto.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// If `proto` is a file `Runtime::save` wrote, turns it back into the float graph (removing the
/// added Quantize/DequantizeLinear nodes and int8 initializers, restoring the layers' inputs)
/// and returns the saved quantization; other models are left untouched.
pub fn restore_float(proto: &mut pb::ModelProto) -> Result<Option<SavedInt8>> {
    let Some(layers_text) = metadata(proto, LAYERS_KEY).map(str::to_owned) else { return Ok(None) };
    let bad = |what: &str| Error::ModelLoad {
        path: String::new(),
        reason: format!("corrupt int8 metadata: {what}"),
    };
    let mut layers = Vec::new();
    for line in layers_text.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split('\t');
        let (Some(name), Some(scale), Some(zp)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(line));
        };
        let scale: f32 = scale.parse().map_err(|_| bad(line))?;
        let zero_point: u8 = zp.parse().map_err(|_| bad(line))?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(bad(line));
        }
        layers.push(SavedLayer {
            name: name.to_string(),
            scale,
            zero_point,
            input: InputStats::default(),
        });
    }
    let options = metadata(proto, OPTIONS_KEY).unwrap_or("");
    let (method, per_channel) = options.split_once('\t').unwrap_or((options, "true"));
    let mut saved =
        SavedInt8 { layers, method: method.to_string(), per_channel: per_channel == "true" };
    let added_nodes: Vec<String> =
        metadata(proto, ADDED_NODES_KEY).unwrap_or("").lines().map(str::to_owned).collect();
    let added_inits: Vec<String> =
        metadata(proto, ADDED_INITIALIZERS_KEY).unwrap_or("").lines().map(str::to_owned).collect();
    let rewired: Vec<(String, usize, String)> = metadata(proto, REWIRED_KEY)
        .unwrap_or("")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.split('\t');
            match (f.next(), f.next().and_then(|i| i.parse().ok()), f.next()) {
                (Some(node), Some(ix), Some(original)) => {
                    Ok((node.to_string(), ix, original.to_string()))
                }
                _ => Err(bad(line)),
            }
        })
        .collect::<Result<_>>()?;
    let Some(graph) = proto.graph.as_mut() else { return Err(bad("no graph")) };
    for layer in &mut saved.layers {
        layer.input = input_stats(graph, &layer.name).map_err(|e| bad(&e))?;
    }
    graph.node.retain(|n| !added_nodes.contains(&n.name));
    graph.initializer.retain(|t| !added_inits.contains(&t.name));
    for (node, ix, original) in rewired {
        let node = graph.node.iter_mut().find(|n| n.name == node).ok_or_else(|| bad(&node))?;
        if original.is_empty() {
            // An input the save appended (a bias for a layer that had none).
            if ix + 1 != node.input.len() {
                return Err(bad(&node.name));
            }
            node.input.truncate(ix);
            continue;
        }
        let slot = node.input.get_mut(ix).ok_or_else(|| bad(&original))?;
        *slot = original;
    }
    // The int8 bookkeeping goes; other entries (the weights' version) stay with the float model.
    let int8_keys = [LAYERS_KEY, OPTIONS_KEY, ADDED_NODES_KEY, ADDED_INITIALIZERS_KEY, REWIRED_KEY];
    proto.metadata_props.retain(|p| !int8_keys.contains(&p.key.as_str()));
    Ok(Some(saved))
}

/// The input statistics the save stored for `layer` as initializers (none: empty).
fn input_stats(graph: &pb::GraphProto, layer: &str) -> std::result::Result<InputStats, String> {
    let [means, scales, zero_points, shifts, moments] = stats_names(layer);
    let read = |name: &str| -> std::result::Result<Option<Tensor>, String> {
        graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .map(|t| tract_onnx::tensor::load_tensor(&MmapDataResolver, t, None))
            .transpose()
            .map_err(|_| name.to_string())
    };
    let floats = |name: &str| -> std::result::Result<Option<Vec<f32>>, String> {
        let Some(t) = read(name)? else { return Ok(None) };
        let view = t.to_plain_array_view::<f32>().map_err(|_| name.to_string())?;
        let values: Vec<f32> = view.iter().copied().collect();
        values.iter().all(|v| v.is_finite()).then_some(Some(values)).ok_or(name.to_string())
    };
    let mut stats = InputStats {
        means: floats(&means)?.unwrap_or_default(),
        lattice: None,
        moments: floats(&moments)?.unwrap_or_default(),
    };
    if let (Some(s), Some(d)) = (floats(&scales)?, floats(&shifts)?) {
        let z = read(&zero_points)?.ok_or(zero_points.clone())?;
        let z: Vec<u8> = z
            .to_plain_array_view::<u8>()
            .map_err(|_| zero_points.clone())?
            .iter()
            .copied()
            .collect();
        if s.iter().any(|&v| v <= 0.0) || s.len() != z.len() || s.len() != d.len() {
            return Err(scales);
        }
        stats.lattice = Some(ChannelLattice { scales: s, zero_points: z, shifts: d });
    }
    Ok(stats)
}

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
    Ok(Some(SavedInt8 { layers, method: "imported".into(), per_channel: true }))
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
