//! jarvis-performance: an ONNX runtime built on tract, with an INT8 backend (coming), live weight
//! updates and a Python facade.
//!
//! The layers, from the bottom: [`model`] loads ONNX through tract; [`runtime`] owns the plan users
//! run; `python` (cargo feature `python`) is the PyO3 facade; [`cli`] is the `jarvis-perf` command.

pub mod calibrate;
pub mod cli;
pub mod error;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod plan;
pub mod quantize;
pub mod runtime;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
pub use model::{ElementType, ModelSummary, OnnxModel, TensorSpec};
pub use runtime::{LoadOptions, Runtime};
