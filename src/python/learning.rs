//! Argument conversion for the continuous-learning methods of the Python `Runtime`.

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tract_onnx::prelude::*;

use super::convert::{copy_in, tensor_from_py};
use crate::error::Error;
use crate::runtime::{LearnStep, Runtime};

/// `{weight name: delta}` as float32 tensors. Arrays must already be float32 (a float64 delta
/// is refused rather than silently rounded); other objects go through `numpy.asarray`.
pub fn deltas_from_py(deltas: &Bound<'_, PyDict>) -> PyResult<Vec<(String, Tensor)>> {
    let py = deltas.py();
    let numpy = py.import("numpy")?;
    let mut out = Vec::with_capacity(deltas.len());
    for (key, value) in deltas.iter() {
        let name: String = key
            .extract()
            .map_err(|_| Error::Update(format!("weight names must be strings, got {key}")))?;
        let array = match value.cast::<PyUntypedArray>() {
            Ok(array) => array.clone(),
            Err(_) => numpy
                .call_method1("asarray", (&value, "float32"))
                .and_then(|a| Ok(a.cast_into::<PyUntypedArray>()?))
                .map_err(|e| Error::Update(format!("{name}: cannot convert the delta: {e}")))?,
        };
        let Ok(typed) = array.cast::<PyArrayDyn<f32>>() else {
            let dtype = array.dtype().to_string();
            return Err(Error::Update(format!(
                "{name}: delta is {dtype}; weights are float32 (use .astype(numpy.float32))"
            ))
            .into());
        };
        let tensor = copy_in::<f32>(typed.as_untyped())?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// The model's inputs, in model order, from one array (single-input models) or a dict.
pub fn inputs_from_py(runtime: &Runtime, x: &Bound<'_, PyAny>) -> PyResult<Vec<Tensor>> {
    let specs = runtime.inputs();
    if let Ok(feed) = x.cast::<PyDict>() {
        return specs
            .iter()
            .map(|spec| {
                let value = feed
                    .get_item(&spec.name)?
                    .ok_or_else(|| Error::input(&spec.name, "missing from the feed"))?;
                tensor_from_py(&value, spec)
            })
            .collect();
    }
    match specs {
        [only] => Ok(vec![tensor_from_py(x, only)?]),
        _ => Err(Error::input(
            specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            "the model takes several inputs; pass a dict {name: array}",
        )
        .into()),
    }
}

/// Class labels as int64 (any integer array or sequence; floats are refused).
pub fn labels_from_py(labels: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let numpy = labels.py().import("numpy")?;
    let array = numpy.call_method1("asarray", (labels,))?;
    let kind: String = array.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "i" | "u") {
        let dtype = array.getattr("dtype")?.to_string();
        return Err(Error::Update(format!("labels must be integers, got dtype {dtype}")).into());
    }
    let flat = array.call_method1("astype", ("int64",))?.call_method0("ravel")?;
    let typed = flat.cast_into::<PyArrayDyn<i64>>()?;
    let readonly = typed.try_readonly()?;
    Ok(readonly.as_array().iter().copied().collect())
}

/// A learning step as a dict: `version`, `layer`, `weight`, `loss`, `accuracy`.
pub fn step_to_py<'py>(py: Python<'py>, step: &LearnStep) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", step.version)?;
    d.set_item("layer", &step.layer)?;
    d.set_item("weight", &step.weight)?;
    d.set_item("loss", step.loss)?;
    d.set_item("accuracy", step.accuracy)?;
    Ok(d)
}
