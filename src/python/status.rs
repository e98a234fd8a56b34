//! The Python side of operations: `get_status()` as a dict, and pickling a `Runtime` by its
//! saved bytes so it can be shipped to the workers of a distributed engine (Ray, Dask, …).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::runtime::PyRuntime;
use super::without_gil;
use crate::runtime::{LoadOptions, Runtime, SaveMode, Status};

/// `Status` as a plain dict (JSON-ready: numbers, bools, strings and `None`).
pub fn status_to_py<'py>(py: Python<'py>, s: &Status) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("cpu_usage", s.cpu_usage)?;
    d.set_item("memory_allocated_mb", s.memory_allocated_mb)?;
    d.set_item("rss_mb", s.rss_mb)?;
    d.set_item("inferences", s.inferences)?;
    d.set_item("latency_ms_p50", s.latency_ms_p50)?;
    d.set_item("latency_ms_p99", s.latency_ms_p99)?;
    d.set_item("quantized", s.quantized)?;
    d.set_item("version", s.version)?;
    d.set_item("threads", s.threads)?;
    d.set_item("max_threads", s.max_threads)?;
    d.set_item("throttled", s.throttled)?;
    d.set_item("cpu_limit", s.cpu_limit)?;
    d.set_item("cpu_budget", s.cpu_budget)?;
    d.set_item("other_cpu_usage", s.other_cpu_usage)?;
    d.set_item("load_average", s.load_average)?;
    d.set_item("isa", s.isa)?;
    d.set_item("plans_cached", s.plans_cached)?;
    d.set_item("max_plans", s.max_plans)?;
    d.set_item("plan_cache_mb", s.plan_cache_mb)?;
    Ok(d)
}

/// `(restore function, its arguments)` for `Runtime.__reduce__`.
pub fn reduce<'py>(py: Python<'py>, runtime: &Runtime) -> PyResult<Bound<'py, PyTuple>> {
    // A deployable runtime travels as its deployable file (it has nothing else to write).
    let mode = if runtime.deployable() { SaveMode::Deployable } else { SaveMode::Learnable };
    let bytes = without_gil(py, || runtime.to_bytes_as(mode))?;
    let options = runtime.options();
    let restore = py.import("jarvis_performance._native")?.getattr("_restore_runtime")?;
    // Every load option travels, so the copy refuses and accepts exactly what the original does.
    let args = (
        PyBytes::new(py, &bytes),
        runtime.model().source.clone(),
        options.threads,
        options.max_cpu_percent,
        options.max_memory_bytes,
        options.allow_non_finite,
        options.max_plans,
    );
    PyTuple::new(py, [restore, args.into_pyobject(py)?.into_any()])
}

/// Rebuilds a pickled `Runtime` (the target of `Runtime.__reduce__`). The arguments after `data`
/// and `source` have defaults so that pickles written before they existed still load.
#[pyfunction]
#[pyo3(signature = (data, source, threads = None, max_cpu_percent = None, max_memory_bytes = None, allow_non_finite = false, max_plans = None))]
#[allow(clippy::too_many_arguments)] // the pickled options, each a keyword with a default
pub fn _restore_runtime(
    py: Python<'_>,
    data: &[u8],
    source: String,
    threads: Option<usize>,
    max_cpu_percent: Option<f64>,
    max_memory_bytes: Option<u64>,
    allow_non_finite: bool,
    max_plans: Option<usize>,
) -> PyResult<PyRuntime> {
    let options =
        LoadOptions { threads, max_cpu_percent, max_memory_bytes, allow_non_finite, max_plans };
    let runtime = without_gil(py, move || Runtime::from_bytes(data, &source, &options))?;
    Ok(PyRuntime::new(runtime))
}
