//! Reading back the int8 files `Runtime::save` writes: their metadata restores the float graph
//! (a learnable file's float masters are its original initializers; a deployable file's layers
//! get their weights back from the int8 codes), the calibrated activation parameters and each
//! layer's statistics or fixed int8 numbers.

use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb;

use super::{
    kernel_bias_name, stats_names, SavedInt8, SavedLayer, SavedOptions, ADDED_INITIALIZERS_KEY,
    ADDED_NODES_KEY, BYPASSED_KEY, DEPLOYED_KEY, INT8_KEYS, LAYERS_KEY, OPTIONS_KEY, PER_ROW_FIELD,
    REWIRED_KEY,
};
use crate::calibrate::ChannelLattice;
use crate::error::{Error, Result};
use crate::quantize::input::{FixedKernel, InputStats};

fn metadata<'p>(proto: &'p pb::ModelProto, key: &str) -> Option<&'p str> {
    proto.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

fn corrupt(what: &str) -> Error {
    Error::ModelLoad { path: String::new(), reason: format!("corrupt int8 metadata: {what}") }
}

/// If `proto` is a file `Runtime::save` wrote, turns it back into the float graph (removing the
/// added Quantize/DequantizeLinear nodes and int8 initializers, restoring the layers' inputs)
/// and returns the saved quantization; other models are left untouched.
pub fn restore_float(proto: &mut pb::ModelProto) -> Result<Option<SavedInt8>> {
    let Some(layers_text) = metadata(proto, LAYERS_KEY).map(str::to_owned) else { return Ok(None) };
    let mut layers = Vec::new();
    for line in layers_text.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split('\t');
        let (Some(name), Some(scale), Some(zp)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(corrupt(line));
        };
        let scale: f32 = scale.parse().map_err(|_| corrupt(line))?;
        let zero_point: u8 = zp.parse().map_err(|_| corrupt(line))?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(corrupt(line));
        }
        let per_row = match fields.next() {
            None => false,
            Some(field) if field == &PER_ROW_FIELD[1..] => true,
            Some(_) => return Err(corrupt(line)),
        };
        layers.push(SavedLayer {
            name: name.to_string(),
            scale,
            zero_point,
            input: InputStats { per_row, ..InputStats::default() },
        });
    }
    let options = saved_options(metadata(proto, OPTIONS_KEY).unwrap_or(""))?;
    let lines = |key: &str| -> Vec<String> {
        metadata(proto, key)
            .unwrap_or("")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (added_nodes, added_inits, deployed) =
        (lines(ADDED_NODES_KEY), lines(ADDED_INITIALIZERS_KEY), lines(DEPLOYED_KEY));
    let bypassed = lines(BYPASSED_KEY);
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
                _ => Err(corrupt(line)),
            }
        })
        .collect::<Result<_>>()?;
    let mut saved = SavedInt8 { layers, options, deployable: !deployed.is_empty() };
    let Some(graph) = proto.graph.as_mut() else { return Err(corrupt("no graph")) };
    for layer in &mut saved.layers {
        let per_row = layer.input.per_row;
        layer.input =
            InputStats { per_row, ..input_stats(graph, &layer.name).map_err(|e| corrupt(&e))? };
    }
    // A deployed layer's weight comes back from its codes, before the codes leave the graph.
    for node in &deployed {
        let scales = restore_deployed_weight(graph, node, &rewired).map_err(|e| corrupt(&e))?;
        let bias = float_values(graph, &kernel_bias_name(node)).map_err(|e| corrupt(&e))?;
        let bias = bias.ok_or_else(|| corrupt(&kernel_bias_name(node)))?;
        if bias.len() != scales.len() {
            return Err(corrupt(&kernel_bias_name(node)));
        }
        let fixed = FixedKernel { scales, bias };
        for layer in saved.layers.iter_mut().filter(|l| super::onnx_node_name(&l.name) == node) {
            layer.input.fixed_kernel = Some(fixed.clone());
        }
    }
    graph.node.retain(|n| !added_nodes.contains(&n.name));
    graph.initializer.retain(|t| !added_inits.contains(&t.name));
    for (node, ix, original) in rewired {
        let node = graph.node.iter_mut().find(|n| n.name == node).ok_or_else(|| corrupt(&node))?;
        if original.is_empty() {
            // An input the save appended (a bias for a layer that had none).
            if ix + 1 != node.input.len() {
                return Err(corrupt(&node.name));
            }
            node.input.truncate(ix);
            continue;
        }
        let slot = node.input.get_mut(ix).ok_or_else(|| corrupt(&original))?;
        *slot = original;
    }
    for line in &bypassed {
        restore_bypassed(graph, line).map_err(|e| corrupt(&e))?;
    }
    // The int8 bookkeeping goes; other entries (the weights' version) stay with the float model.
    proto.metadata_props.retain(|p| !INT8_KEYS.contains(&p.key.as_str()));
    Ok(Some(saved))
}

