//! jarvis-performance: an ONNX runtime built on tract, with its own INT8 calibration, quantization
//! and kernels, and a Python facade.
//!
//! The layers, from the bottom: `kernels` (u8×i8 SIMD loops, no tract; crate-private); [`model`] loads ONNX
//! through tract; [`plan`] holds the runnable plans; [`calibrate`] observes activation ranges;
//! [`ops`] are the int8 tract ops; [`quantize`] rewrites graphs with them, reports and saves;
//! [`monitor`] measures CPU, memory and latency and throttles CPU; [`runtime`] is what users hold; `python` (cargo feature `python`) is the PyO3 facade; [`cli`]
//! is the `jarvis-perf` command.

pub mod calibrate;
pub mod cli;
pub mod error;
// The kernels are the crate's own: only its ops call them (their `Isa` is what keeps a CPU
// from being handed instructions it lacks). `benches/int8.rs` times them through this feature.
#[cfg(feature = "bench-internals")]
pub mod kernels;
#[cfg(not(feature = "bench-internals"))]
pub(crate) mod kernels;
pub mod learn;
pub mod model;
pub mod monitor;
pub mod ops;
pub mod plan;
pub mod quantize;
pub mod runtime;
pub mod vision;

#[cfg(feature = "python")]
mod python;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use error::{Error, Result};
pub use model::{ElementType, ModelSummary, OnnxModel, TensorSpec};
pub use runtime::{LoadOptions, Runtime};
