//! jarvis-performance: an ONNX runtime built on tract, with its own INT8 calibration, quantization
//! and kernels, and a Python facade.
//!
//! The layers, from the bottom; each uses only those before it (`tests/layers.rs` checks it):
//! `kernels` (u8×i8 SIMD loops, no tract; crate-private); [`ops`], the int8 tract ops and their
//! data; [`model`] loads float ONNX through tract and binds a call's inputs; [`plan`] holds the
//! runnable plans; [`calibrate`] observes activation ranges; [`quantize`] rewrites graphs with
//! the int8 ops, reports, and reads and writes the saved int8 format (`quantize::qdq`);
//! [`learn`] keeps versions of the weights; [`runtime`] is what users hold; [`cli`] is the
//! `jarvis-perf` command and `python` (cargo feature `python`) the PyO3 facade. Leaves any
//! layer may use: [`error`], [`files`] (reads, atomic writes), [`vision`] (images in) and
//! [`monitor`] (CPU, memory, latency, the CPU throttle).

pub mod calibrate;
#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod files;
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
pub use runtime::{LoadOptions, Runtime, SaveMode};
