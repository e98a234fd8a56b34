//! Reading back the INT8 files `Runtime::save` writes: a standard QDQ ONNX graph for other
//! runtimes, whose metadata lets this runtime restore the float graph (the float master weights
//! travel as the original initializers) and the calibrated activation parameters.

use tract_onnx::pb;

use crate::error::{Error, Result};

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
        layers.push(SavedLayer { name: name.to_string(), scale, zero_point });
    }
    let options = metadata(proto, OPTIONS_KEY).unwrap_or("");
    let (method, per_channel) = options.split_once('\t').unwrap_or((options, "true"));
    let saved =
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
    graph.node.retain(|n| !added_nodes.contains(&n.name));
    graph.initializer.retain(|t| !added_inits.contains(&t.name));
    for (node, ix, original) in rewired {
        let node = graph.node.iter_mut().find(|n| n.name == node).ok_or_else(|| bad(&node))?;
        let slot = node.input.get_mut(ix).ok_or_else(|| bad(&original))?;
        *slot = original;
    }
    proto.metadata_props.retain(|p| !p.key.starts_with("jarvis_performance."));
    Ok(Some(saved))
}
