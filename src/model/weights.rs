//! The float weights of an ONNX model by name — its float initializers and the values of its
//! float `Constant` nodes — and writing changed values back into the ONNX protobuf.
//!
//! These are the names `Runtime::update` accepts: for a model exported from PyTorch, the
//! `state_dict` keys of the weights the exporter kept as they were.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{Error, Result};

/// Float weights by ONNX name.
pub type Weights = HashMap<String, Arc<Tensor>>;

const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;

/// Every float initializer and float `Constant` value of the model in `onnx`. Weights kept in
/// external-data files are left out (they cannot be rewritten in place).
pub fn float_weights(proto: &pb::ModelProto) -> Weights {
    let Some(graph) = proto.graph.as_ref() else { return Weights::new() };
    let mut weights = Weights::new();
    for (name, tensor) in named_tensors(graph) {
        if tensor.data_type != FLOAT || !tensor.external_data.is_empty() {
            continue;
        }
        match tract_onnx::tensor::load_tensor(&MmapDataResolver, tensor, None) {
            Ok(value) => {
                weights.insert(name.to_string(), Arc::new(value));
            }
            Err(e) => log::debug!("weight {name} is not updatable: {e}"),
        }
    }
    weights
}

/// A Conv, Gemm or MatMul node of the ONNX graph whose weight is a float weight that nothing
/// else reads: where an update to that weight can go straight to the layer (when its bias is
/// its own too), and where a saved file can put the layer's int8 numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxLayer {
    pub node: String,
    pub weight: String,
    /// The bias input (Conv, Gemm), or the constant a MatMul's single `Add` consumer adds.
    pub bias: Option<String>,
    /// Whether the bias is a float weight only this layer reads (else it is shared with other
    /// layers or computed, and only a rebuild keeps it right).
    pub bias_owned: bool,
    /// The `BatchNormalization` that alone reads a Conv's output, with constant parameters:
    /// tract folds it into the layer's weight and bias.
    pub batch_norm: Option<BatchNorm>,
}

/// A `BatchNormalization` node after a Conv: its name and its parameters' weight names.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    pub node: String,
    /// Scale, bias, mean and variance, in the node's input order.
    pub parameters: [String; 4],
    pub epsilon: f32,
}

impl Eq for BatchNorm {}

impl BatchNorm {
    /// The `BatchNormalization` that is the only reader of `node`'s output, if its parameters
    /// are all float weights of the graph.
    fn after(
        node: &pb::NodeProto,
        consumers: &HashMap<&str, Vec<&pb::NodeProto>>,
        graph_outputs: &std::collections::HashSet<&str>,
        is_weight: impl Fn(&str) -> bool,
    ) -> Option<BatchNorm> {
        let out = node.output.first()?;
        if graph_outputs.contains(out.as_str()) {
            return None; // the unfolded output is needed as it is
        }
        let [bn] = consumers.get(out.as_str())?.as_slice() else { return None };
        let parameters: [String; 4] =
            [1, 2, 3, 4].map(|i| bn.input.get(i).cloned().unwrap_or_default());
        let usable = bn.op_type == "BatchNormalization"
            && bn.input.first() == Some(out)
            && bn.output.len() == 1
            && parameters.iter().all(|p| is_weight(p));
        let epsilon = bn.attribute.iter().find(|a| a.name == "epsilon").map_or(1e-5, |a| a.f);
        usable.then(|| BatchNorm { node: bn.name.clone(), parameters, epsilon })
    }
}

