//! Calibration data from Python: a NumPy array (split into batches along axis 0), an iterable of
//! arrays or of `{input name: array}` dicts (`jp.Dataset` is one), or an onnxruntime
//! `CalibrationDataReader` (anything with `get_next()`).

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tract_onnx::prelude::*;

use super::convert::tensor_from_py;
use crate::error::{Error, Result};
use crate::model::TensorSpec;

/// Samples per batch when an array is split.
const ARRAY_BATCH: usize = 16;

/// Where batches come from.
enum Origin {
    /// A whole array, already converted; batches are slices of it.
    Array { tensor: Tensor, next: usize },
    /// A Python iterator.
    Iterator(Py<PyAny>),
    /// An object with `get_next()` returning a dict or `None`.
    Reader(Py<PyAny>),
}

/// Pulls calibration batches from a Python object; safe to call with the GIL released (it
/// takes the GIL for each batch).
pub struct PySource {
    origin: Origin,
    inputs: Vec<TensorSpec>,
    /// A tqdm progress bar counting batches (absent if tqdm is not installed).
    progress: Option<Py<PyAny>>,
}

impl PySource {
    pub fn new(data: &Bound<'_, PyAny>, inputs: &[TensorSpec]) -> PyResult<Self> {
        let origin = if data.cast::<numpy::PyUntypedArray>().is_ok() {
            let spec = single_input(inputs)?;
            Origin::Array { tensor: tensor_from_py(data, spec)?, next: 0 }
        } else if data.hasattr("get_next")? {
            Origin::Reader(data.clone().unbind())
        } else {
            let iterator = data.try_iter().map_err(|_| {
                Error::Calibration(format!(
                    "calibration must be an array, an iterable of arrays or dicts, or a reader with get_next(); got {}",
                    data.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            Origin::Iterator(iterator.into_any().unbind())
        };
        let batches = match &origin {
            Origin::Array { tensor, .. } => {
                Some(tensor.shape().first().copied().unwrap_or(0).div_ceil(ARRAY_BATCH))
            }
            _ => data.len().ok(),
        };
        let progress = progress_bar(data.py(), batches);
        Ok(PySource { origin, inputs: inputs.to_vec(), progress })
    }

    /// The next batch, inputs in model order; `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Tensor>>> {
        let batch = self.take();
        if let Some(progress) = &self.progress {
            // Progress is cosmetic: a failing bar must not fail calibration.
            let _ = Python::attach(|py| {
                let bar = progress.bind(py);
                match &batch {
                    Ok(Some(_)) => bar.call_method1("update", (1,)).map(drop),
                    _ => bar.call_method0("close").map(drop),
                }
            });
        }
        batch
    }

    fn take(&mut self) -> Result<Option<Vec<Tensor>>> {
        if let Origin::Array { tensor, next } = &mut self.origin {
            let total = tensor.shape().first().copied().unwrap_or(0);
            if *next >= total {
                return Ok(None);
            }
            let end = (*next + ARRAY_BATCH).min(total);
            let batch =
                tensor.slice(0, *next, end).map_err(|e| Error::Calibration(format!("{e:#}")))?;
            *next = end;
            return Ok(Some(vec![batch]));
        }
        Python::attach(|py| self.pull(py))
            .map_err(|e| Error::Calibration(format!("reading calibration data: {e}")))
    }

    fn pull(&self, py: Python<'_>) -> PyResult<Option<Vec<Tensor>>> {
        let item = match &self.origin {
            Origin::Reader(reader) => reader.bind(py).call_method0("get_next")?,
            Origin::Iterator(iterator) => match iterator.bind(py).call_method0("__next__") {
                Ok(item) => item,
                Err(err) if err.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => {
                    return Ok(None)
                }
                Err(err) => return Err(err),
            },
            Origin::Array { .. } => return Ok(None),
        };
        if item.is_none() {
            return Ok(None);
        }
        self.to_inputs(&item).map(Some)
    }

    fn to_inputs(&self, item: &Bound<'_, PyAny>) -> PyResult<Vec<Tensor>> {
        let Ok(feed) = item.cast::<PyDict>() else {
            return Ok(vec![tensor_from_py(item, single_input(&self.inputs)?)?]);
        };
        self.inputs
            .iter()
            .map(|spec| match feed.get_item(&spec.name)? {
                Some(value) => tensor_from_py(&value, spec),
                None => Err(Error::Calibration(format!(
                    "a calibration batch lacks input {:?}",
                    spec.name
                ))
                .into()),
            })
            .collect()
    }
}

/// `tqdm.auto.tqdm(total=batches, desc="calibrating", unit="batch")`, if tqdm is installed.
fn progress_bar(py: Python<'_>, batches: Option<usize>) -> Option<Py<PyAny>> {
    let tqdm = py.import("tqdm.auto").ok()?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("total", batches).ok()?;
    kwargs.set_item("desc", "calibrating").ok()?;
    kwargs.set_item("unit", "batch").ok()?;
    kwargs.set_item("leave", false).ok()?;
    tqdm.call_method("tqdm", (), Some(&kwargs)).ok().map(Bound::unbind)
}

fn single_input(inputs: &[TensorSpec]) -> PyResult<&TensorSpec> {
    match inputs {
        [one] => Ok(one),
        _ => Err(Error::Calibration(format!(
            "the model has {} inputs: give calibration batches as dicts {{name: array}}",
            inputs.len()
        ))
        .into()),
    }
}
