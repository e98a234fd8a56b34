//! The `jarvis-perf` command line: inspect, run and benchmark ONNX models without Python.
//! The binary (`src/bin/jarvis-perf.rs`) and the Python console script both call [`main`].
//! This module is the only place that uses `anyhow`.

mod bench;
mod int8;
mod npy;
mod vision;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::runtime::{LoadOptions, Runtime, SaveMode};

/// Run, inspect and benchmark ONNX models on jarvis-performance's runtime.
#[derive(Debug, Parser)]
#[command(name = "jarvis-perf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a model's inputs, outputs, operator counts and parameter count.
    Inspect {
        /// The ONNX file.
        model: PathBuf,
        /// Also print tract's decluttered graph, one node per line.
        #[arg(long)]
        graph: bool,
    },
    /// Run a model once on inputs read from .npy or image files and print (or save) the outputs.
    Run {
        model: PathBuf,
        /// `NAME=FILE.npy`, once per input; a bare `FILE.npy` is enough for a one-input model.
        /// Image files (`NAME=photo.jpg`, several comma-separated for a batch) are decoded,
        /// resized and normalized with the image options below.
        #[arg(long = "input", short = 'i', required = true)]
        inputs: Vec<String>,
        /// Write the first output to this .npy file.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Threads inside operators (default: JARVIS_PERF_THREADS, else every core).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        precision: int8::Precision,
        #[command(flatten)]
        images: vision::ImageArgs,
    },
    /// Store image preprocessing in a model file (`jarvis_performance.preprocess` metadata), so
    /// that `run --input NAME=photo.jpg` and `Runtime.infer_images` need no options; rewrites
    /// the file atomically. `--clear` removes it.
    SetPreprocessing {
        model: PathBuf,
        #[command(flatten)]
        images: vision::ImageArgs,
        /// Remove the stored preprocessing instead.
        #[arg(long)]
        clear: bool,
    },
    /// Calibrate and quantize a model to INT8 and save it as QDQ ONNX (onnxruntime runs it;
    /// `run`/`bench` and the Python API reload it without calibration data).
    Quantize {
        model: PathBuf,
        /// Calibration data: a .npy file (split into batches of 16) or a folder of .npy batches.
        #[arg(long, value_name = "FILE.npy|DIR")]
        calib: PathBuf,
        /// Where to write the INT8 model.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Calibration method: minmax, percentile[:P], entropy or mse.
        #[arg(long)]
        method: Option<String>,
        /// Layers (node or tensor names) kept in float; repeatable.
        #[arg(long = "exclude")]
        exclude: Vec<String>,
        /// Leave out the float master weights and calibration statistics: a file about a
        /// quarter of the float model that reloads bit for bit but cannot be updated.
        #[arg(long)]
        deployable: bool,
        /// Keep int8 layers that measure slower than float (no timing decides).
        #[arg(long)]
        no_speed_fallback: bool,
    },
    /// Compare INT8 with float on data: SQNR, cosine, top-1 agreement, accuracy, per-layer report.
    Eval {
        model: PathBuf,
        #[command(flatten)]
        precision: int8::Precision,
        /// Evaluation inputs (.npy, batch on axis 0).
        #[arg(long)]
        data: PathBuf,
        /// Optional int64 class labels (.npy) for accuracy.
        #[arg(long)]
        labels: Option<PathBuf>,
    },
    /// Time inference on random inputs: median and p99 latency.
    Bench {
        model: PathBuf,
        /// Size of dynamic leading (batch) axes.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Threads inside operators (default: JARVIS_PERF_THREADS, else every core).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed runs (after warm-up).
        #[arg(long, default_value_t = 50)]
        iterations: usize,
        /// `NAME=D0xD1x…` fixes an input's whole shape (for models with dynamic non-batch axes).
        #[arg(long = "shape")]
        shapes: Vec<String>,
        /// After timing, profile the same runs node by node and print the N slowest nodes
        /// and the time per operator kind.
        #[arg(long, value_name = "N")]
        profile: Option<usize>,
        #[command(flatten)]
        precision: int8::Precision,
    },
}

/// Entry point shared by the binary and the Python console script. `args[0]` is the program name.
/// Errors print one line on stderr; the return value is the process exit code (0 on success,
/// 1 on a failed command, 2 on bad arguments).
pub fn main<I: IntoIterator<Item = String>>(args: I) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // Help and --version are "errors" to clap; it prints them and picks the exit code.
            let _ = err.print();
            return if err.use_stderr() { 2 } else { 0 };
        }
    };
    match execute(cli.command) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("jarvis-perf: error: {err:#}");
            1
        }
    }
}

