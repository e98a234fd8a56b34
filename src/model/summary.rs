//! What `jarvis-perf inspect` prints about a model: operator counts and parameters, read from the
//! ONNX protobuf (the user's vocabulary, before tract rewrites anything).

use std::collections::BTreeMap;

use tract_onnx::pb;

/// Operator counts and parameter totals of an ONNX graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSummary {
    /// ONNX operator type → number of nodes (sub-graphs not included).
    pub op_counts: BTreeMap<String, usize>,
    /// Elements in initializers and `Constant` nodes.
    pub parameters: u64,
    /// Number of initializers plus `Constant` nodes.
    pub weight_tensors: usize,
    /// The default-domain opset the model was exported with (0 if absent).
    pub opset: i64,
    /// `producer_name producer_version` from the file.
    pub producer: String,
}

impl ModelSummary {
    pub(crate) fn from_proto(model: &pb::ModelProto, graph: &pb::GraphProto) -> Self {
        let mut summary = ModelSummary {
            opset: model
                .opset_import
                .iter()
                .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
                .map_or(0, |o| o.version),
            producer: format!("{} {}", model.producer_name, model.producer_version)
                .trim()
                .to_string(),
            ..Default::default()
        };
        for tensor in &graph.initializer {
            summary.add_weight(tensor);
        }
        for node in &graph.node {
            *summary.op_counts.entry(node.op_type.clone()).or_default() += 1;
            if node.op_type == "Constant" {
                for tensor in node.attribute.iter().filter_map(|a| a.t.as_ref()) {
                    summary.add_weight(tensor);
                }
            }
        }
        summary
    }

    fn add_weight(&mut self, tensor: &pb::TensorProto) {
        let elements =
            tensor.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?));
        self.parameters = self.parameters.saturating_add(elements.unwrap_or(0));
        self.weight_tensors += 1;
    }
}