/// Puts a node the save left out (a folded `BatchNormalization`, hex-encoded in `line`) back
/// after the node that wrote its output instead, which writes the node's input again.
fn restore_bypassed(graph: &mut pb::GraphProto, line: &str) -> std::result::Result<(), String> {
    let bytes = (0..line.len())
        .step_by(2)
        .map(|i| line.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or("bypassed node: not hex")?;
    let node = <pb::NodeProto as prost::Message>::decode(bytes.as_slice())
        .map_err(|e| format!("bypassed node: {e}"))?;
    let (Some(input), Some(output)) = (node.input.first(), node.output.first()) else {
        return Err(format!("bypassed node {}: no input or output", node.name));
    };
    let writer = graph
        .node
        .iter()
        .position(|n| n.output.first() == Some(output))
        .ok_or(format!("bypassed node {}: nothing writes {output}", node.name))?;
    graph.node[writer].output[0] = input.clone();
    graph.node.insert(writer + 1, node);
    Ok(())
}

/// The options as the file records them: JSON, or `method \t per_channel` in older files.
fn saved_options(text: &str) -> Result<SavedOptions> {
    if text.starts_with('{') {
        return serde_json::from_str(text).map_err(|e| corrupt(&format!("options: {e}")));
    }
    let (method, per_channel) = text.split_once('\t').unwrap_or((text, "true"));
    Ok(SavedOptions { method: method.to_string(), per_channel: per_channel == "true" })
}

/// Puts back the float weight of deployed `node` (its name from `rewired`): the int8 codes of
/// its DequantizeLinear times their scales, along the DequantizeLinear's axis, so the layer's
/// weights divided by the scales are its codes again. Returns the scales.
fn restore_deployed_weight(
    graph: &mut pb::GraphProto,
    node: &str,
    rewired: &[(String, usize, String)],
) -> std::result::Result<Vec<f32>, String> {
    let layer = graph.node.iter().find(|n| n.name == node).ok_or(node.to_string())?;
    let Some((_, _, weight)) = rewired.iter().find(|(n, ix, _)| n == node && *ix == 1) else {
        return Err(format!("{node}: no weight"));
    };
    let dequantized = layer.input.get(1).ok_or(node.to_string())?;
    let dq = graph
        .node
        .iter()
        .find(|n| n.op_type == "DequantizeLinear" && n.output.first() == Some(dequantized))
        .ok_or(dequantized.clone())?;
    let axis = dq.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
    let codes_name = dq.input.first().ok_or(dq.name.clone())?;
    let scales_name = dq.input.get(1).ok_or(dq.name.clone())?;
    let codes =
        graph.initializer.iter().find(|t| &t.name == codes_name).ok_or(codes_name.clone())?;
    if codes.data_type != pb::tensor_proto::DataType::Int8 as i32 {
        return Err(codes_name.clone());
    }
    let dims: Vec<usize> = codes.dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
    let scales = float_values(graph, scales_name)?.ok_or(scales_name.clone())?;
    let axis = usize::try_from(axis).ok().filter(|&a| a < dims.len()).ok_or(dq.name.clone())?;
    let (channels, inner) = (dims[axis], dims[axis + 1..].iter().product::<usize>());
    let count: usize = dims.iter().product();
    if channels != scales.len() || codes.raw_data.len() != count || inner == 0 {
        return Err(codes_name.clone());
    }
    let values: Vec<f32> = codes
        .raw_data
        .iter()
        .enumerate()
        .map(|(i, &c)| f32::from(c as i8) * scales[(i / inner) % channels])
        .collect();
    let mut restored = super::write::float_tensor(weight.clone(), codes.dims.clone(), values);
    restored.doc_string = "restored from int8 codes".into();
    graph.initializer.push(restored);
    Ok(scales)
}

/// The values of float initializer `name`, if the graph has it (finite, or an error).
fn float_values(
    graph: &pb::GraphProto,
    name: &str,
) -> std::result::Result<Option<Vec<f32>>, String> {
    let Some(t) = graph.initializer.iter().find(|t| t.name == name) else { return Ok(None) };
    let tensor = tract_onnx::tensor::load_tensor(&MmapDataResolver, t, None)
        .map_err(|_| name.to_string())?;
    let view = tensor.to_plain_array_view::<f32>().map_err(|_| name.to_string())?;
    let values: Vec<f32> = view.iter().copied().collect();
    values.iter().all(|v| v.is_finite()).then_some(Some(values)).ok_or(name.to_string())
}

/// The input statistics the save stored for `layer` as initializers (none: empty).
fn input_stats(graph: &pb::GraphProto, layer: &str) -> std::result::Result<InputStats, String> {
    let [means, scales, zero_points, shifts, moments] = stats_names(layer);
    let mut stats = InputStats {
        means: float_values(graph, &means)?.unwrap_or_default(),
        moments: float_values(graph, &moments)?.unwrap_or_default(),
        ..InputStats::default()
    };
    if let (Some(s), Some(d)) = (float_values(graph, &scales)?, float_values(graph, &shifts)?) {
        let z = graph
            .initializer
            .iter()
            .find(|t| t.name == zero_points)
            .filter(|t| t.data_type == pb::tensor_proto::DataType::Uint8 as i32)
            .ok_or(zero_points.clone())?;
        let z = z.raw_data.clone();
        if s.iter().any(|&v| v <= 0.0) || s.len() != z.len() || s.len() != d.len() {
            return Err(scales);
        }
        stats.lattice = Some(ChannelLattice { scales: s, zero_points: z, shifts: d });
    }
    Ok(stats)
}
