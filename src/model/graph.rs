//! How a model's graph gets its types: once at load with symbolic axes, or per call signature.
//!
//! tract types a graph before it sees data. Many third-party files defeat that: a `Resize` whose
//! output size is computed from a symbolic height, a `Reshape` of a symbolic sequence, an `If`
//! whose branches disagree on shapes until a sample-rate input is known. Such a graph is kept
//! as tract decoded it ([`Graph::PerSignature`]) and typed again for each concrete input
//! signature — every input's shape, and the value of each small integer input — so its
//! conditions fold and every shape is a number.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{DimFact, Factoid, ShapeFactoid};

use crate::error::chain;

/// A model's graph, typed once or per call signature.
#[derive(Debug, Clone)]
pub enum Graph {
    /// Typed with symbolic axes at load: plans specialise by substituting symbol values.
    Symbolic(TypedModel),
    /// Typed only once the inputs are known: each signature gets its own typing and plan.
    PerSignature(Arc<InferenceModel>),
}

impl Graph {
    /// The graph typed with symbolic axes, if it could be.
    pub fn symbolic(&self) -> Option<&TypedModel> {
        match self {
            Graph::Symbolic(typed) => Some(typed),
            Graph::PerSignature(_) => None,
        }
    }
}

/// The concrete inputs of one call, as far as they shape the plan: every input's shape, and the
/// value of the inputs whose value specialises the graph (`None` for the others).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<Option<i64>>,
}

impl Signature {
    /// The signature of `inputs`; the value of input `i` counts when `by_value[i]`.
    pub fn of(inputs: &[Tensor], by_value: &[bool]) -> Signature {
        let shapes = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let values = inputs
            .iter()
            .enumerate()
            .map(|(ix, t)| {
                let counts = by_value.get(ix).copied().unwrap_or(false) && t.len() == 1;
                counts.then(|| scalar_value(t)).flatten()
            })
            .collect();
        Signature { shapes, values }
    }

    /// `name=1x3x640x640` per input, `name=16000` for the ones specialised by value.
    pub fn describe(&self, names: &[String]) -> String {
        let parts: Vec<String> = self
            .shapes
            .iter()
            .zip(&self.values)
            .enumerate()
            .map(|(ix, (shape, value))| {
                let name = names.get(ix).map_or("?", String::as_str);
                let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                let dims = if dims.is_empty() { "scalar".to_string() } else { dims.join("x") };
                match value {
                    Some(v) => format!("{name}={dims} (value {v})"),
                    None => format!("{name}={dims}"),
                }
            })
            .collect();
        parts.join(", ")
    }
}

/// The one value of a one-element integer tensor.
fn scalar_value(tensor: &Tensor) -> Option<i64> {
    tensor.cast_to_scalar::<i64>().ok()
}

/// Whether a declared input is one whose value should specialise the graph: an integer with at
/// most one element (a sample rate, a step count, a flag), which `If` and `Range` often read.
pub fn specialises_by_value(fact: &InferenceFact) -> bool {
    let integer = fact.datum_type.concretize().is_some_and(|dt| dt.is_integer());
    let at_most_one = fact.shape.dims().all(|d| d.concretize().is_some_and(|d| d.is_one()))
        && !fact.shape.is_open();
    integer && at_most_one
}

/// Whether typing per signature can help a graph that failed to type symbolically: some input
/// has an axis known only at run time, or a value that specialises the graph.
pub fn can_specialise(model: &InferenceModel) -> bool {
    (0..model.inputs.len()).any(|ix| {
        model.input_fact(ix).is_ok_and(|fact| {
            specialises_by_value(fact)
                || fact.shape.is_open()
                || fact.shape.dims().any(|d| d.concretize().is_none_or(|d| d.to_i64().is_err()))
        })
    })
}