fn execute(command: Command) -> Result<()> {
    match command {
        Command::Inspect { model, graph } => inspect(&model, graph),
        Command::Run { model, inputs, output, threads, precision, images } => {
            let runtime = int8::load(&model, threads, &precision)?;
            int8::print_report(&runtime);
            run(&runtime, &inputs, output, &images)
        }
        Command::SetPreprocessing { model, images, clear } => {
            set_preprocessing(&model, &images, clear)
        }
        Command::Quantize {
            model,
            calib,
            output,
            method,
            exclude,
            deployable,
            no_speed_fallback,
        } => {
            let calib = Some(calib);
            let precision =
                int8::Precision { int8: true, calib, method, exclude, no_speed_fallback };
            let runtime = int8::load(&model, None, &precision)?;
            int8::print_report(&runtime);
            let mode = if deployable { SaveMode::Deployable } else { SaveMode::Learnable };
            runtime.save_as(&output, mode)?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Eval { model, precision, data, labels } => {
            int8::eval(&model, &precision, &data, labels.as_deref())
        }
        Command::Bench { model, batch, threads, iterations, shapes, profile, precision } => {
            let runtime = int8::load(&model, threads, &precision)?;
            bench::run(&runtime, batch, iterations, &shapes)?;
            match profile {
                Some(top) => bench::profile(&runtime, batch, iterations, &shapes, top),
                None => Ok(()),
            }
        }
    }
}

fn set_preprocessing(
    path: &std::path::Path,
    images: &vision::ImageArgs,
    clear: bool,
) -> Result<()> {
    if clear {
        crate::vision::stored::write_file(path, None)?;
        println!("removed the stored preprocessing of {}", path.display());
        return Ok(());
    }
    let stored = images.to_stored()?;
    // Check the record against the model's input before writing it.
    let runtime = Runtime::load(path, &LoadOptions { threads: Some(1), ..Default::default() })?;
    let geometry = runtime.image_geometry();
    if stored.size.is_none() && geometry.is_none() {
        bail!("the model has no fixed 3-channel image input: pass --size");
    }
    stored.options(geometry)?;
    crate::vision::stored::write_file(path, Some(&stored))?;
    println!("stored preprocessing in {}: {}", path.display(), stored.to_json());
    Ok(())
}

fn inspect(path: &std::path::Path, graph: bool) -> Result<()> {
    let runtime = Runtime::load(path, &LoadOptions { threads: Some(1), ..Default::default() })?;
    let model = runtime.model();
    let summary = &model.summary;
    println!("model      {}", path.display());
    println!("producer   {} (opset {})", summary.producer, summary.opset);
    println!("parameters {} in {} tensors", summary.parameters, summary.weight_tensors);
    if model.graph.symbolic().is_none() {
        println!("typing     per input signature (tract cannot type it with symbolic axes)");
    }
    println!("inputs");
    for spec in &model.inputs {
        println!("  {spec}");
    }
    println!("outputs");
    for spec in &model.outputs {
        println!("  {spec}");
    }
    println!("operators ({} nodes)", summary.op_counts.values().sum::<usize>());
    let mut counts: Vec<_> = summary.op_counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, count) in counts {
        println!("  {count:>5}  {op}");
    }
    match runtime.stored_preprocessing() {
        Ok(Some(stored)) => println!("preprocessing (stored) {}", stored.to_json()),
        Ok(None) => {}
        Err(err) => println!("preprocessing (stored) unusable: {err}"),
    }
    if graph {
        let Some(typed) = runtime.decluttered() else {
            println!("tract graph: typed per input signature (no graph until shapes are known)");
            return Ok(());
        };
        println!("tract graph (decluttered)");
        for node in typed.nodes() {
            let inputs: Vec<String> = node.inputs.iter().map(|o| format!("#{}", o.node)).collect();
            let facts: Vec<String> = node.outputs.iter().map(|o| format!("{:?}", o.fact)).collect();
            let info = node.op.info().unwrap_or_default().join("; ");
            println!(
                "  #{} {} {} ({}) <- [{}] -> {}",
                node.id,
                node.name,
                node.op.name(),
                info,
                inputs.join(", "),
                facts.join(", ")
            );
        }
    }
    Ok(())
}

fn run(
    runtime: &Runtime,
    inputs: &[String],
    output: Option<PathBuf>,
    images: &vision::ImageArgs,
) -> Result<()> {
    let mut feed = Vec::new();
    let stored = runtime.stored_preprocessing()?;
    for arg in inputs {
        let (name, file) = match arg.split_once('=') {
            Some((name, file)) => (name.to_string(), PathBuf::from(file)),
            None if runtime.inputs().len() == 1 => {
                (runtime.inputs()[0].name.clone(), PathBuf::from(arg))
            }
            None => bail!("--input {arg}: the model has several inputs, write NAME=FILE.npy"),
        };
        let Some(spec) = runtime.inputs().iter().find(|s| s.name == name) else {
            let names: Vec<&str> = runtime.inputs().iter().map(|s| s.name.as_str()).collect();
            bail!("--input {arg}: the model has no input {name:?} (inputs: {})", names.join(", "));
        };
        let tensor = match file.to_str() {
            Some(files) if vision::is_image(files) => {
                vision::read(files, spec, images, stored.as_ref())
            }
            _ => npy::read(&file, spec),
        }
        .with_context(|| format!("input {name:?}"))?;
        feed.push((name, tensor));
    }
    let outputs = runtime.run_named(feed, None)?;
    for (name, tensor) in &outputs {
        println!("{name}: {:?} {:?}", tensor.datum_type(), tensor.shape());
        println!("{}", npy::preview(tensor));
    }
    if let (Some(file), Some((name, tensor))) = (output, outputs.first()) {
        npy::write(&file, tensor).with_context(|| format!("writing output {name:?}"))?;
        println!("wrote {name} to {}", file.display());
    }
    Ok(())
}
