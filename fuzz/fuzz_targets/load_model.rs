//! Arbitrary bytes as an ONNX model: loading must return a model or an error — never panic,
//! abort or hang — and a model that loads must run on small inputs or refuse them cleanly.
#![no_main]

use jarvis_performance::error::Error;
use jarvis_performance::runtime::{LoadOptions, Runtime};
use libfuzzer_sys::fuzz_target;
use tract_onnx::prelude::*;

/// libfuzzer-sys aborts on every panic, even one the library catches and turns into an error
/// (tract panics on some malformed graphs; loading reports those as `ModelLoad`). Keep quiet
/// hooks instead and abort only on what the library could not handle.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|data: &[u8]| {
    quiet_panics();
    let options = LoadOptions {
        threads: Some(1),
        max_memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    // Through the saved-format reader too: arbitrary bytes may claim to be a saved int8 file.
    let runtime = match Runtime::from_bytes(data, "fuzz", &options) {
        Ok(runtime) => runtime,
        Err(Error::Internal(message)) => { eprintln!("caught panic while loading: {message}"); std::process::abort() },
        Err(_) => return,
    };
    // Inputs of the declared type, dynamic axes 1, nothing bigger than 1M elements.
    let inputs: Option<Vec<Tensor>> = runtime
        .inputs()
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec.shape.iter().map(|d| d.unwrap_or(1)).collect();
            let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            (elements <= 1 << 20).then(|| Tensor::zero_dt(spec.datum_type, &shape).ok())?
        })
        .collect();
    if let Some(inputs) = inputs {
        if let Err(Error::Internal(message)) = runtime.run(inputs) {
            eprintln!("caught panic while running: {message}");
            std::process::abort();
        }
    }
});
