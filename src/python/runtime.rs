//! The Python `Runtime` class and `TensorInfo`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use super::calibration::PySource;
use super::convert::{tensor_from_py, tensor_to_py};
use super::learning::{deltas_from_py, inputs_from_py, labels_from_py, step_to_py};
use super::status::{reduce, status_to_py};
use super::vision::{with_images, OutDtype, VisionArgs};
use super::without_gil;
use crate::calibrate::Method;
use crate::error::Error;
use crate::model::TensorSpec;
use crate::quantize::qdq::SavedModel;
use crate::quantize::QuantizeOptions;
use crate::runtime::{LoadOptions, Runtime, SaveMode};

/// Name, shape and dtype of one model input or output.
#[pyclass(frozen, module = "jarvis_performance._native", name = "TensorInfo")]
pub struct PyTensorInfo(TensorSpec);

#[pymethods]
impl PyTensorInfo {
    /// The ONNX tensor name.
    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }

    /// The shape, with `None` for dynamic axes.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.0.shape.iter().copied())
    }

    /// The NumPy dtype name (`"float32"`, `"int64"`, `"bool"`, …).
    #[getter]
    fn dtype(&self) -> String {
        self.0.type_name()
    }

    fn __repr__(&self) -> String {
        let dims: Vec<String> = self
            .0
            .shape
            .iter()
            .map(|d| d.map_or_else(|| "None".to_string(), |n| n.to_string()))
            .collect();
        let shape = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        format!("TensorInfo(name={:?}, shape={shape}, dtype={:?})", self.0.name, self.0.type_name())
    }
}

/// A loaded ONNX model ready for inference. Thread-safe: call it from any number of threads.
#[pyclass(frozen, module = "jarvis_performance._native", name = "Runtime")]
pub struct PyRuntime {
    inner: Arc<Runtime>,
}

