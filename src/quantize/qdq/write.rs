//! Writing an int8 runtime as a standard ONNX file in QDQ form: each int8 layer's activation goes
//! through QuantizeLinear→DequantizeLinear (u8, the calibrated parameters) and its weight through
//! DequantizeLinear of per-channel int8 codes, so onnxruntime and other QDQ-aware runtimes run it
//! (models older than opset 13 get onnxruntime's `com.microsoft` Q/DQ, which take `axis`).
//! Metadata records what was added so `Runtime::load` restores the float graph and the exact
//! int8 plan. A layer whose numbers the runtime computed (see [`DeployedLayer`]) is written with
//! exactly those codes and that bias; a deployable file leaves out its float master weight.

use std::collections::{HashMap, HashSet};

use prost::Message;
use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb;

use super::onnx_layout::{corrected_bias, fold_weight, refine_onnx_codes};
use super::{
    kernel_bias_name, onnx_node_name, stats_names, SavedOptions, ADDED_INITIALIZERS_KEY,
    ADDED_NODES_KEY, BYPASSED_KEY, DEPLOYED_KEY, LAYERS_KEY, OPTIONS_KEY, PER_ROW_FIELD,
    REWIRED_KEY,
};
use crate::calibrate::ChannelLattice;
use crate::error::{Error, Result};
use crate::quantize::input::{InputStats, InputStatsByLayer};
use crate::quantize::qparams::{quantize_weights, ActivationQuant};

/// An int8 layer's numbers as the runtime computed them (`quantize::quantize_layer`), in the
/// layout of its ONNX weight: what the file carries for it instead of computing them again.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployedLayer {
    /// The ONNX weight (an initializer the layer's node reads directly).
    pub weight: String,
    /// The codes, shaped as the weight.
    pub codes: Vec<i8>,
    /// One scale per output channel.
    pub scales: Vec<f32>,
    /// The bias the kernel adds, and the layer's bias before correction (the ONNX bias plus
    /// any `Add` the layer fused), per output channel.
    pub kernel_bias: Vec<f32>,
    pub layer_bias: Vec<f32>,
    /// Whether `kernel_bias` is what the node's ONNX bias input should be (its layer bias is
    /// exactly that input, or a folded BatchNormalization leaves the graph with it).
    pub bias_is_input: bool,
    /// The `BatchNormalization` node folded into the layer: the file leaves it out of the
    /// graph, the layer writing its output (a learnable file records it to restore).
    pub batch_norm: Option<String>,
}

/// onnxruntime's operator domain, whose Q/DQ take `axis` at any opset.
const CONTRIB_DOMAIN: &str = "com.microsoft";

