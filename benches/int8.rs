//! `cargo bench`: the int8 kernels against their scalar references, and the shipped digits CNN in
//! INT8 against tract's float plan (ratios: compare the medians criterion prints per group).
//! onnxruntime comparisons live in `python -m jarvis_performance.bench --int8`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use jarvis_performance::kernels::{gemm_planar, Isa, PlanarWeights};
use jarvis_performance::quantize::QuantizeOptions;
use jarvis_performance::{LoadOptions, Runtime};
use tract_onnx::prelude::*;

fn kernels(c: &mut Criterion) {
    // A MobileNetV2-sized pointwise convolution: 96 → 24 channels over 56×56 pixels.
    let (n, k4, pixels) = (24, 96 / 4, 56 * 56);
    let x: Vec<u32> = (0..k4 * pixels).map(|i| (i as u32).wrapping_mul(2654435761)).collect();
    let w: Vec<i8> = (0..n * k4 * 4).map(|i| (i as i32 * 37 % 255 - 127) as i8).collect();
    let packed = PlanarWeights::pack(&w, n, k4);
    let mut acc = vec![0i32; n * pixels];
    let mut group = c.benchmark_group("gemm_planar 96x24x3136");
    for isa in [Isa::Scalar, Isa::detect()] {
        group.bench_function(isa.name(), |b| {
            b.iter(|| gemm_planar(isa, black_box(&x), pixels, &packed, 0..n, &mut acc))
        });
    }
    group.finish();
}

fn digits_cnn(c: &mut Criterion) {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let options = LoadOptions { threads: Some(1), ..Default::default() };
    let calib: ndarray::ArrayD<f32> =
        ndarray_npy::read_npy(models.join("digits_calib.npy")).expect("calibration data");
    let calib = Tensor::from(calib);
    let x = calib.slice(0, 0, 8).expect("a batch of 8");
    let float = Runtime::load(&models.join("digits_cnn.onnx"), &options).expect("float model");
    let mut batches = (0..16).map(|i| calib.slice(0, i * 16, i * 16 + 16).map(|t| vec![t]));
    let int8 = Runtime::load_quantized(
        &models.join("digits_cnn.onnx"),
        &options,
        &QuantizeOptions::default(),
        &mut || {
            batches
                .next()
                .transpose()
                .map_err(|e| jarvis_performance::Error::Internal(e.to_string()))
        },
    )
    .expect("int8 model");
    let mut group = c.benchmark_group("digits_cnn batch 8, 1 thread");
    group.bench_function("tract float", |b| b.iter(|| float.run(vec![x.clone()]).expect("runs")));
    group.bench_function("jarvis int8", |b| b.iter(|| int8.run(vec![x.clone()]).expect("runs")));
    group.finish();
}

criterion_group!(benches, kernels, digits_cnn);
criterion_main!(benches);
