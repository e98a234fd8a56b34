//! Integration tests of the operational API: status figures, the CPU cap's options, and
//! runtimes rebuilt from their bytes.

use std::path::{Path, PathBuf};

use jarvis_performance::{Error, LoadOptions, Runtime};
use tract_onnx::prelude::*;

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

fn options(threads: usize) -> LoadOptions {
    LoadOptions { threads: Some(threads), ..Default::default() }
}

fn zeros(batch: usize) -> Result<Tensor, Error> {
    Tensor::zero::<f32>(&[batch, 64]).map_err(|e| Error::Internal(e.to_string()))
}

#[test]
fn status_counts_successful_runs() -> Result<(), Error> {
    let rt = Runtime::load(&model("digits_mlp.onnx"), &options(1))?;
    let before = rt.status();
    assert_eq!((before.inferences, before.latency_ms_p50), (0, None));
    for batch in [1, 2, 4] {
        rt.run(vec![zeros(batch)?])?;
    }
    assert!(rt.run(vec![]).is_err());
    let after = rt.status();
    assert_eq!(after.inferences, 3);
    let (p50, p99) = (after.latency_ms_p50.unwrap_or(-1.0), after.latency_ms_p99.unwrap_or(-1.0));
    assert!(p50 > 0.0 && p50 <= p99, "{p50} {p99}");
    // The MLP's float weights (64·128 + 128·64 + 64·10 + biases) are held at least once.
    let weights = 4.0 * (64.0 * 128.0 + 128.0 * 64.0 + 64.0 * 10.0 + 128.0 + 64.0 + 10.0);
    assert!(after.memory_allocated_mb * 1024.0 * 1024.0 >= weights);
    assert!(after.rss_mb.unwrap_or(0.0) > 1.0);
    assert_eq!((after.threads, after.max_threads, after.throttled), (1, 1, false));
    Ok(())
}

#[test]
fn cpu_caps_are_validated_and_settable() -> Result<(), Error> {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let options = LoadOptions { max_cpu_percent: Some(bad), ..options(1) };
        let err = Runtime::load(&model("digits_mlp.onnx"), &options).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }
    let capped = LoadOptions { max_cpu_percent: Some(250.0), ..options(2) };
    let rt = Runtime::load(&model("digits_mlp.onnx"), &capped)?;
    assert_eq!(rt.cpu_limit(), Some(250.0));
    rt.run(vec![zeros(1)?])?;
    rt.set_cpu_limit(Some(50.0))?;
    rt.run(vec![zeros(1)?])?;
    assert_eq!(rt.status().threads, 1); // under one core's worth: one thread
    assert!(rt.set_cpu_limit(Some(f64::NAN)).is_err());
    assert_eq!(rt.cpu_limit(), Some(50.0));
    rt.set_cpu_limit(None)?;
    assert_eq!(rt.options().max_cpu_percent, None);
    Ok(())
}

#[test]
fn a_runtime_rebuilt_from_its_bytes_gives_the_same_outputs() -> Result<(), Error> {
    let rt = Runtime::load(&model("digits_mlp.onnx"), &options(1))?;
    let name = rt.weight_names()[0].clone();
    let weight = rt.weights(&name)?;
    let delta = Tensor::from(ndarray::ArrayD::<f32>::from_elem(weight.shape(), 0.5));
    rt.update(&[(name, delta)], 1.0)?;
    let copy = Runtime::from_bytes(&rt.to_bytes()?, "copy", &options(1))?;
    assert_eq!(copy.version(), 1);
    let x =
        Tensor::from(ndarray::ArrayD::<f32>::from_shape_fn(vec![3, 64], |i| i[1] as f32 / 64.0));
    assert_eq!(copy.run(vec![x.clone()])?, rt.run(vec![x])?);
    assert!(matches!(Runtime::from_bytes(b"", "empty", &options(1)), Err(Error::ModelLoad { .. })));
    Ok(())
}