/// Builds the QDQ file from the float model `proto` and each int8 layer's activation
/// parameters and input statistics. `computed` holds, by ONNX node, the numbers of the layers
/// the runtime can state in the node's own layout; other layers are quantized here from their
/// ONNX weight. `deployable` leaves out the float weights of the `computed` layers and their
/// calibration statistics (the file then runs, but cannot be updated).
pub fn to_qdq(
    mut proto: pb::ModelProto,
    layers: &[(String, ActivationQuant)],
    stats: &InputStatsByLayer,
    options: &SavedOptions,
    computed: &HashMap<String, DeployedLayer>,
    deployable: bool,
) -> Result<Vec<u8>> {
    let fail = |reason: String| Error::Save(reason);
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    if opset < 10 {
        return Err(fail(format!("QDQ needs opset 10 or later; the model has {opset}")));
    }
    // Per-channel QuantizeLinear (`axis`) came with opset 13. Older models get onnxruntime's
    // contrib Q/DQ, which has had `axis` from the start, rather than an opset upgrade that
    // would change the meaning of their other nodes.
    let domain = if opset < 13 { CONTRIB_DOMAIN } else { "" };
    if !domain.is_empty() && !proto.opset_import.iter().any(|o| o.domain == domain) {
        proto.opset_import.push(pb::OperatorSetIdProto { domain: domain.into(), version: 1 });
    }
    let Some(graph) = proto.graph.as_mut() else {
        return Err(fail("the model has no graph".into()));
    };
    constants_to_initializers(graph);
    let by_node: HashMap<String, ActivationQuant> =
        layers.iter().map(|(name, q)| (onnx_node_name(name).to_string(), *q)).collect();
    let stats_by_node: HashMap<&str, &InputStats> =
        stats.iter().map(|(name, s)| (onnx_node_name(name), &**s)).collect();
    let initializers: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut added = Added { domain: domain.into(), ..Added::default() };
    let mut deployed: Vec<String> = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len() + 3 * layers.len());
    let original_nodes = std::mem::take(&mut graph.node);
    // BatchNormalizations folded into an int8 layer: left out, the layer writing their output.
    let folded: HashMap<&str, &pb::NodeProto> = original_nodes
        .iter()
        .filter(|n| n.op_type == "BatchNormalization" && n.output.len() == 1)
        .map(|n| (n.name.as_str(), n))
        .collect();
    let mut bypassed: Vec<pb::NodeProto> = Vec::new();
    for mut node in original_nodes.iter().cloned() {
        let quantizable =
            matches!(node.op_type.as_str(), "Conv" | "Gemm" | "MatMul") && node.input.len() >= 2;
        let Some(q) = by_node.get(&node.name).filter(|_| quantizable) else {
            nodes.push(node);
            continue;
        };
        let stats = stats_by_node.get(node.name.as_str()).map(|s| &**s);
        let lattice = stats.and_then(|s| s.lattice.as_ref()).filter(|_| node.op_type == "Conv");
        // An input quantized per row as it comes has no fixed Q/DQ: other runtimes read it as
        // float (a weight-only quantized layer).
        if !stats.is_some_and(|s| s.per_row) {
            let activation = node.input[0].clone();
            node.input[0] = match lattice {
                Some(l) => added.channel_activation(&mut nodes, &node.name, &activation, l),
                None => added.activation(&mut nodes, &activation, *q),
            };
            added.rewired.push(format!("{}\t0\t{activation}", node.name));
        }
        let weight = node.input[1].clone();
        let Some(&ix) = initializers.get(&weight) else {
            nodes.push(node);
            continue;
        };
        let original = &graph.initializer[ix];
        let layer = computed.get(&node.name).filter(|l| l.weight == weight);
        if let Some(layer) = layer {
            let axis = weight_axis(&node, original);
            let dq = added.codes(&mut nodes, original, axis, &layer.codes, &layer.scales);
            node.input[1] = dq.map_err(fail)?;
            added.rewired.push(format!("{}\t1\t{weight}", node.name));
            let lean = deployable
                .then(|| InputStats { lattice: lattice.cloned(), ..InputStats::default() });
            if let Some(stats) = lean.as_ref().or(stats) {
                for t in stats_tensors(&node.name, stats) {
                    added.initializer(t);
                }
            }
            if deployable {
                deployed.push(node.name.clone());
                let n = layer.kernel_bias.len() as i64;
                let bias =
                    float_tensor(kernel_bias_name(&node.name), vec![n], layer.kernel_bias.clone());
                added.initializer(bias);
            }
            if let Some(bias) = graph_bias(&node, layer, &graph.initializer, &initializers)? {
                added.corrected_bias(&mut node, bias);
            }
            let bn = layer.batch_norm.as_deref().and_then(|bn| folded.get(bn));
            if let (Some(bn), Some(out)) = (bn, node.output.first_mut()) {
                bn.output[0].clone_into(out);
                bypassed.push((*bn).clone());
            }
        } else {
            let folded = lattice.map(|l| fold_weight(original, l, &node.name));
            let folded = folded.transpose().map_err(fail)?;
            let tensor = folded.as_ref().unwrap_or(original);
            let axis = weight_axis(&node, tensor);
            let dq = added.weight(&mut nodes, tensor, axis, (&node, stats)).map_err(fail)?;
            node.input[1] = dq;
            added.rewired.push(format!("{}\t1\t{weight}", node.name));
            if let Some(stats) = stats.filter(|s| !s.means.is_empty()) {
                for t in stats_tensors(&node.name, stats) {
                    added.initializer(t);
                }
                let bias = corrected_bias(&node, tensor, &graph.initializer, &initializers, stats);
                if let Some(bias) = bias.map_err(fail)? {
                    added.corrected_bias(&mut node, bias);
                }
            }
        }
        nodes.push(node);
    }
    let left_out: HashSet<&str> = bypassed.iter().map(|bn| bn.name.as_str()).collect();
    nodes.retain(|n| !(n.op_type == "BatchNormalization" && left_out.contains(n.name.as_str())));
    graph.node = nodes;
    if deployable {
        // The float masters of the deployed layers go: their codes are their weights now.
        let dropped: HashSet<&str> =
            deployed.iter().filter_map(|n| computed.get(n)).map(|l| l.weight.as_str()).collect();
        graph.initializer.retain(|t| !dropped.contains(t.name.as_str()));
        // So do the parameters of the BatchNormalizations left out, if nothing else reads them.
        let used = used_names(graph);
        let unread: HashSet<&str> = bypassed
            .iter()
            .flat_map(|bn| bn.input.iter().skip(1))
            .map(String::as_str)
            .filter(|name| !used.contains(*name))
            .collect();
        graph.initializer.retain(|t| !unread.contains(t.name.as_str()));
    }
    graph.initializer.append(&mut added.initializers);
    let per_row = |name: &str| stats.get(name).is_some_and(|s| s.per_row);
    let layer_lines: String = layers
        .iter()
        .map(|(n, q)| {
            let mode = if per_row(n) { PER_ROW_FIELD } else { "" };
            format!("{n}\t{}\t{}{mode}\n", q.scale, q.zero_point)
        })
        .collect();
    let options = serde_json::to_string(options).map_err(|e| fail(e.to_string()))?;
    let mut entries = vec![
        (LAYERS_KEY, layer_lines),
        (OPTIONS_KEY, options),
        (ADDED_NODES_KEY, added.node_names.join("\n")),
        (ADDED_INITIALIZERS_KEY, added.initializer_names.join("\n")),
        (REWIRED_KEY, added.rewired.join("\n")),
    ];
    if deployable {
        entries.push((DEPLOYED_KEY, deployed.join("\n")));
    } else if !bypassed.is_empty() {
        let lines: Vec<String> = bypassed.iter().map(|bn| hex(&bn.encode_to_vec())).collect();
        entries.push((BYPASSED_KEY, lines.join("\n")));
    }
    for (key, value) in entries {
        proto.metadata_props.push(pb::StringStringEntryProto { key: key.into(), value });
    }
    Ok(proto.encode_to_vec())
}

