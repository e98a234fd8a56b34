//! Integration tests of the Rust API on the shipped models.

use std::path::{Path, PathBuf};

use jarvis_performance::{Error, LoadOptions, Runtime};
use tract_onnx::prelude::*;

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

fn load(name: &str) -> Runtime {
    match Runtime::load(&model(name), &LoadOptions { threads: Some(1), ..Default::default() }) {
        Ok(rt) => rt,
        Err(e) => panic!("loading {name}: {e}"),
    }
}

#[test]
fn mlp_runs_at_several_batch_sizes_on_one_plan() -> Result<(), Error> {
    let rt = load("digits_mlp.onnx");
    assert_eq!(rt.inputs()[0].shape, vec![None, Some(64)]);
    for batch in [1, 3, 8] {
        let x = Tensor::zero::<f32>(&[batch, 64]).map_err(|e| Error::Internal(e.to_string()))?;
        let out = rt.run(vec![x])?;
        assert_eq!(out[0].shape(), &[batch, 10]);
    }
    Ok(())
}

#[test]
fn cnn_classifies_the_shipped_sample() -> Result<(), Box<dyn std::error::Error>> {
    let rt = load("digits_cnn.onnx");
    let x: ndarray::ArrayD<f32> =
        ndarray_npy::read_npy(model("digits_sample.npy")).map_err(|e| e.to_string())?;
    let labels: ndarray::ArrayD<i64> =
        ndarray_npy::read_npy(model("digits_sample_labels.npy")).map_err(|e| e.to_string())?;
    let out = rt.run(vec![Tensor::from(x)])?;
    let logits = out[0].to_plain_array_view::<f32>()?;
    let correct = logits
        .outer_iter()
        .zip(labels.iter())
        .filter(|(row, &label)| {
            let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
            best == Some(label as usize)
        })
        .count();
    assert!(correct >= 6, "only {correct}/8 sample digits right");
    Ok(())
}

#[test]
fn bad_inputs_are_typed_errors() {
    let rt = load("digits_mlp.onnx");
    let wrong_shape = Tensor::zero::<f32>(&[2, 65]).unwrap();
    let err = rt.run(vec![wrong_shape]).unwrap_err();
    assert!(matches!(&err, Error::Input { name, .. } if name == "input"), "{err}");
    let wrong_dtype = Tensor::zero::<f64>(&[2, 64]).unwrap();
    let err = rt.run(vec![wrong_dtype]).unwrap_err();
    assert!(err.to_string().contains("expected dtype float32, got float64"), "{err}");
    let err = rt.run(vec![]).unwrap_err();
    assert!(err.to_string().contains("takes 1 input(s), 0 given"), "{err}");
    let x = Tensor::zero::<f32>(&[1, 64]).unwrap();
    let err = rt.run_named(vec![("pixels".into(), x)], None).unwrap_err();
    assert!(err.to_string().contains("no such input"), "{err}");
}

#[test]
fn bad_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.onnx");
    let err = Runtime::load(&missing, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::FileNotFound(_)), "{err}");

    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"definitely not a protobuf \xff\xff\xff\xff").unwrap();
    let err = Runtime::load(&junk, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ModelLoad { .. }), "{err}");

    let bytes = std::fs::read(model("digits_cnn.onnx")).unwrap();
    for sixteenth in 1..16 {
        let cut = dir.path().join(format!("cut{sixteenth}.onnx"));
        std::fs::write(&cut, &bytes[..bytes.len() * sixteenth / 16]).unwrap();
        let err = Runtime::load(&cut, &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::ModelLoad { .. }), "cut at {sixteenth}/16: {err}");
    }
}

#[test]
fn zero_threads_is_a_config_error() {
    let err = Runtime::load(
        &model("digits_mlp.onnx"),
        &LoadOptions { threads: Some(0), ..Default::default() },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
}

/// The fuzzer's Conv-kernel-rank input makes tract panic while analysing the graph. Found first
/// through `Runtime::load`; the second `load_model` run found the same bytes through
/// `OnnxModel::from_bytes` (the fuzz target's way in at the time), which was unguarded, so the fuzz
/// process aborted, `Runtime::from_bytes` reported an internal error and the CLI's int8 path
/// crashed. Every way in must give `ModelLoad`.
#[test]
fn fuzzer_conv_kernel_rank_is_a_load_error_on_every_path() {
    use jarvis_performance::model::OnnxModel;
    use jarvis_performance::quantize::QuantizeOptions;

    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-load-conv-kernel-rank.onnx");
    let bytes = std::fs::read(&path).unwrap();
    let options = LoadOptions { threads: Some(1), ..Default::default() };
    let is_load_error =
        |err: &Error| matches!(err, Error::ModelLoad { reason, .. } if reason.contains("panicked"));
    let err = OnnxModel::from_bytes(&bytes, "fuzz", None).unwrap_err();
    assert!(is_load_error(&err), "{err}");
    let err = OnnxModel::load(&path).unwrap_err();
    assert!(is_load_error(&err), "{err}");
    let err = Runtime::from_bytes(&bytes, "fuzz", &options).unwrap_err();
    assert!(is_load_error(&err), "{err}");
    let err = Runtime::load(&path, &options).unwrap_err();
    assert!(is_load_error(&err), "{err}");
    let err =
        Runtime::load_quantized(&path, &options, &QuantizeOptions::default(), &mut || Ok(None))
            .unwrap_err();
    assert!(is_load_error(&err), "{err}");
}
