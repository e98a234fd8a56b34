//! INT8 options of the CLI: `--int8 --calib FILE.npy|DIR [--method M]`, and `eval`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tract_onnx::prelude::*;

use super::npy;
use crate::calibrate::Method;
use crate::quantize::qdq::SavedModel;
use crate::quantize::QuantizeOptions;
use crate::runtime::{LoadOptions, Runtime};

/// Samples per calibration batch when a file is split.
const BATCH: usize = 16;

/// How to load the model: float, or int8 calibrated on `.npy` data.
#[derive(Debug, Clone, Args)]
pub struct Precision {
    /// Quantize Conv/Gemm/MatMul layers to INT8 (needs --calib).
    #[arg(long)]
    pub int8: bool,
    /// Calibration data: a .npy file (split into batches of 16) or a folder of .npy batches.
    #[arg(long, value_name = "FILE.npy|DIR")]
    pub calib: Option<PathBuf>,
    /// Calibration method: minmax, percentile[:P], entropy or mse.
    #[arg(long)]
    pub method: Option<String>,
    /// Layers (node or tensor names) kept in float; repeatable.
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    /// Keep int8 layers that measure slower than float (calibration then reproducible bit for
    /// bit: no timing decides).
    #[arg(long)]
    pub no_speed_fallback: bool,
}

/// Loads `path` as `precision` asks.
pub fn load(path: &Path, threads: Option<usize>, precision: &Precision) -> Result<Runtime> {
    let options = LoadOptions { threads, ..Default::default() };
    if !precision.int8 {
        if precision.calib.is_some() {
            bail!("--calib is only used with --int8");
        }
        return Ok(Runtime::load(path, &options)?);
    }
    let Some(calib) = &precision.calib else { bail!("--int8 needs --calib FILE.npy|DIR") };
    let method = match &precision.method {
        Some(text) => text.parse::<Method>().map_err(anyhow::Error::msg)?,
        None => Method::DEFAULT,
    };
    let model = SavedModel::load(path)?.float_model()?;
    let [spec] = model.inputs.as_slice() else {
        bail!("--calib feeds one input; this model has {}", model.inputs.len());
    };
    let batches = calibration_batches(calib, spec)?;
    // Progress on stderr, so piped stdout stays clean; hidden when stderr is not a terminal.
    let progress = ProgressBar::new(batches.len() as u64).with_style(
        ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} batches {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut batches = batches.into_iter();
    let quantize = QuantizeOptions {
        method,
        exclude: precision.exclude.clone(),
        speed_fallback: !precision.no_speed_fallback,
        ..QuantizeOptions::default()
    };
    let runtime = Runtime::from_model_quantized(model, &options, &quantize, &mut || {
        let batch = batches.next().map(|t| vec![t]);
        if batch.is_some() {
            progress.inc(1);
        }
        Ok(batch)
    });
    progress.finish_and_clear();
    Ok(runtime?)
}

fn calibration_batches(path: &Path, spec: &crate::model::TensorSpec) -> Result<Vec<Tensor>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "npy"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut batches = Vec::new();
    for file in files {
        let tensor = npy::read(&file, spec).with_context(|| "calibration data".to_string())?;
        let samples = tensor.shape().first().copied().unwrap_or(0);
        for start in (0..samples).step_by(BATCH) {
            batches.push(tensor.slice(0, start, (start + BATCH).min(samples))?);
        }
    }
    if batches.is_empty() {
        bail!("no calibration samples in {}", path.display());
    }
    Ok(batches)
}

/// `eval`: runs float and int8 on the same data and prints how far apart they are.
pub fn eval(path: &Path, precision: &Precision, data: &Path, labels: Option<&Path>) -> Result<()> {
    let float = Runtime::load(path, &LoadOptions::default())?;
    let int8 = load(path, None, &Precision { int8: true, ..precision.clone() })?;
    let [spec] = float.inputs() else {
        bail!("eval feeds one input; this model has {}", float.inputs().len())
    };
    let x = npy::read(data, spec).context("--data")?;
    let want = float.run(vec![x.clone()])?.remove(0);
    let got = int8.run(vec![x])?.remove(0);
    let (want, got) = (want.to_plain_array_view::<f32>()?, got.to_plain_array_view::<f32>()?);
    let (sqnr, cosine) = crate::quantize::compare(
        &want.iter().copied().collect::<Vec<_>>(),
        &got.iter().copied().collect::<Vec<_>>(),
    );
    println!(
        "output {}: int8 vs float  SQNR {sqnr:.1} dB  cosine {cosine:.5}",
        float.outputs()[0].name
    );
    if want.ndim() == 2 {
        let argmax = |row: ndarray::ArrayView1<f32>| {
            row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
        };
        let rows = want.shape()[0];
        let want2 = want.view().into_dimensionality::<ndarray::Ix2>()?;
        let got2 = got.view().into_dimensionality::<ndarray::Ix2>()?;
        let float_top: Vec<usize> = want2.outer_iter().map(argmax).collect();
        let int8_top: Vec<usize> = got2.outer_iter().map(argmax).collect();
        let same = float_top.iter().zip(&int8_top).filter(|(a, b)| a == b).count();
        println!(
            "top-1 agreement {same}/{rows} ({:.2} %)",
            100.0 * same as f64 / rows.max(1) as f64
        );
        if let Some(labels) = labels {
            let spec = crate::model::TensorSpec {
                name: "labels".into(),
                shape: vec![Some(rows)],
                symbols: vec![None],
                element_type: Some(crate::model::ElementType::I64),
                datum_type: DatumType::I64,
            };
            let labels = npy::read(labels, &spec).context("--labels")?;
            let labels = labels.to_plain_array_view::<i64>()?;
            let accuracy = |top: &[usize]| {
                top.iter().zip(labels.iter()).filter(|(t, l)| **t as i64 == **l).count() as f64
                    * 100.0
                    / rows.max(1) as f64
            };
            println!(
                "accuracy  float {:.2} %   int8 {:.2} %",
                accuracy(&float_top),
                accuracy(&int8_top)
            );
        }
    }
    print_report(&int8);
    Ok(())
}

/// The per-layer quantization report, worst first.
pub fn print_report(runtime: &Runtime) {
    let Some(q) = runtime.quantization() else { return };
    let int8 = q.report.iter().filter(|l| l.int8).count();
    println!(
        "{int8}/{} layers int8 ({}; calibrated on {} samples); int8 weights {:.2} MB (float {:.2} MB)",
        q.report.len(),
        q.options.method,
        q.samples,
        q.int8_weight_bytes as f64 / 1e6,
        q.float_weight_bytes as f64 / 1e6
    );
    println!("{:>9} {:>9}  {:<10} layer", "SQNR dB", "cosine", "kind");
    for layer in &q.report {
        match (layer.sqnr_db, layer.cosine) {
            (Some(sqnr), Some(cosine)) => {
                println!("{sqnr:>9.1} {cosine:>9.5}  {:<10} {}", layer.kind, layer.name)
            }
            _ => println!(
                "{:>9} {:>9}  {:<10} {} (float: {})",
                "-",
                "-",
                layer.kind,
                layer.name,
                layer.reason.as_deref().unwrap_or("")
            ),
        }
    }
}
