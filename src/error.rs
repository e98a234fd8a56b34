//! The library's one error type. Every fallible public function returns [`Result`]; the Python
//! bindings map each variant to one exception class in `src/python/errors.rs`.

use std::path::PathBuf;

/// Everything that can go wrong in jarvis-performance, by cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file does not exist.
    #[error("model file not found: {}", .0.display())]
    FileNotFound(PathBuf),

    /// Reading or writing a file failed for another reason (permissions, disk, …).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a valid ONNX model, or tract cannot analyse its graph.
    #[error("cannot load model {path}: {reason}")]
    ModelLoad { path: String, reason: String },

    /// The graph uses an operator tract does not implement.
    #[error("unsupported operator {op_type} at node {node:?}{}", hint(.reason))]
    UnsupportedOp { node: String, op_type: String, reason: String },

    /// A caller-supplied input is wrong: unknown name, missing, wrong dtype, rank or shape.
    #[error("input {name:?}: {reason}")]
    Input { name: String, reason: String },

    /// A requested output name does not exist.
    #[error("output {name:?}: {reason}")]
    Output { name: String, reason: String },

    /// An option passed to the runtime is invalid (thread count, batch size, …).
    #[error("invalid option {option}: {reason}")]
    Config { option: String, reason: String },

    /// Calibration data is missing, malformed, or the calibration run failed.
    #[error("calibration: {0}")]
    Calibration(String),

    /// A weight update (or rollback, or learning step) was refused; the model is unchanged.
    #[error("update refused: {0}")]
    Update(String),

    /// The model could not be written.
    #[error("cannot save: {0}")]
    Save(String),

    /// An image could not be read, decoded or converted; `index` is its position in the batch,
    /// `origin` names it (the path, or what kind of object it was).
    #[error("image {index} ({origin}): {reason}")]
    Image { index: usize, origin: String, reason: String },

    /// tract failed while running the plan on inputs that passed validation.
    #[error("inference failed: {0}")]
    Inference(String),

    /// A bug: a panic caught at the library boundary. Please report it.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

fn hint(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl Error {
    pub(crate) fn input(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Input { name: name.into(), reason: reason.into() }
    }

    pub fn config(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config { option: option.into(), reason: reason.into() }
    }
}

/// Formats a tract (anyhow) error with its whole context chain on one line.
pub(crate) fn chain(err: &tract_onnx::prelude::TractError) -> String {
    format!("{err:#}")
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Like [`catch_panics`] for work on a model being loaded: tract panics on some malformed graphs
/// (found by fuzzing: a Conv whose kernel rank differs from its input's), so a panic there is
/// reported as the file's fault, `ModelLoad`, naming the file.
pub(crate) fn catch_load_panics<T>(path: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_panics("analysing the model", f).map_err(|e| match e {
        Error::Internal(reason) => Error::ModelLoad {
            path: path.to_string(),
            reason: format!("{reason} (the graph is probably malformed)"),
        },
        other => other,
    })
}

/// Runs `f`, turning a panic inside it (a bug in tract or here) into [`Error::Internal`] so that
/// no caller, and no Python process, is ever taken down by one.
pub(crate) fn catch_panics<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::Internal(format!("{what} panicked: {message}")))
        }
    }
}