#[pymethods]
impl PyRuntime {
    /// Loads an ONNX file; `threads` defaults to `JARVIS_PERF_THREADS`, else every core. With
    /// `quantize="int8"`, calibrates on `calibration` and runs Conv/Gemm/MatMul layers in int8.
    /// `max_memory_mb` refuses calls whose tensors would need more memory, before allocating;
    /// NaN/Inf in float inputs raise `InputError` unless `allow_non_finite`. `max_cpu_percent`
    /// caps this process's CPU while inference runs (100 = one core). `max_plans` bounds the
    /// cache of plans specialised per input signature (default 8, least recently used first).
    #[staticmethod]
    #[pyo3(
        signature = (path, *, threads = None, quantize = None, calibration = None, method = None, per_channel = true, exclude = Vec::new(), speed_fallback = true, max_memory_mb = None, allow_non_finite = false, max_cpu_percent = None, max_plans = None),
        text_signature = "(path, *, threads=None, quantize=None, calibration=None, method=None, per_channel=True, exclude=(), speed_fallback=True, max_memory_mb=None, allow_non_finite=False, max_cpu_percent=None, max_plans=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        threads: Option<usize>,
        quantize: Option<String>,
        calibration: Option<Bound<'_, PyAny>>,
        method: Option<String>,
        per_channel: bool,
        exclude: Vec<String>,
        speed_fallback: bool,
        max_memory_mb: Option<f64>,
        allow_non_finite: bool,
        max_cpu_percent: Option<f64>,
        max_plans: Option<usize>,
    ) -> PyResult<Self> {
        let max_memory_bytes = memory_limit(max_memory_mb)?;
        let options =
            LoadOptions { threads, max_memory_bytes, allow_non_finite, max_cpu_percent, max_plans };
        let runtime = match quantize.as_deref() {
            None => {
                if calibration.is_some() || method.is_some() {
                    return Err(
                        Error::config("calibration", "given without quantize=\"int8\"").into()
                    );
                }
                without_gil(py, move || Runtime::load(&path, &options))?
            }
            Some("int8") => {
                let Some(calibration) = calibration else {
                    return Err(Error::Calibration(
                        "quantize=\"int8\" needs calibration data".into(),
                    )
                    .into());
                };
                let method = match method.as_deref() {
                    None => Method::DEFAULT,
                    Some(text) => text.parse().map_err(|e: String| Error::config("method", e))?,
                };
                let quantize = QuantizeOptions { method, per_channel, exclude, speed_fallback };
                let model = without_gil(py, move || SavedModel::load(&path)?.float_model())?;
                let mut source = PySource::new(&calibration, &model.inputs)?;
                without_gil(py, move || {
                    Runtime::from_model_quantized(model, &options, &quantize, &mut || {
                        source.next_batch()
                    })
                })?
            }
            Some(other) => {
                return Err(
                    Error::config("quantize", format!("{other:?}: use None or \"int8\"")).into()
                );
            }
        };
        Ok(PyRuntime::new(runtime))
    }

    /// Makes a runtime from the bytes `to_bytes` (or a file `save`) produced; an int8
    /// runtime's bytes rebuild the same int8 plan without calibration data. `source` names the
    /// model in messages and logs; the other options are those of `load`.
    #[staticmethod]
    #[pyo3(signature = (data, *, source = None, threads = None, max_cpu_percent = None, max_memory_mb = None, allow_non_finite = false, max_plans = None))]
    #[allow(clippy::too_many_arguments)] // Python keyword options, as in `load`
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        source: Option<String>,
        threads: Option<usize>,
        max_cpu_percent: Option<f64>,
        max_memory_mb: Option<f64>,
        allow_non_finite: bool,
        max_plans: Option<usize>,
    ) -> PyResult<Self> {
        let max_memory_bytes = memory_limit(max_memory_mb)?;
        let options =
            LoadOptions { threads, max_cpu_percent, max_memory_bytes, allow_non_finite, max_plans };
        let source = source.unwrap_or_else(|| "<bytes>".to_string());
        let runtime = without_gil(py, move || Runtime::from_bytes(data, &source, &options))?;
        Ok(PyRuntime::new(runtime))
    }

    /// The model as ONNX bytes: what `save` writes (`learnable` as there).
    #[pyo3(signature = (*, learnable = true))]
    fn to_bytes<'py>(&self, py: Python<'py>, learnable: bool) -> PyResult<Bound<'py, PyBytes>> {
        let runtime = Arc::clone(&self.inner);
        let bytes = without_gil(py, move || runtime.to_bytes_as(save_mode(learnable)))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Pickles by the saved bytes (current weights and version, int8 parameters) and every load
    /// option (threads, CPU cap, memory limit, `allow_non_finite`): the copy runs, refuses and
    /// accepts like the original, in another process.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        reduce(py, &self.inner)
    }

    /// Measured figures: `cpu_usage` (this process, percent of one core, last ~2 s),
    /// `memory_allocated_mb`, `rss_mb`, `inferences`, `latency_ms_p50`/`p99` (last 1,024
    /// calls), `quantized`, `version`, `threads`, `max_threads`, `throttled`, `cpu_limit`,
    /// `cpu_budget`, `other_cpu_usage`, `load_average`, `isa`.
    fn get_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let runtime = Arc::clone(&self.inner);
        let status = py.detach(move || runtime.status());
        status_to_py(py, &status)
    }

    /// Caps this process's CPU at `percent` of one core while inference runs (fewer threads,
    /// then pauses before calls; less when other processes keep the machine busy); `None`
    /// removes the cap.
    fn set_cpu_limit(&self, percent: Option<f64>) -> PyResult<()> {
        Ok(self.inner.set_cpu_limit(percent)?)
    }

    /// The CPU cap in percent of one core, or `None`.
    #[getter]
    fn cpu_limit(&self) -> Option<f64> {
        self.inner.cpu_limit()
    }

    /// Writes the model to `path` atomically. An int8 runtime is written as standard ONNX in
    /// QDQ form that onnxruntime runs; `Runtime.load` reloads it without calibration data to the
    /// same outputs bit for bit. `learnable=False` leaves out the float master weights and
    /// calibration statistics: a deployable file about a quarter of the float one, which cannot
    /// be updated. A float runtime writes its float model.
    #[pyo3(signature = (path, *, learnable = true))]
    fn save(&self, py: Python<'_>, path: PathBuf, learnable: bool) -> PyResult<()> {
        let runtime = Arc::clone(&self.inner);
        without_gil(py, move || runtime.save_as(&path, save_mode(learnable)))
    }

    /// Whether `update`, `learn` and `recalibrate` can change this runtime: false for one
    /// loaded from a deployable file (`save(path, learnable=False)`).
    #[getter]
    fn learnable(&self) -> bool {
        !self.inner.deployable()
    }

    /// Adds `scale * delta` to each named float weight (`{ONNX initializer name: array}`, the
    /// `state_dict` keys of an exported PyTorch model) and returns the new version. All deltas
    /// apply at once; inference in other threads goes on and each call sees one version.
    #[pyo3(signature = (deltas, *, scale = 1.0))]
    fn update(&self, py: Python<'_>, deltas: &Bound<'_, PyDict>, scale: f32) -> PyResult<u64> {
        let deltas = deltas_from_py(deltas)?;
        let runtime = Arc::clone(&self.inner);
        without_gil(py, move || runtime.update(&deltas, scale).map(|o| o.version))
    }

    /// One step of softmax cross-entropy gradient descent on a linear layer (default: the
    /// model's last), from the features the model computes for `x`, against integer `labels`.
    /// Returns `{"version", "layer", "weight", "loss", "accuracy"}` (loss and accuracy of the
    /// batch before the step).
    #[pyo3(signature = (x, labels, *, lr = 0.01, layer = None))]
    fn learn<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        lr: f32,
        layer: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inputs = inputs_from_py(&self.inner, x)?;
        let labels = labels_from_py(labels)?;
        let runtime = Arc::clone(&self.inner);
        let step = without_gil(py, move || runtime.learn(inputs, &labels, lr, layer.as_deref()))?;
        step_to_py(py, &step)
    }

    /// Calibrates again on `calibration` (same forms as `load`) with the current weights, as a
    /// new version: fresh activation ranges after updates moved them. `method` defaults to the
    /// one used so far. Returns the new version.
    #[pyo3(signature = (calibration, *, method = None))]
    fn recalibrate(
        &self,
        py: Python<'_>,
        calibration: &Bound<'_, PyAny>,
        method: Option<String>,
    ) -> PyResult<u64> {
        let method = match method.as_deref() {
            None => None,
            Some(text) => Some(text.parse().map_err(|e: String| Error::config("method", e))?),
        };
        let mut source = PySource::new(calibration, self.inner.inputs())?;
        let runtime = Arc::clone(&self.inner);
        without_gil(py, move || runtime.recalibrate(&mut || source.next_batch(), method))
    }

    /// Returns to `version` (default: the previous one); its outputs come back bit for bit.
    /// Later versions are dropped from the history. Returns the version now current.
    #[pyo3(signature = (version = None))]
    fn rollback(&self, py: Python<'_>, version: Option<u64>) -> PyResult<u64> {
        let runtime = Arc::clone(&self.inner);
        without_gil(py, move || runtime.rollback(version))
    }

    /// The version of the weights inference runs on (0 when loaded, unless the file was saved
    /// after updates).
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    /// The versions `rollback` can return to, oldest first, the current one last.
    #[getter]
    fn versions(&self) -> Vec<u64> {
        self.inner.versions()
    }

    /// Keeps at most `versions` versions (the current one included) for rollback; default 8.
    fn set_history(&self, versions: usize) -> PyResult<()> {
        Ok(self.inner.set_history(versions)?)
    }

    /// Names of the float weights `update` accepts, sorted.
    #[getter]
    fn weight_names(&self) -> Vec<String> {
        self.inner.weight_names()
    }

    /// A float32 copy of the current value of weight `name`.
    fn weights<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let tensor = self.inner.weights(name)?;
        tensor_to_py(py, name, tensor)
    }

    /// Whether the model runs with int8 layers.
    #[getter]
    fn quantized(&self) -> bool {
        self.inner.quantized()
    }

    /// Per Conv/Gemm/MatMul layer: `name`, `kind`, `int8`, `reason` (why it stayed float),
    /// `sqnr_db` and `cosine` of its output against the float model on calibration data,
    /// `input` (`per-tensor`, `per-row` or `per-channel lattice`), `bias_corrected` and
    /// `rounding` (`data-aware` or `nearest`); int8 layers worst first, then float ones (a layer
    /// whose int8 op measured slower than float says so in `reason`). Empty for a float
    /// runtime.
    fn quantization_report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let quantization = self.inner.quantization();
        let rows = quantization.as_ref().map(|q| q.report.as_slice()).unwrap_or_default();
        let dicts = rows
            .iter()
            .map(|row| {
                let d = PyDict::new(py);
                d.set_item("name", &row.name)?;
                d.set_item("kind", &row.kind)?;
                d.set_item("int8", row.int8)?;
                d.set_item("reason", &row.reason)?;
                d.set_item("sqnr_db", row.sqnr_db)?;
                d.set_item("cosine", row.cosine)?;
                d.set_item("input", &row.input)?;
                d.set_item("bias_corrected", row.bias_corrected)?;
                d.set_item("rounding", &row.rounding)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, dicts)
    }

    /// Calibration and weight-memory figures of a quantized runtime (`None` for float):
    /// `method`, `batches`, `samples`, `calibration_bytes` (the fixed bound on observer
    /// memory), `float_weight_bytes`, `int8_weight_bytes`, `linked_outputs` (int8 layer outputs
    /// handed to the next int8 layers, or to a max pool before them, as u8 codes).
    fn quantization_summary<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(q) = self.inner.quantization() else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("method", q.options.method.to_string())?;
        d.set_item("per_channel", q.options.per_channel)?;
        d.set_item("batches", q.batches)?;
        d.set_item("samples", q.samples)?;
        d.set_item("calibration_bytes", q.calibration_bytes)?;
        d.set_item("float_weight_bytes", q.float_weight_bytes)?;
        d.set_item("int8_weight_bytes", q.int8_weight_bytes)?;
        d.set_item("linked_outputs", q.linked_outputs)?;
        Ok(Some(d))
    }

    /// Runs the model. An array feeds the only input and the first output comes back; a dict
    /// `{input name: array}` feeds inputs by name and every output comes back as a dict.
    fn infer<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(feed) = x.cast::<PyDict>() {
            let outputs = self.run_feed(py, feed, None)?;
            let result = PyDict::new(py);
            for (name, tensor) in outputs {
                let array = tensor_to_py(py, &name, tensor)?;
                result.set_item(name, array)?;
            }
            return Ok(result.into_any());
        }
        let inputs = self.inner.inputs();
        if inputs.len() != 1 {
            let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::input(
                names.join(", "),
                format!("the model takes {} inputs; pass a dict {{name: array}}", names.len()),
            )
            .into());
        }
        let tensor = tensor_from_py(x, &inputs[0])?;
        let runtime = Arc::clone(&self.inner);
        let mut outputs = without_gil(py, move || runtime.run(vec![tensor]))?;
        let first = outputs.swap_remove(0);
        tensor_to_py(py, &self.inner.outputs()[0].name, first)
    }

    /// onnxruntime-style: `run(output_names or None, {input name: array})` → list of arrays.
    #[pyo3(signature = (output_names, input_feed))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        output_names: Option<Vec<String>>,
        input_feed: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        let outputs = self.run_feed(py, input_feed, output_names)?;
        let arrays = outputs
            .into_iter()
            .map(|(name, tensor)| tensor_to_py(py, &name, tensor))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, arrays)
    }

    /// The model's inputs.
    #[getter]
    fn inputs(&self) -> Vec<PyTensorInfo> {
        self.inner.inputs().iter().cloned().map(PyTensorInfo).collect()
    }

    /// The model's outputs.
    #[getter]
    fn outputs(&self) -> Vec<PyTensorInfo> {
        self.inner.outputs().iter().cloned().map(PyTensorInfo).collect()
    }

    /// The memory limit per call in MB (10^6 bytes) given at load, or `None`.
    #[getter]
    fn max_memory_mb(&self) -> Option<f64> {
        self.inner.options().max_memory_bytes.map(|bytes| bytes as f64 / 1e6)
    }

    /// Whether NaN and ±Inf are let into float inputs (`allow_non_finite` at load).
    #[getter]
    fn allow_non_finite(&self) -> bool {
        self.inner.options().allow_non_finite
    }

    /// Threads used inside operators.
    #[getter]
    fn threads(&self) -> usize {
        self.inner.threads()
    }

    /// Preprocesses `images` as `preprocess` does, straight into the model's only input, and
    /// runs the model; returns the first output. `size` and `layout` default to the model's
    /// input shape.
    #[pyo3(
        signature = (images, *, mean = None, std = None, size = None, layout = None, resize = None, crop = None, keep_aspect = None, channels = None, dtype = None, pad = None, draft = None),
        text_signature = "(self, images, *, mean=None, std=None, size=None, layout=None, resize=None, crop=None, keep_aspect=None, channels=None, dtype=None, pad=None, draft=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn infer_images<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        mean: Option<&Bound<'py, PyAny>>,
        std: Option<&Bound<'py, PyAny>>,
        size: Option<&Bound<'py, PyAny>>,
        layout: Option<&str>,
        resize: Option<&str>,
        crop: Option<&str>,
        keep_aspect: Option<bool>,
        channels: Option<&str>,
        dtype: Option<&Bound<'py, PyAny>>,
        pad: Option<u8>,
        draft: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args =
            VisionArgs { size, mean, std, layout, resize, crop, keep_aspect, channels, pad, draft };
        let inputs = self.inner.inputs();
        // The model input's type decides the batch's; `dtype`, if given, must agree.
        let model_dtype = match inputs {
            [spec] => OutDtype::of_element(spec.element_type),
            _ => None,
        };
        let out_dtype = match dtype {
            Some(dtype) => {
                let wanted = OutDtype::parse(py, dtype)?;
                if let (Some(model), [spec]) = (model_dtype, inputs) {
                    if model != wanted {
                        let reason = format!("takes {}, not {}", model.name(), wanted.name());
                        return Err(Error::input(&spec.name, reason).into());
                    }
                }
                wanted
            }
            None => model_dtype.unwrap_or(OutDtype::F32),
        };
        let stored = self.inner.stored_preprocessing()?;
        let options = args.options(self.inner.image_geometry(), stored.as_ref(), out_dtype)?;
        let runtime = Arc::clone(&self.inner);
        let mut outputs = with_images(py, images, |sources| runtime.run_images(sources, &options))?;
        tensor_to_py(py, &self.inner.outputs()[0].name, outputs.swap_remove(0))
    }

    /// The preprocessing stored with the model (`set_preprocessing`), as a dict, or `None`.
    #[getter]
    fn preprocessing<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let stored = self.inner.stored_preprocessing()?;
        stored.map(|s| super::preprocessing::to_dict(py, &s)).transpose()
    }

    fn __repr__(&self) -> String {
        let precision = if self.inner.quantized() { "int8" } else { "float32" };
        format!(
            "Runtime({:?}, {precision}, threads={})",
            self.inner.model().source,
            self.inner.threads()
        )
    }
}