/// The layers of the model in `onnx` with exclusively owned weights (PyTorch's exporter puts
/// `Identity` nodes between a shared weight and its users: they are looked through).
pub fn onnx_layers(proto: &pb::ModelProto) -> Vec<OnnxLayer> {
    let Some(graph) = proto.graph.as_ref() else { return Vec::new() };
    let weights: std::collections::HashSet<&str> = named_tensors(graph)
        .filter(|(_, t)| t.data_type == FLOAT && t.external_data.is_empty())
        .map(|(name, _)| name)
        .collect();
    // Identity output → its source weight.
    let mut alias: HashMap<&str, &str> = HashMap::new();
    for node in graph.node.iter().filter(|n| n.op_type == "Identity") {
        if let (Some(input), Some(output)) = (node.input.first(), node.output.first()) {
            let source = alias.get(input.as_str()).copied().unwrap_or(input.as_str());
            alias.insert(output.as_str(), source);
        }
    }
    fn resolve_in<'g>(
        alias: &HashMap<&'g str, &'g str>,
        weights: &std::collections::HashSet<&'g str>,
        tensor: &'g str,
    ) -> Option<&'g str> {
        let source = alias.get(tensor).copied().unwrap_or(tensor);
        weights.contains(source).then_some(source)
    }
    let mut reads: HashMap<&str, usize> = HashMap::new();
    let mut consumers: HashMap<&str, Vec<&pb::NodeProto>> = HashMap::new();
    for node in graph.node.iter().filter(|n| n.op_type != "Identity") {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            if let Some(source) = resolve_in(&alias, &weights, input) {
                *reads.entry(source).or_default() += 1;
            }
            consumers.entry(input.as_str()).or_default().push(node);
        }
    }
    let owned = |tensor: Option<&String>| -> Option<String> {
        let source = resolve_in(&alias, &weights, tensor?)?;
        (reads.get(source) == Some(&1)).then(|| source.to_string())
    };
    let outputs: std::collections::HashSet<&str> =
        graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut layers = Vec::new();
    for node in &graph.node {
        let bias_input = match node.op_type.as_str() {
            "Conv" | "Gemm" => node.input.get(2).filter(|b| !b.is_empty()),
            "MatMul" => None,
            _ => continue,
        };
        let Some(weight) = owned(node.input.get(1)) else { continue };
        let bias = match (node.op_type.as_str(), bias_input) {
            ("MatMul", _) => node
                .output
                .first()
                .and_then(|out| match consumers.get(out.as_str()).map(Vec::as_slice) {
                    Some([add]) if add.op_type == "Add" => add.input.iter().find(|i| *i != out),
                    _ => None,
                })
                .and_then(|b| owned(Some(b))),
            (_, Some(b)) => match owned(Some(b)) {
                Some(b) => Some(b),
                // A bias computed or shared: the layer cannot be updated in place.
                None => {
                    // A shared weight (looked through `Identity`) is bound for saving only.
                    let Some(source) = resolve_in(&alias, &weights, b) else { continue };
                    let bias = Some(source.to_string());
                    layers.push(OnnxLayer {
                        node: node.name.clone(),
                        weight,
                        bias,
                        bias_owned: false,
                        batch_norm: None,
                    });
                    continue;
                }
            },
            (_, None) => None,
        };
        let is_weight = |p: &str| weights.contains(alias.get(p).copied().unwrap_or(p));
        let batch_norm = (node.op_type == "Conv")
            .then(|| BatchNorm::after(node, &consumers, &outputs, is_weight))
            .flatten();
        layers.push(OnnxLayer {
            node: node.name.clone(),
            weight,
            bias,
            bias_owned: true,
            batch_norm,
        });
    }
    layers
}

/// `proto` with the values of `changed` written over the weights of the same names, and the
/// metadata entries `metadata` set (replacing entries with the same keys).
pub fn with_weights(
    mut proto: pb::ModelProto,
    changed: &Weights,
    metadata: &[(&str, String)],
) -> Result<pb::ModelProto> {
    if let Some(graph) = proto.graph.as_mut() {
        for tensor in graph.initializer.iter_mut() {
            if let Some(value) = changed.get(&tensor.name) {
                overwrite(tensor, value)?;
            }
        }
        for node in graph.node.iter_mut().filter(|n| n.op_type == "Constant") {
            let Some(name) = node.output.first().cloned() else { continue };
            let Some(value) = changed.get(&name) else { continue };
            for attribute in node.attribute.iter_mut().filter(|a| a.name == "value") {
                if let Some(tensor) = attribute.t.as_mut() {
                    overwrite(tensor, value)?;
                }
            }
        }
    }
    for (key, value) in metadata {
        proto.metadata_props.retain(|p| p.key != *key);
        proto
            .metadata_props
            .push(pb::StringStringEntryProto { key: key.to_string(), value: value.clone() });
    }
    Ok(proto)
}

/// CRC-32 of the weights (names, shapes and values, in name order): written by `save`, checked
/// on load, so a corrupted, edited or half-copied file is refused instead of loaded with wrong
/// weights. (An integrity check, not a signature.)
pub fn checksum(weights: &Weights) -> String {
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort_unstable();
    let mut hasher = crc32fast::Hasher::new();
    for name in names {
        hasher.update(name.as_bytes());
        let tensor = &weights[name];
        for &dim in tensor.shape() {
            hasher.update(&(dim as u64).to_le_bytes());
        }
        if let Ok(view) = tensor.to_plain_array_view::<f32>() {
            for value in view.iter() {
                hasher.update(&value.to_le_bytes());
            }
        }
    }
    format!("{:08x}", hasher.finalize())
}

/// Initializers by name, then `Constant` node values by output name.
fn named_tensors(graph: &pb::GraphProto) -> impl Iterator<Item = (&str, &pb::TensorProto)> {
    let initializers = graph.initializer.iter().map(|t| (t.name.as_str(), t));
    let constants = graph.node.iter().filter(|n| n.op_type == "Constant").filter_map(|n| {
        let tensor = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
        Some((n.output.first()?.as_str(), tensor))
    });
    initializers.chain(constants)
}

fn overwrite(tensor: &mut pb::TensorProto, value: &Tensor) -> Result<()> {
    let values = value
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::Internal(format!("weight {} is not float: {e}", tensor.name)))?;
    tensor.float_data.clear();
    tensor.external_data.clear();
    tensor.data_location = None;
    tensor.dims = value.shape().iter().map(|&d| d as i64).collect();
    tensor.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(())
}