/// The bias onnxruntime should add at `node` so the graph computes what the kernel does:
/// the kernel's own bias when the layer's bias is the node's bias input; otherwise the node's
/// bias (or zero) moved by the correction. `None`: nothing to change (a MatMul has no bias
/// input to carry it; an uncorrected bias stays as it is).
fn graph_bias(
    node: &pb::NodeProto,
    layer: &DeployedLayer,
    initializers: &[pb::TensorProto],
    by_name: &HashMap<String, usize>,
) -> Result<Option<Vec<f32>>> {
    if node.op_type == "MatMul" || layer.kernel_bias == layer.layer_bias {
        return Ok(None);
    }
    if layer.bias_is_input {
        return Ok(Some(layer.kernel_bias.clone()));
    }
    let n = layer.kernel_bias.len();
    let input = node.input.get(2).filter(|b| !b.is_empty()).and_then(|b| by_name.get(b));
    let mut bias = match input {
        Some(&ix) => read_floats(&initializers[ix]).map_err(Error::Save)?,
        None => vec![0.0; n],
    };
    if bias.len() != n || layer.layer_bias.len() != n {
        return Ok(None);
    }
    for ((b, &kernel), &before) in bias.iter_mut().zip(&layer.kernel_bias).zip(&layer.layer_bias) {
        *b += kernel - before;
    }
    Ok(Some(bias))
}

