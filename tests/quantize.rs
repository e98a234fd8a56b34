//! INT8 quantization of the shipped digits CNN, end to end in Rust.

use std::path::{Path, PathBuf};

use jarvis_performance::calibrate::Method;
use jarvis_performance::quantize::QuantizeOptions;
use jarvis_performance::{Error, LoadOptions, Runtime};
use tract_onnx::prelude::*;

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

fn sample() -> Tensor {
    let x: ndarray::ArrayD<f32> = ndarray_npy::read_npy(model("digits_sample.npy")).unwrap();
    Tensor::from(x)
}

fn quantized(method: Method) -> Result<Runtime, Error> {
    let mut batches = vec![vec![sample()]].into_iter();
    let options = QuantizeOptions { method, ..Default::default() };
    Runtime::load_quantized(
        &model("digits_cnn.onnx"),
        &LoadOptions { threads: Some(1), ..Default::default() },
        &options,
        &mut || Ok(batches.next()),
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn int8_cnn_agrees_with_float_for_every_method() -> Result<(), Box<dyn std::error::Error>> {
    let float = Runtime::load(
        &model("digits_cnn.onnx"),
        &LoadOptions { threads: Some(1), ..Default::default() },
    )?;
    let want = float.run(vec![sample()])?.remove(0);
    for method in [Method::MinMax, Method::DEFAULT, Method::Entropy, Method::Mse] {
        let rt = quantized(method)?;
        assert!(rt.quantized());
        let report = &rt.quantization().unwrap().report;
        let int8: Vec<_> = report.iter().filter(|l| l.int8).map(|l| l.kind.as_str()).collect();
        assert_eq!(int8.len(), 4, "{method}: {report:?}");
        let got = rt.run(vec![sample()])?.remove(0);
        let (w, g) = (want.to_plain_array_view::<f32>()?, got.to_plain_array_view::<f32>()?);
        let c = cosine(w.as_slice().unwrap(), g.as_slice().unwrap());
        assert!(c > 0.99, "{method}: cosine {c}");
        for (rw, rg) in w.outer_iter().zip(g.outer_iter()) {
            let argmax = |r: ndarray::ArrayViewD<f32>| {
                r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)
            };
            assert_eq!(argmax(rw), argmax(rg), "{method}");
        }
    }
    Ok(())
}

#[test]
fn no_calibration_data_is_an_error() {
    let err = Runtime::load_quantized(
        &model("digits_cnn.onnx"),
        &LoadOptions::default(),
        &QuantizeOptions::default(),
        &mut || Ok(None),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Calibration(_)), "{err}");
}

#[test]
fn deployable_bytes_reload_bit_identically_and_refuse_updates(
) -> Result<(), Box<dyn std::error::Error>> {
    use jarvis_performance::SaveMode;

    let rt = quantized(Method::DEFAULT)?;
    let options = LoadOptions { threads: Some(1), ..Default::default() };
    let learnable = rt.to_bytes_as(SaveMode::Learnable)?;
    let deployable = rt.to_bytes_as(SaveMode::Deployable)?;
    assert!(deployable.len() * 2 < learnable.len(), "{} vs {}", deployable.len(), learnable.len());
    let reloaded = Runtime::from_bytes(&deployable, "deployable", &options)?;
    assert!(reloaded.quantized() && reloaded.deployable() && !rt.deployable());
    let bits = |t: Tensor| -> Result<Vec<u32>, Box<dyn std::error::Error>> {
        Ok(t.to_plain_array_view::<f32>()?.iter().map(|v| v.to_bits()).collect())
    };
    let want = bits(rt.run(vec![sample()])?.remove(0))?;
    assert_eq!(bits(reloaded.run(vec![sample()])?.remove(0))?, want);
    let delta = Tensor::from(ndarray::Array1::<f32>::zeros(10).into_dyn());
    let err = reloaded.update(&[("fc.bias".to_string(), delta)], 1.0).unwrap_err();
    assert!(matches!(&err, Error::Update(m) if m.contains("deployable")), "{err}");
    assert!(matches!(reloaded.to_bytes_as(SaveMode::Learnable), Err(Error::Save(_))));
    assert_eq!(reloaded.to_bytes_as(SaveMode::Deployable)?, deployable);
    Ok(())
}
