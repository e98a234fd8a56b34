//! Loading float ONNX models through tract: decoding, operator support, graph analysis, the
//! names and shapes of inputs and outputs, binding a call's inputs, and the float weights. The
//! saved int8 format is not known here: `quantize::qdq` turns such a file back into a float
//! model before [`OnnxModel::from_proto`] analyses it.

pub mod graph;
mod inputs;
mod onnx_ops;
mod spec;
mod summary;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::unimpl::UnimplementedOp;

pub use graph::{Graph, Signature};
pub use inputs::{bind_inputs, check_finite, check_input, SymbolBindings};
pub use spec::{ElementType, TensorSpec};
pub use summary::ModelSummary;
pub use weights::{OnnxLayer, Weights};

use crate::error::{catch_load_panics, chain, Error, Result};

/// An ONNX model analysed by tract: the typed (float, un-optimised) graph with one node per ONNX
/// operator (or per piece of an expanded operator), and its interface.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// Where the model came from, for messages.
    pub source: String,
    /// The graph, typed with symbolic axes or kept for typing per call signature; labels of
    /// its outlets are the ONNX tensor names.
    pub graph: Graph,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub summary: ModelSummary,
    /// The model as ONNX bytes (for an int8 file `Runtime::save` wrote: the restored float
    /// graph), what saving starts from.
    pub onnx: Arc<Vec<u8>>,
    /// Every float weight by name, read from the protobuf decoded for this load.
    pub weights: Arc<Weights>,
    /// The layers whose weights an update can reach (see [`weights::onnx_layers`]).
    pub layers: Vec<OnnxLayer>,
    /// The file's `metadata_props`, in order.
    pub metadata: Vec<(String, String)>,
    /// The preprocessing stored with the model (JSON, `crate::vision::stored`), unparsed:
    /// a bad record fails the image calls that need it, not the model's loading.
    pub preprocessing: Option<String>,
    /// Where external-data files live, for re-reading the model with other weights.
    pub dir: Option<String>,
}

impl OnnxModel {
    /// Reads and analyses an ONNX file. External-data files are looked up next to it.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::files::read(path)?;
        let dir = path.parent().and_then(Path::to_str).map(str::to_owned);
        Self::from_bytes(&bytes, &path.display().to_string(), dir.as_deref())
    }

    /// Analyses an ONNX model held in memory. `source` names it in messages; `dir` is where
    /// external-data files live, if any. tract panics on some malformed graphs (found by
    /// fuzzing: a Conv whose kernel rank differs from its input's); such a panic is caught here,
    /// so that every way in (`Runtime::load`, `Runtime::from_bytes`, the int8 paths, the CLI)
    /// reports it as the file's fault, `ModelLoad`.
    pub fn from_bytes(bytes: &[u8], source: &str, dir: Option<&str>) -> Result<Self> {
        let proto = Self::decode(bytes, source)?;
        Self::from_proto(&proto, Arc::new(bytes.to_vec()), source, dir)
    }

    /// Decodes an ONNX protobuf (the one decode of a load: the rest reads the decoded proto).
    pub fn decode(bytes: &[u8], source: &str) -> Result<pb::ModelProto> {
        let load_error = |reason: String| Error::ModelLoad { path: source.to_string(), reason };
        if bytes.is_empty() {
            return Err(load_error("the file is empty".into()));
        }
        catch_load_panics(source, || {
            tract_onnx::onnx()
                .proto_model_for_read(&mut &bytes[..])
                .map_err(|e| load_error(format!("not a valid ONNX protobuf ({})", chain(&e))))
        })
    }

    /// Analyses a decoded model whose bytes are `onnx`.
    pub fn from_proto(
        proto: &pb::ModelProto,
        onnx: Arc<Vec<u8>>,
        source: &str,
        dir: Option<&str>,
    ) -> Result<Self> {
        catch_load_panics(source, || Self::analyse(proto, onnx, source, dir))
    }

    fn analyse(
        proto: &pb::ModelProto,
        onnx_bytes: Arc<Vec<u8>>,
        source: &str,
        dir: Option<&str>,
    ) -> Result<Self> {
        let load_error = |reason: String| Error::ModelLoad { path: source.to_string(), reason };
        let mut onnx = tract_onnx::onnx().with_ignore_output_shapes(true);
        onnx_ops::register(&mut onnx.op_register);
        let Some(graph) = proto.graph.as_ref() else {
            return Err(load_error("the protobuf holds no graph (is this an ONNX model?)".into()));
        };
        let summary = ModelSummary::from_proto(proto, graph);
        let preprocessing = crate::vision::stored::read(proto).map(str::to_owned);
        let parsed = onnx.parse(proto, dir).map_err(|e| load_error(chain(&e)))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(load_error(format!(
                "nodes read tensors that nothing produces: {}",
                parsed.unresolved_inputs.join(", ")
            )));
        }
        let mut decoded = parsed.model;
        reject_unimplemented(&decoded)?;
        graph::name_open_axes(&mut decoded).map_err(|e| load_error(chain(&e)))?;
        let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let input_names: Vec<String> = graph
            .input
            .iter()
            .map(|i| i.name.clone())
            .filter(|name| !initializers.contains(&name.as_str()))
            .collect();
        let output_names: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let (graph, inputs, outputs) = match graph::type_symbolically(&decoded) {
            Ok(typed) => {
                let outlets = typed.input_outlets().map_err(|e| load_error(chain(&e)))?;
                let inputs = interface(&typed, outlets, input_names)?;
                let outlets = typed.output_outlets().map_err(|e| load_error(chain(&e)))?;
                let outputs = interface(&typed, outlets, output_names)?;
                (Graph::Symbolic(typed), inputs, outputs)
            }
            Err(reason) if graph::can_specialise(&decoded) => {
                log::debug!(
                    "{source}: tract cannot type the graph with symbolic axes ({reason}); it is \
                     typed for each input signature"
                );
                let inputs = decoded_interface(&decoded, input_names)?;
                let outputs = declared_outputs(graph, output_names.len());
                (Graph::PerSignature(Arc::new(decoded)), inputs, outputs)
            }
            Err(reason) => return Err(load_error(reason)),
        };
        if outputs.is_empty() {
            return Err(load_error("the graph has no outputs".into()));
        }
        Ok(OnnxModel {
            source: source.to_string(),
            graph,
            inputs,
            outputs,
            summary,
            onnx: onnx_bytes,
            weights: Arc::new(weights::float_weights(proto)),
            layers: weights::onnx_layers(proto),
            metadata: proto
                .metadata_props
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
            preprocessing,
            dir: dir.map(str::to_owned),
        })
    }

    /// The value of the metadata entry `key`, if the file has one.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Position of the input called `name`.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|s| s.name == name)
    }

    /// Position of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|s| s.name == name)
    }
}