/// Every tensor name the nodes of `graph` and of its subgraphs read.
fn used_names(graph: &pb::GraphProto) -> HashSet<String> {
    let mut used = HashSet::new();
    let mut graphs = vec![graph];
    while let Some(g) = graphs.pop() {
        for node in &g.node {
            used.extend(node.input.iter().cloned());
            for attribute in &node.attribute {
                graphs.extend(attribute.g.as_ref());
                graphs.extend(attribute.graphs.iter());
            }
        }
    }
    used
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_floats(t: &pb::TensorProto) -> std::result::Result<Vec<f32>, String> {
    let tensor = tract_onnx::tensor::load_tensor(&MmapDataResolver, t, None)
        .map_err(|e| format!("reading {}: {e:#}", t.name))?;
    let view = tensor.to_plain_array_view::<f32>().map_err(|e| format!("{}: {e:#}", t.name))?;
    Ok(view.iter().copied().collect())
}

/// The initializers recording `stats` for `node`.
fn stats_tensors(node: &str, stats: &InputStats) -> Vec<pb::TensorProto> {
    let [means, scales, zero_points, shifts, moments] = stats_names(node);
    let dims = |v: &[f32]| vec![v.len() as i64];
    let mut tensors = Vec::new();
    if !stats.means.is_empty() {
        tensors.push(float_tensor(means, dims(&stats.means), stats.means.clone()));
    }
    if !stats.moments.is_empty() {
        tensors.push(float_tensor(moments, dims(&stats.moments), stats.moments.clone()));
    }
    if let Some(l) = &stats.lattice {
        tensors.push(float_tensor(scales, dims(&l.scales), l.scales.clone()));
        tensors.push(float_tensor(shifts, dims(&l.shifts), l.shifts.clone()));
        tensors.push(pb::TensorProto {
            name: zero_points,
            dims: dims(&l.scales),
            data_type: pb::tensor_proto::DataType::Uint8 as i32,
            raw_data: l.zero_points.clone(),
            ..Default::default()
        });
    }
    tensors
}

/// Turns `Constant` nodes holding a tensor into initializers of the same name (exporters such as
/// paddle2onnx write weights that way), so the weights they feed are quantized like any other.
fn constants_to_initializers(graph: &mut pb::GraphProto) {
    let nodes = std::mem::take(&mut graph.node);
    for node in nodes {
        let value = (node.op_type == "Constant"
            && node.domain.is_empty()
            && node.output.len() == 1)
            .then(|| node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.clone()))
            .flatten();
        match value {
            Some(mut tensor) => {
                tensor.name = node.output[0].clone();
                graph.initializer.push(tensor);
            }
            None => graph.node.push(node),
        }
    }
}

/// The axis of a weight that indexes output channels.
pub(super) fn weight_axis(node: &pb::NodeProto, weight: &pb::TensorProto) -> usize {
    match node.op_type.as_str() {
        "Gemm" => {
            let trans_b = node.attribute.iter().find(|a| a.name == "transB").map_or(0, |a| a.i);
            if trans_b == 1 {
                0
            } else {
                1
            }
        }
        "MatMul" => weight.dims.len().saturating_sub(1),
        _ => 0,
    }
}

#[derive(Default)]
struct Added {
    initializers: Vec<pb::TensorProto>,
    initializer_names: Vec<String>,
    node_names: Vec<String>,
    rewired: Vec<String>,
    /// Activations already quantized, with the dequantized tensor's name.
    activations: HashMap<String, String>,
    /// The operator domain of the Q/DQ nodes (empty: the standard one).
    domain: String,
    weights: HashSet<String>,
}

impl Added {
    fn initializer(&mut self, tensor: pb::TensorProto) -> String {
        let name = tensor.name.clone();
        if !self.initializer_names.contains(&name) {
            self.initializer_names.push(name.clone());
            self.initializers.push(tensor);
        }
        name
    }