impl PyRuntime {
    pub(super) fn new(runtime: Runtime) -> Self {
        PyRuntime { inner: Arc::new(runtime) }
    }

    fn run_feed(
        &self,
        py: Python<'_>,
        feed: &Bound<'_, PyDict>,
        output_names: Option<Vec<String>>,
    ) -> PyResult<Vec<(String, tract_onnx::prelude::Tensor)>> {
        let mut tensors = Vec::with_capacity(feed.len());
        for (key, value) in feed.iter() {
            let name: String = key
                .extract()
                .map_err(|_| Error::input(key.to_string(), "input names must be strings"))?;
            let Some(spec) = self.inner.inputs().iter().find(|s| s.name == name) else {
                let names: Vec<&str> =
                    self.inner.inputs().iter().map(|s| s.name.as_str()).collect();
                return Err(Error::input(
                    name,
                    format!("the model has no such input; its inputs are {}", names.join(", ")),
                )
                .into());
            };
            tensors.push((name, tensor_from_py(&value, spec)?));
        }
        let runtime = Arc::clone(&self.inner);
        without_gil(py, move || runtime.run_named(tensors, output_names.as_deref()))
    }
}

/// `max_memory_mb` as bytes, refused with `ConfigError` unless a positive finite number.
fn memory_limit(max_memory_mb: Option<f64>) -> PyResult<Option<u64>> {
    match max_memory_mb {
        None => Ok(None),
        Some(mb) if mb.is_finite() && mb > 0.0 => Ok(Some((mb * 1e6) as u64)),
        Some(_) => Err(Error::config("max_memory_mb", "must be a positive number").into()),
    }
}

fn save_mode(learnable: bool) -> SaveMode {
    if learnable {
        SaveMode::Learnable
    } else {
        SaveMode::Deployable
    }
}