/// Gives every input axis that the file leaves open (`-1`, `0`, `?`, a missing `dim_value`) a
/// symbol of its own, `<input>_<axis>`, so tract can reason about it as one unknown size.
/// Returns the number of axes named.
pub fn name_open_axes(model: &mut InferenceModel) -> TractResult<usize> {
    let mut named = 0;
    for ix in 0..model.inputs.len() {
        let fact = model.input_fact(ix)?.clone();
        if fact.shape.is_open() {
            continue; // rank unknown: nothing to name
        }
        let label = model.node(model.inputs[ix].node).name.clone();
        let mut changed = false;
        let dims: TVec<TDim> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(axis, dim)| match dim.concretize() {
                Some(d) if d != TDim::Val(0) && d != TDim::Val(-1) => d,
                _ => {
                    changed = true;
                    TDim::Sym(model.symbols.sym(&symbol_name(&label, axis)))
                }
            })
            .collect();
        if changed {
            named += dims.iter().filter(|d| matches!(d, TDim::Sym(_))).count();
            model.set_input_fact(ix, fact.with_shape(ShapeFactoid::from(dims)))?;
        }
    }
    Ok(named)
}

/// A symbol name tract's parser accepts: letters, digits and underscores.
fn symbol_name(input: &str, axis: usize) -> String {
    let clean: String =
        input.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{clean}_{axis}")
}

/// The graph typed and decluttered for one signature: every input's shape fixed, and each input
/// with a value in the signature replaced by that constant (so conditions on it fold).
pub fn specialise(model: &InferenceModel, signature: &Signature) -> TractResult<TypedModel> {
    let mut model = model.clone();
    let mut values = SymbolValues::default();
    for (ix, (shape, value)) in signature.shapes.iter().zip(&signature.values).enumerate() {
        let declared = model.input_fact(ix)?.clone();
        for (dim, &size) in declared.shape.dims().zip(shape) {
            if let Some(TDim::Sym(symbol)) = dim.concretize() {
                values = values.with(&symbol, size as i64);
            }
        }
        let dt = declared
            .datum_type
            .concretize()
            .ok_or_else(|| TractError::msg(format!("input {ix} declares no element type")))?;
        model.set_input_fact(ix, InferenceFact::dt_shape(dt, shape.clone()))?;
        if let Some(value) = value {
            let constant = tensor0(*value).cast_to_dt(dt)?.into_owned().into_shape(shape)?;
            let source = model.inputs[ix];
            let name = format!("{}.value", model.node(source.node).name);
            let konst = model.add_const(name, constant)?;
            for inlet in model.outlet_successors(source).to_vec() {
                model.add_edge(konst, inlet)?;
            }
        }
    }
    settle_declared_shapes(&mut model, &values);
    model.into_typed()?.into_decluttered()
}

/// Evaluates the shapes the file declares for inner tensors (`value_info`, in terms of the
/// input symbols) at the signature's sizes, forgetting any dimension still symbolic: a declared
/// `batch` left as a symbol would contradict the concrete size tract infers.
fn settle_declared_shapes(model: &mut InferenceModel, values: &SymbolValues) {
    let sources: Vec<usize> = model.inputs.iter().map(|o| o.node).collect();
    for node in model.nodes_mut() {
        if sources.contains(&node.id) {
            continue;
        }
        for output in &mut node.outputs {
            if output.fact.shape.is_open() {
                continue;
            }
            let dims: TVec<DimFact> = output
                .fact
                .shape
                .dims()
                .map(|dim| match dim.concretize().map(|d| d.eval(values)) {
                    Some(d) if d.to_i64().is_ok() => DimFact::from(d),
                    _ => DimFact::default(),
                })
                .collect();
            output.fact.shape = ShapeFactoid::closed(dims);
        }
    }
}

/// Types `model` with its symbolic axes; on failure, the reason tract gives.
pub fn type_symbolically(model: &InferenceModel) -> Result<TypedModel, String> {
    model.clone().into_typed().map_err(|e| chain(&e))
}