    fn node(
        &mut self,
        nodes: &mut Vec<pb::NodeProto>,
        op: &str,
        name: String,
        inputs: Vec<String>,
        output: String,
        axis: Option<i64>,
    ) {
        let attribute = axis
            .map(|axis| pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: axis,
                ..Default::default()
            })
            .into_iter()
            .collect();
        self.node_names.push(name.clone());
        nodes.push(pb::NodeProto {
            name,
            op_type: op.into(),
            domain: self.domain.clone(),
            input: inputs,
            output: vec![output],
            attribute,
            ..Default::default()
        });
    }

    /// Points `node`'s bias input at a new initializer holding `bias` (appending the input when
    /// the node had none; restoring removes it again).
    fn corrected_bias(&mut self, node: &mut pb::NodeProto, bias: Vec<f32>) {
        let name = format!("{}_jp_bias", node.name);
        let n = bias.len() as i64;
        self.initializer(float_tensor(name.clone(), vec![n], bias));
        match node.input.get_mut(2) {
            Some(slot) if !slot.is_empty() => {
                self.rewired.push(format!("{}\t2\t{slot}", node.name));
                *slot = name;
            }
            _ => {
                node.input.truncate(2);
                node.input.push(name);
                self.rewired.push(format!("{}\t2\t", node.name));
            }
        }
    }

    /// Per-channel QuantizeLinear of an 8-bit input with its lattice (`axis` 1: the codes are
    /// the pixels), then a DequantizeLinear to the common step `s̄` the layer's weights were
    /// folded to (`W·s_c/s̄`), so the layer computes what the int8 op does; returns its output.
    fn channel_activation(
        &mut self,
        nodes: &mut Vec<pb::NodeProto>,
        layer: &str,
        tensor: &str,
        lattice: &ChannelLattice,
    ) -> String {
        let [_, scales, zero_points, _, _] = stats_names(layer);
        let channels = lattice.scales.len();
        let common = lattice.scales.iter().fold(0f32, |m, &s| m.max(s));
        let dims = vec![channels as i64];
        self.initializer(float_tensor(scales.clone(), dims.clone(), lattice.scales.clone()));
        self.initializer(pb::TensorProto {
            name: zero_points.clone(),
            dims: dims.clone(),
            data_type: pb::tensor_proto::DataType::Uint8 as i32,
            raw_data: lattice.zero_points.clone(),
            ..Default::default()
        });
        let common_name = format!("{layer}_jp_common_scale");
        self.initializer(float_tensor(common_name.clone(), dims, vec![common; channels]));
        let (quantized, dequantized) = (format!("{layer}_jp_q"), format!("{layer}_jp_dq"));
        let inputs = vec![tensor.to_string(), scales, zero_points.clone()];
        self.node(
            nodes,
            "QuantizeLinear",
            format!("{layer}_jp_Q"),
            inputs,
            quantized.clone(),
            Some(1),
        );
        let inputs = vec![quantized, common_name, zero_points];
        self.node(
            nodes,
            "DequantizeLinear",
            format!("{layer}_jp_DQ"),
            inputs,
            dequantized.clone(),
            Some(1),
        );
        dequantized
    }

    /// QuantizeLinear→DequantizeLinear on `tensor` (once per tensor); returns the DQ output.
    fn activation(
        &mut self,
        nodes: &mut Vec<pb::NodeProto>,
        tensor: &str,
        q: ActivationQuant,
    ) -> String {
        if let Some(done) = self.activations.get(tensor) {
            return done.clone();
        }
        let scale =
            self.initializer(float_tensor(format!("{tensor}_jp_scale"), vec![], vec![q.scale]));
        let zero = self.initializer(pb::TensorProto {
            name: format!("{tensor}_jp_zero_point"),
            data_type: pb::tensor_proto::DataType::Uint8 as i32,
            raw_data: vec![q.zero_point],
            ..Default::default()
        });
        let (quantized, dequantized) = (format!("{tensor}_jp_q"), format!("{tensor}_jp_dq"));
        let inputs = vec![tensor.to_string(), scale.clone(), zero.clone()];
        self.node(
            nodes,
            "QuantizeLinear",
            format!("{tensor}_jp_Q"),
            inputs,
            quantized.clone(),
            None,
        );
        self.node(
            nodes,
            "DequantizeLinear",
            format!("{tensor}_jp_DQ"),
            vec![quantized, scale, zero],
            dequantized.clone(),
            None,
        );
        self.activations.insert(tensor.to_string(), dequantized.clone());
        dequantized
    }

    /// Per-channel int8 codes of `weight` along `axis` and their DequantizeLinear; returns the
    /// DQ output.
    fn weight(
        &mut self,
        nodes: &mut Vec<pb::NodeProto>,
        weight: &pb::TensorProto,
        axis: usize,
        (node, stats): (&pb::NodeProto, Option<&InputStats>),
    ) -> std::result::Result<String, String> {
        if self.weights.contains(&weight.name) {
            return Ok(format!("{}_jp_dq", weight.name));
        }
        let tensor = tract_onnx::tensor::load_tensor(&MmapDataResolver, weight, None)
            .map_err(|e| format!("reading weight {}: {e:#}", weight.name))?;
        let array = tensor
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("weight {}: {e:#}", weight.name))?;
        let dims: Vec<usize> = array.shape().to_vec();
        let channels =
            *dims.get(axis).ok_or_else(|| format!("weight {} has no axis {axis}", weight.name))?;
        // Quantize with the output-channel axis first, then put the codes back in place.
        let mut moved = array.to_owned();
        moved.swap_axes(0, axis);
        let rows: Vec<f32> = moved.as_standard_layout().iter().copied().collect();
        let (mut codes, scales) =
            quantize_weights(&rows, channels, rows.len() / channels.max(1), true);
        if let Some(stats) = stats.filter(|_| axis == 0) {
            refine_onnx_codes(node, &dims, &rows, &mut codes, &scales, stats);
        }
        let mut shape_moved = dims.clone();
        shape_moved.swap(0, axis);
        let mut back =
            ndarray::ArrayD::from_shape_vec(shape_moved, codes).map_err(|e| e.to_string())?;
        back.swap_axes(0, axis);
        let codes: Vec<i8> = back.as_standard_layout().iter().copied().collect();
        self.codes(nodes, weight, axis, &codes, &scales)
    }

    /// The DequantizeLinear of `codes` (shaped as `weight`) with one scale per index of `axis`;
    /// returns its output (once per weight).
    fn codes(
        &mut self,
        nodes: &mut Vec<pb::NodeProto>,
        weight: &pb::TensorProto,
        axis: usize,
        codes: &[i8],
        scales: &[f32],
    ) -> std::result::Result<String, String> {
        let dequantized = format!("{}_jp_dq", weight.name);
        if !self.weights.insert(weight.name.clone()) {
            return Ok(dequantized);
        }
        let channels = usize::try_from(*weight.dims.get(axis).unwrap_or(&0)).unwrap_or(0);
        let count: i64 = weight.dims.iter().product();
        if channels != scales.len() || usize::try_from(count).ok() != Some(codes.len()) {
            return Err(format!("the codes of weight {} do not fit its shape", weight.name));
        }
        let quantized = self.initializer(pb::TensorProto {
            name: format!("{}_jp_quantized", weight.name),
            dims: weight.dims.clone(),
            data_type: pb::tensor_proto::DataType::Int8 as i32,
            raw_data: codes.iter().map(|&c| c as u8).collect(),
            ..Default::default()
        });
        let scale = self.initializer(float_tensor(
            format!("{}_jp_scale", weight.name),
            vec![channels as i64],
            scales.to_vec(),
        ));
        let zero = self.initializer(pb::TensorProto {
            name: format!("{}_jp_zero_point", weight.name),
            dims: vec![channels as i64],
            data_type: pb::tensor_proto::DataType::Int8 as i32,
            raw_data: vec![0; channels],
            ..Default::default()
        });
        let name = format!("{}_jp_DQ", weight.name);
        self.node(
            nodes,
            "DequantizeLinear",
            name,
            vec![quantized, scale, zero],
            dequantized.clone(),
            Some(axis as i64),
        );
        Ok(dequantized)
    }
}

pub(super) fn float_tensor(name: String, dims: Vec<i64>, values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name,
        dims,
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}
