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

/// Most elements of an integer input whose values specialise a graph typed per signature
/// (axes, sizes, a sample rate, a target shape: what `Resize`, `Reshape`, `Slice` and `If`
/// need as constants).
pub const MAX_VALUE_ELEMENTS: usize = 16;

/// Most elements of a float input whose values specialise such a graph (scales, pad values):
/// fewer than for integers, as small float inputs are more often data.
pub const MAX_FLOAT_VALUE_ELEMENTS: usize = 4;

/// The concrete inputs of one call, as far as they shape the plan: every input's shape, and the
/// values of the inputs whose values specialise the graph (`None` for the others).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<Option<Vec<i64>>>,
}

impl Signature {
    /// The signature of `inputs`; the value of input `i` counts when `by_value[i]`.
    pub fn of(inputs: &[Tensor], by_value: &[bool]) -> Signature {
        let shapes = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let values = inputs
            .iter()
            .enumerate()
            .map(|(ix, t)| {
                let counts =
                    by_value.get(ix).copied().unwrap_or(false) && t.len() <= MAX_VALUE_ELEMENTS;
                counts.then(|| integer_values(t)).flatten()
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
                    Some(v) => format!("{name}={dims} (values {v:?})"),
                    None => format!("{name}={dims}"),
                }
            })
            .collect();
        parts.join(", ")
    }
}

/// The values of a small tensor as i64: integers and booleans as they are, floats by the bits
/// of their f64 value (exact for f16, f32 and f64), so a signature compares them bit for bit.
fn integer_values(tensor: &Tensor) -> Option<Vec<i64>> {
    if tensor.datum_type().is_float() {
        let values = tensor.cast_to_dt(DatumType::F64).ok()?;
        let view = values.to_plain_array_view::<f64>().ok()?;
        return Some(view.iter().map(|v| v.to_bits() as i64).collect());
    }
    let values = tensor.cast_to_dt(DatumType::I64).ok()?;
    Some(values.to_plain_array_view::<i64>().ok()?.iter().copied().collect())
}

/// The tensor `integer_values` read, of type `dt` and `shape`.
fn tensor_of_values(values: &[i64], dt: DatumType, shape: &[usize]) -> TractResult<Tensor> {
    let wide = if dt.is_float() {
        tensor1(&values.iter().map(|&bits| f64::from_bits(bits as u64)).collect::<Vec<_>>())
    } else {
        tensor1(values)
    };
    wide.cast_to_dt(dt)?.into_owned().into_shape(shape)
}

/// Whether a declared input is one whose values should specialise the graph: a scalar or vector
/// of a fixed shape with at most [`MAX_VALUE_ELEMENTS`] elements (integers: a sample rate, axes, a
/// target size) or [`MAX_FLOAT_VALUE_ELEMENTS`] (floats: scales, a pad value), which `If`,
/// `Resize`, `Reshape`, `Slice`, `Pad` and `QuantizeLinear` need as constants to be typed.
pub fn specialises_by_value(fact: &InferenceFact) -> bool {
    let Some(dt) = fact.datum_type.concretize() else { return false };
    let limit = if dt.is_integer() || dt == DatumType::Bool {
        MAX_VALUE_ELEMENTS
    } else if dt.is_float() {
        MAX_FLOAT_VALUE_ELEMENTS
    } else {
        return false;
    };
    // Scalars and vectors only: parameters (axes, sizes, scales) are; data rarely is.
    if fact.shape.is_open() || fact.shape.dims().count() > 1 {
        return false;
    }
    let dims: Option<Vec<i64>> =
        fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_i64().ok())).collect();
    dims.is_some_and(|dims| dims.iter().product::<i64>() <= limit as i64)
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

/// The graph typed and decluttered for one signature, each input with a value in the signature
/// replaced by that constant (so conditions on it fold). Every axis is fixed but a leading
/// (batch) axis the file declares symbolic, which stays symbolic where the graph still types
/// that way: decluttering a batch of one would fold the batch axis away, and the int8 rewrite
/// recognises convolutions by their batch axis. [`bind_symbols`] then fixes it.
pub fn specialise(model: &InferenceModel, signature: &Signature) -> TractResult<TypedModel> {
    specialise_keeping(model, signature, true)
        .or_else(|_| specialise_keeping(model, signature, false))
}

/// `typed` with its remaining symbols (a batch axis [`specialise`] kept) set from the concrete
/// input shapes of `signature`.
pub fn bind_symbols(typed: TypedModel, signature: &Signature) -> TractResult<TypedModel> {
    let mut subs = std::collections::HashMap::new();
    for (ix, outlet) in typed.input_outlets()?.iter().enumerate() {
        let fact = typed.outlet_fact(*outlet)?;
        let Some(shape) = signature.shapes.get(ix) else { continue };
        for (dim, &size) in fact.shape.iter().zip(shape) {
            if let TDim::Sym(symbol) = dim {
                subs.insert(symbol.clone(), TDim::Val(size as i64));
            }
        }
    }
    if subs.is_empty() {
        return Ok(typed);
    }
    typed.set_symbols(&subs)
}

fn specialise_keeping(
    model: &InferenceModel,
    signature: &Signature,
    keep_batch: bool,
) -> TractResult<TypedModel> {
    let mut model = model.clone();
    let mut values = SymbolValues::default();
    for (ix, (shape, value)) in signature.shapes.iter().zip(&signature.values).enumerate() {
        let declared = model.input_fact(ix)?.clone();
        let mut dims: TVec<TDim> = shape.iter().map(|&d| TDim::Val(d as i64)).collect();
        for (axis, (dim, &size)) in declared.shape.dims().zip(shape).enumerate() {
            if let Some(TDim::Sym(symbol)) = dim.concretize() {
                if keep_batch && axis == 0 && value.is_none() && shape.len() > 1 {
                    dims[0] = TDim::Sym(symbol);
                } else {
                    values = values.with(&symbol, size as i64);
                }
            }
        }
        let dt = declared
            .datum_type
            .concretize()
            .ok_or_else(|| TractError::msg(format!("input {ix} declares no element type")))?;
        model.set_input_fact(ix, InferenceFact::dt_shape(dt, ShapeFactoid::from(dims)))?;
        if let Some(values) = value {
            let constant = tensor_of_values(values, dt, shape)?;
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
                    Some(d) if d.to_i64().is_ok() || matches!(d, TDim::Sym(_)) => DimFact::from(d),
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
