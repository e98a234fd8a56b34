//! Arbitrary shapes and values into the shipped digits CNN, float and int8: every call returns
//! outputs or an input error — never a panic, abort or hang.
#![no_main]

use std::sync::OnceLock;

use jarvis_performance::error::Error;
use jarvis_performance::quantize::QuantizeOptions;
use jarvis_performance::runtime::{LoadOptions, Runtime};
use libfuzzer_sys::fuzz_target;
use tract_onnx::prelude::*;

fn runtimes() -> &'static (Runtime, Runtime) {
    static RUNTIMES: OnceLock<(Runtime, Runtime)> = OnceLock::new();
    RUNTIMES.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits_cnn.onnx");
        let options = LoadOptions {
            threads: Some(1),
            max_memory_bytes: Some(256 << 20),
            allow_non_finite: true,
            ..Default::default()
        };
        let float = Runtime::load(&path, &options).expect("the shipped model loads");
        let mut batches = 0;
        let int8 = Runtime::load_quantized(&path, &options, &QuantizeOptions::default(), &mut || {
            batches += 1;
            Ok((batches <= 2).then(|| vec![Tensor::zero::<f32>(&[4, 1, 8, 8]).expect("zeros")]))
        })
        .expect("the shipped model quantizes");
        (float, int8)
    })
}

/// libfuzzer-sys aborts on every panic, even one the library catches and turns into an error
/// (tract panics on some malformed graphs; loading reports those as `ModelLoad`). Keep quiet
/// hooks instead and abort only on what the library could not handle.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|data: &[u8]| {
    quiet_panics();
    if data.len() < 4 {
        return;
    }
    // First byte: with its top bit set, a batch of the model's shape (N, 1, 8, 8) with N from
    // the next byte (0..=16), so that values reach the layers; otherwise a rank (0..=5) and
    // small dims from the next bytes, mostly refused by validation. Then f32 values (bytes
    // reinterpreted, NaN/Inf included), repeated to fill the tensor.
    let (shape, header): (Vec<usize>, usize) = if data[0] & 0x80 != 0 {
        (vec![usize::from(data[1] % 17), 1, 8, 8], 2)
    } else {
        let rank = usize::from(data[0] % 6);
        let dims = data[1..].iter().take(rank).map(|&d| usize::from(d % 17)).collect();
        (dims, 1 + rank.min(data.len() - 1))
    };
    let elements: usize = shape.iter().product();
    let values: Vec<f32> = data[header..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .cycle()
        .take(elements)
        .collect();
    if values.len() != elements {
        return;
    }
    let Ok(tensor) = Tensor::from_shape(&shape, &values) else { return };
    let (float, int8) = runtimes();
    for runtime in [float, int8] {
        if let Err(Error::Internal(message)) = runtime.run(vec![tensor.clone()]) {
            eprintln!("caught panic: {message}");
            std::process::abort();
        }
    }
});
