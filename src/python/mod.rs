//! The PyO3 facade (`jarvis_performance._native`). Only argument conversion, error mapping and
//! GIL handling live here; everything else is in the library.

mod calibration;
mod convert;
mod errors;
mod learning;
mod preprocessing;
mod runtime;
mod status;
mod vision;
mod vision_pool;

use pyo3::prelude::*;

use crate::error::Result;

/// Runs heavy work with the GIL released. Every long call from Python goes through here, so other
/// Python threads keep running; errors become the matching Python exceptions.
pub(crate) fn without_gil<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    // Library entry points already turn panics into `Error::Internal`; this catches any that
    // slip through (a bug), so Python gets `JarvisError`, never an abort or a PanicException.
    py.detach(|| crate::error::catch_panics("a native call", work)).map_err(PyErr::from)
}

/// Panics inside a native call, on purpose: lets the tests prove that a panic reaching the
/// Python boundary becomes `JarvisError` and the process lives on.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, message: String) -> PyResult<()> {
    without_gil(py, move || -> crate::error::Result<()> { panic!("{message}") })
}

/// Runs the `jarvis-perf` command line with `argv` (program name first); returns the exit code.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> u8 {
    py.detach(|| crate::cli::main(argv))
}

/// Sends the library's `log` records to Python's `logging` (logger `jarvis_performance` and
/// its children, named after the Rust modules); other crates' records from warnings up.
fn route_logs(py: Python<'_>) -> PyResult<()> {
    use log::LevelFilter;
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::Loggers)?
        .filter(LevelFilter::Warn)
        .filter_target("jarvis_performance".to_owned(), LevelFilter::Debug);
    // Fails only when a logger is already installed in this process (the module imported
    // twice, e.g. in a sub-interpreter): records go there, which is as good.
    let _ = logger.install();
    Ok(())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    route_logs(py)?;
    // Panics turned into `JarvisError` print nothing to stderr; their location is logged.
    crate::error::install_panic_hook();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<runtime::PyRuntime>()?;
    m.add_class::<runtime::PyTensorInfo>()?;
    m.add_class::<convert::TensorOwner>()?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(vision::preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(vision_pool::_vision_pool_idle_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(preprocessing::set_preprocessing, m)?)?;
    m.add_function(wrap_pyfunction!(preprocessing::get_preprocessing, m)?)?;
    m.add_class::<vision_pool::BatchBuffer>()?;
    m.add_function(wrap_pyfunction!(status::_restore_runtime, m)?)?;
    m.add("JarvisError", py.get_type::<errors::JarvisError>())?;
    m.add("ModelLoadError", py.get_type::<errors::ModelLoadError>())?;
    m.add("UnsupportedOpError", py.get_type::<errors::UnsupportedOpError>())?;
    m.add("InputError", py.get_type::<errors::InputError>())?;
    m.add("ConfigError", py.get_type::<errors::ConfigError>())?;
    m.add("UpdateError", py.get_type::<errors::UpdateError>())?;
    m.add("CalibrationError", py.get_type::<errors::CalibrationError>())?;
    m.add("ImageError", py.get_type::<errors::ImageError>())?;
    Ok(())
}