/// tract parses unknown operators into placeholders; refuse them here, naming the first one.
fn reject_unimplemented(model: &InferenceModel) -> Result<()> {
    let mut missing = model.nodes().iter().filter(|n| n.op_is::<UnimplementedOp>());
    let Some(first) = missing.next() else {
        return Ok(());
    };
    let op_name = first.op.name();
    let op_type = op_name
        .strip_prefix("Unimplemented(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(&op_name)
        .to_string();
    let others = missing.count();
    let reason = if others > 0 {
        format!("tract has no implementation; {others} more node(s) also unsupported")
    } else {
        "tract has no implementation".to_string()
    };
    Err(Error::UnsupportedOp { node: first.name.clone(), op_type, reason })
}

/// Specs of the model's input or output outlets. Names come from the ONNX graph when it lists
/// one per outlet: tract labels an outlet with the last tensor name it carries, so a graph input
/// that flows unchanged into an output would otherwise be named after the output.
fn interface(
    model: &TypedModel,
    outlets: &[OutletId],
    onnx_names: Vec<String>,
) -> Result<Vec<TensorSpec>> {
    let use_onnx_names = onnx_names.len() == outlets.len();
    outlets
        .iter()
        .enumerate()
        .map(|(ix, &outlet)| {
            let name = if use_onnx_names {
                onnx_names[ix].clone()
            } else {
                model
                    .outlet_label(outlet)
                    .map(str::to_owned)
                    .unwrap_or_else(|| model.node(outlet.node).name.clone())
            };
            let fact = model
                .outlet_fact(outlet)
                .map_err(|e| Error::ModelLoad { path: name.clone(), reason: chain(&e) })?;
            Ok(TensorSpec::from_fact(name, fact))
        })
        .collect()
}

/// Specs of the inputs of a graph kept for typing per signature, from its decoded facts (open
/// axes already named by [`graph::name_open_axes`]).
fn decoded_interface(model: &InferenceModel, onnx_names: Vec<String>) -> Result<Vec<TensorSpec>> {
    let use_onnx_names = onnx_names.len() == model.inputs.len();
    (0..model.inputs.len())
        .map(|ix| {
            let name = if use_onnx_names {
                onnx_names[ix].clone()
            } else {
                model.node(model.inputs[ix].node).name.clone()
            };
            let fact = model
                .input_fact(ix)
                .map_err(|e| Error::ModelLoad { path: name.clone(), reason: chain(&e) })?;
            Ok(TensorSpec::from_inference_fact(name, fact))
        })
        .collect()
}

/// Specs of the outputs as the file declares them (tract knows them only per signature).
fn declared_outputs(graph: &tract_onnx::pb::GraphProto, count: usize) -> Vec<TensorSpec> {
    graph.output.iter().take(count).map(TensorSpec::from_value_info).collect()
}
