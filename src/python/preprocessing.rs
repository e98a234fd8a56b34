//! Preprocessing stored with a model: `set_preprocessing` / `get_preprocessing` on ONNX files
//! (the `jarvis_performance.preprocess` metadata entry, see `crate::vision::stored`).

use std::path::PathBuf;

use pyo3::prelude::*;

use super::vision::VisionArgs;
use crate::vision::stored::{self, Stored};

/// The stored record as a Python dict (through `json.loads` of its JSON).
pub fn to_dict<'py>(py: Python<'py>, stored: &Stored) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (stored.to_json(),))
}

/// Stores preprocessing options in the ONNX file at `path`, rewriting it atomically; `None`
/// options are left out (a runtime then takes size and layout from the model input). With
/// every option `None`, removes the stored preprocessing.
#[pyfunction]
#[pyo3(
    signature = (path, *, size = None, mean = None, std = None, layout = None, resize = None, crop = None, keep_aspect = None, channels = None, pad = None, draft = None),
    text_signature = "(path, *, size=None, mean=None, std=None, layout=None, resize=None, crop=None, keep_aspect=None, channels=None, pad=None, draft=None)"
)]
#[allow(clippy::too_many_arguments)]
pub fn set_preprocessing<'py>(
    py: Python<'py>,
    path: PathBuf,
    size: Option<&Bound<'py, PyAny>>,
    mean: Option<&Bound<'py, PyAny>>,
    std: Option<&Bound<'py, PyAny>>,
    layout: Option<&str>,
    resize: Option<&str>,
    crop: Option<&str>,
    keep_aspect: Option<bool>,
    channels: Option<&str>,
    pad: Option<u8>,
    draft: Option<bool>,
) -> PyResult<()> {
    let args =
        VisionArgs { size, mean, std, layout, resize, crop, keep_aspect, channels, pad, draft };
    let record = args.to_stored()?;
    if record == Stored::default() {
        return super::without_gil(py, move || stored::write_file(&path, None));
    }
    // Every given option must be valid; size and layout may come from the model input.
    let json = record.to_json();
    Stored::parse(&json)?;
    super::without_gil(py, move || stored::write_file(&path, Some(&record)))
}

/// The preprocessing stored in the ONNX file at `path`, as a dict, or `None`.
#[pyfunction]
pub fn get_preprocessing(py: Python<'_>, path: PathBuf) -> PyResult<Option<Bound<'_, PyAny>>> {
    let proto =
        crate::files::decode_onnx(&crate::files::read(&path)?, &path.display().to_string())?;
    match stored::read(&proto) {
        Some(json) => Ok(Some(to_dict(py, &Stored::parse(json)?)?)),
        None => Ok(None),
    }
}
