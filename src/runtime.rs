//! [`Runtime`]: the one object users hold. It owns the analysed model and a runnable tract plan,
//! validates every call's inputs against the model's interface, and runs the plan.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use crate::error::{catch_panics, chain, Error, Result};
use crate::model::saved::SavedInt8;
use crate::model::{ElementType, OnnxModel, TensorSpec};
use crate::plan::{Plans, SymbolBindings};
use crate::quantize::qparams::ActivationQuant;
use crate::quantize::{BatchSource, QuantizationSummary, QuantizeOptions};
use crate::vision::{self, ImageSource, Layout, PreprocessOptions};

/// Environment variable that sets the default thread count.
pub const THREADS_ENV: &str = "JARVIS_PERF_THREADS";

/// Options of [`Runtime::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Threads used inside operators; `None` reads `JARVIS_PERF_THREADS`, else uses every core.
    pub threads: Option<usize>,
}

/// A loaded model ready to run. `Runtime` is `Send + Sync`: any number of threads may call
/// [`Runtime::run`] at once; each call gets its own execution state.
#[derive(Debug)]
pub struct Runtime {
    model: OnnxModel,
    plans: Plans,
    threads: usize,
    quantization: Option<QuantizationSummary>,
}

impl Runtime {
    /// Loads an ONNX file and prepares its float plan.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        catch_panics("loading the model", || {
            let model = OnnxModel::load(path)?;
            Self::from_model(model, options)
        })
    }

    /// Prepares the plan of an already analysed model: float, or int8 for a file `save` wrote
    /// from an int8 runtime (no calibration data needed; the plan is bit-identical).
    pub fn from_model(model: OnnxModel, options: &LoadOptions) -> Result<Self> {
        if let Some(saved) = model.saved_int8.clone() {
            return Self::from_saved_int8(model, options, &saved);
        }
        let threads = resolve_threads(options.threads)?;
        let plans = Plans::new(&model.typed, executor(threads)?, &model.source)?;
        log::debug!("prepared {} with {threads} thread(s)", model.source);
        Ok(Runtime { model, plans, threads, quantization: None })
    }

    /// Loads an ONNX file, calibrates it on `batches` (inputs in model order, until the source
    /// returns `None`) and prepares its int8 plan.
    pub fn load_quantized(
        path: &Path,
        options: &LoadOptions,
        quantize: &QuantizeOptions,
        batches: &mut BatchSource<'_>,
    ) -> Result<Self> {
        let model = catch_panics("loading the model", || OnnxModel::load(path))?;
        Self::from_model_quantized(model, options, quantize, batches)
    }

    /// Calibrates an analysed model on `batches` and prepares its int8 plan.
    pub fn from_model_quantized(
        model: OnnxModel,
        options: &LoadOptions,
        quantize: &QuantizeOptions,
        batches: &mut BatchSource<'_>,
    ) -> Result<Self> {
        catch_panics("quantizing the model", || {
            let threads = resolve_threads(options.threads)?;
            let executor = executor(threads)?;
            let float = Plans::new(&model.typed, executor.clone(), &model.source)?;
            let start = std::time::Instant::now();
            let q = crate::quantize::quantize(
                float.decluttered(),
                &model.inputs,
                batches,
                quantize,
                executor.clone(),
            )?;
            let plans = Plans::new(&q.typed, executor, &model.source)?;
            let report = &q.summary.report;
            log::info!(
                "{}: {}/{} layers int8 after {:?} ({} samples)",
                model.source,
                report.iter().filter(|l| l.int8).count(),
                report.len(),
                start.elapsed(),
                q.summary.samples
            );
            let quantization = q.summary;
            Ok(Runtime { model, plans, threads, quantization: Some(quantization) })
        })
    }

    fn from_saved_int8(model: OnnxModel, options: &LoadOptions, saved: &SavedInt8) -> Result<Self> {
        catch_panics("restoring the int8 model", || {
            let threads = resolve_threads(options.threads)?;
            let executor = executor(threads)?;
            let float = Plans::new(&model.typed, executor.clone(), &model.source)?;
            let method = saved.method.parse().unwrap_or(crate::calibrate::Method::DEFAULT);
            let quantize =
                QuantizeOptions { method, per_channel: saved.per_channel, exclude: Vec::new() };
            let layers: Vec<(String, ActivationQuant)> = saved
                .layers
                .iter()
                .map(|l| {
                    (l.name.clone(), ActivationQuant { scale: l.scale, zero_point: l.zero_point })
                })
                .collect();
            let q = crate::quantize::quantize_with_saved(float.decluttered(), &layers, &quantize)?;
            let plans = Plans::new(&q.typed, executor, &model.source)?;
            Ok(Runtime { model, plans, threads, quantization: Some(q.summary) })
        })
    }

    /// Writes the model to `path` atomically (a temporary file in the same folder, then a
    /// rename): the float ONNX for a float runtime; for an int8 runtime, standard ONNX in QDQ
    /// form (int8 weights, scales, zero points) that onnxruntime runs, carrying the float master
    /// weights and the calibrated parameters so `Runtime::load` rebuilds the same int8 plan.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = match &self.quantization {
            None => self.model.onnx.to_vec(),
            Some(q) => {
                let options = format!("{}\t{}", q.options.method, q.options.per_channel);
                crate::quantize::save::to_qdq(&self.model.onnx, &q.activations, &options)?
            }
        };
        write_atomically(path, &bytes)
    }

    /// Whether the model runs with int8 layers.
    pub fn quantized(&self) -> bool {
        self.quantization.is_some()
    }

    /// The quantization outcome, if the model was quantized.
    pub fn quantization(&self) -> Option<&QuantizationSummary> {
        self.quantization.as_ref()
    }

    /// The analysed model this runtime was built from.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// The decluttered tract graph (BatchNorm folded, reshapes simplified) that plans run.
    pub fn decluttered(&self) -> &TypedModel {
        self.plans.decluttered()
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.model.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.model.outputs
    }

    /// Threads used inside operators.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs the model on inputs given in the model's input order; returns every output, in order.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if inputs.len() != self.model.inputs.len() {
            let names: Vec<&str> = self.model.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::input(
                names.join(", "),
                format!("the model takes {} input(s), {} given", names.len(), inputs.len()),
            ));
        }
        let bindings = bind_inputs(&self.model.inputs, &inputs)?;
        let plan = self.plans.get(bindings)?;
        let values: TVec<TValue> = inputs.into_iter().map(TValue::from).collect();
        let outputs = catch_panics("inference", || {
            plan.run(values).map_err(|e| Error::Inference(chain(&e)))
        })?;
        outputs.into_iter().map(exchangeable).collect()
    }

    /// Runs the model on inputs given by name; returns the requested outputs (all if `None`) in
    /// the order asked, each with its name.
    pub fn run_named(
        &self,
        feed: Vec<(String, Tensor)>,
        output_names: Option<&[String]>,
    ) -> Result<Vec<(String, Tensor)>> {
        let selected = self.output_positions(output_names)?;
        let mut ordered: Vec<Option<Tensor>> = vec![None; self.model.inputs.len()];
        for (name, tensor) in feed {
            let Some(ix) = self.model.input_index(&name) else {
                return Err(Error::input(
                    name,
                    format!("the model has no such input; its inputs are {}", self.input_names()),
                ));
            };
            ordered[ix] = Some(tensor);
        }
        let inputs = ordered
            .into_iter()
            .zip(&self.model.inputs)
            .map(|(t, spec)| t.ok_or_else(|| Error::input(&spec.name, "missing from the feed")))
            .collect::<Result<Vec<_>>>()?;
        let mut outputs: Vec<Option<Tensor>> = self.run(inputs)?.into_iter().map(Some).collect();
        selected
            .into_iter()
            .map(|ix| {
                let tensor = outputs[ix].take().ok_or_else(|| Error::Output {
                    name: self.model.outputs[ix].name.clone(),
                    reason: "requested twice".into(),
                })?;
                Ok((self.model.outputs[ix].name.clone(), tensor))
            })
            .collect()
    }

    fn output_positions(&self, names: Option<&[String]>) -> Result<Vec<usize>> {
        let Some(names) = names else {
            return Ok((0..self.model.outputs.len()).collect());
        };
        names
            .iter()
            .map(|name| {
                self.model.output_index(name).ok_or_else(|| Error::Output {
                    name: name.clone(),
                    reason: format!(
                        "the model has no such output; its outputs are {}",
                        self.model
                            .outputs
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            })
            .collect()
    }

    fn input_names(&self) -> String {
        self.model.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// Casts tract-internal element types to what callers exchange (symbolic dims → int64).
/// Images in (issue #6): the vision pipeline writes straight into the model's input tensor.
impl Runtime {
    /// Layout and `(height, width)` of the model's only input when it is a 3-channel image
    /// batch of static spatial size: `(N, 3, H, W)` is NCHW, `(N, H, W, 3)` NHWC.
    pub fn image_geometry(&self) -> Option<(Layout, (usize, usize))> {
        let [spec] = self.inputs() else { return None };
        image_geometry(spec)
    }

    /// Preprocesses `images` into the model's only input (float32) and runs the model.
    pub fn run_images(
        &self,
        images: &[ImageSource<'_>],
        options: &PreprocessOptions,
    ) -> Result<Vec<Tensor>> {
        let [spec] = self.inputs() else {
            return Err(Error::input(self.input_names(), "images feed models with one input"));
        };
        if images.is_empty() {
            return Err(Error::input(&spec.name, "no images given"));
        }
        if spec.element_type != Some(ElementType::F32) {
            let reason = format!("takes {}; images become float32", spec.type_name());
            return Err(Error::input(&spec.name, reason));
        }
        self.run(vec![image_tensor(images, options)?])
    }
}

/// Layout and `(height, width)` of an input that is a 3-channel image batch of static spatial
/// size: `(N, 3, H, W)` is NCHW, `(N, H, W, 3)` NHWC.
pub fn image_geometry(spec: &TensorSpec) -> Option<(Layout, (usize, usize))> {
    match spec.shape[..] {
        [_, Some(3), Some(h), Some(w)] => Some((Layout::Nchw, (h, w))),
        [_, Some(h), Some(w), Some(3)] => Some((Layout::Nhwc, (h, w))),
        _ => None,
    }
}

/// A float32 tensor of [`PreprocessOptions::batch_shape`] filled by the vision pipeline.
pub fn image_tensor(images: &[ImageSource<'_>], options: &PreprocessOptions) -> Result<Tensor> {
    let shape = options.batch_shape(images.len());
    let mut tensor = Tensor::zero::<f32>(&shape)
        .map_err(|e| Error::Internal(format!("allocating the image batch: {e:#}")))?;
    let internal = |e: TractError| Error::Internal(format!("image batch buffer: {e:#}"));
    {
        let mut plain = tensor.try_as_plain_ram_mut().map_err(internal)?;
        vision::preprocess_into(images, options, plain.as_slice_mut::<f32>().map_err(internal)?)?;
    }
    Ok(tensor)
}

fn exchangeable(value: TValue) -> Result<Tensor> {
    let tensor = value.into_tensor();
    if tensor.datum_type() != DatumType::TDim {
        return Ok(tensor);
    }
    tensor
        .cast_to::<i64>()
        .map(|t| t.into_owned())
        .map_err(|e| Error::Inference(format!("a shape output is not a whole number: {e:#}")))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash leaves either the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |context: String| move |source| Error::Io { context, source };
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io(format!("writing {}", tmp.display())))
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Validates every input against its spec and returns the values of the dynamic-axis symbols,
/// which inputs sharing a symbol must agree on.
pub fn bind_inputs(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<SymbolBindings> {
    let mut bound: HashMap<&str, (usize, &str)> = HashMap::new();
    for (spec, tensor) in specs.iter().zip(inputs) {
        check_input(spec, tensor)?;
        for (symbol, &size) in spec.symbols.iter().zip(tensor.shape()) {
            let Some(symbol) = symbol else { continue };
            match bound.get(symbol.as_str()) {
                Some(&(other, other_input)) if other != size => {
                    return Err(Error::input(
                        &spec.name,
                        format!(
                            "axis {symbol:?} is {size} here but {other} in input {other_input:?}"
                        ),
                    ));
                }
                _ => {
                    bound.insert(symbol, (size, &spec.name));
                }
            }
        }
    }
    let mut bindings: SymbolBindings =
        bound.into_iter().map(|(name, (size, _))| (name.to_string(), size)).collect();
    bindings.sort();
    Ok(bindings)
}

/// Checks one input tensor against the model's declaration: element type, rank, fixed axes.
pub fn check_input(spec: &TensorSpec, tensor: &Tensor) -> Result<()> {
    let Some(expected) = spec.element_type else {
        return Err(Error::input(
            &spec.name,
            format!("element type {:?} cannot be passed in", spec.datum_type),
        ));
    };
    if tensor.datum_type() != expected.datum_type() {
        let got = ElementType::from_datum_type(tensor.datum_type())
            .map_or_else(|| format!("{:?}", tensor.datum_type()), |t| t.name().to_string());
        return Err(Error::input(&spec.name, format!("expected dtype {expected}, got {got}")));
    }
    let shape = tensor.shape();
    if shape.len() != spec.shape.len() {
        return Err(Error::input(
            &spec.name,
            format!(
                "expected rank {} (shape {}), got rank {} (shape {:?})",
                spec.shape.len(),
                spec.shape_text(),
                shape.len(),
                shape
            ),
        ));
    }
    for (axis, (want, &got)) in spec.shape.iter().zip(shape).enumerate() {
        if let Some(want) = want {
            if *want != got {
                return Err(Error::input(
                    &spec.name,
                    format!(
                        "axis {axis} must be {want} (shape {}), got shape {shape:?}",
                        spec.shape_text()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The thread count to use: the explicit option, else `JARVIS_PERF_THREADS`, else every core.
pub fn resolve_threads(requested: Option<usize>) -> Result<usize> {
    let threads = match requested {
        Some(n) => n,
        None => match std::env::var(THREADS_ENV) {
            Ok(text) => text.trim().parse::<usize>().map_err(|_| {
                Error::config(THREADS_ENV, format!("{text:?} is not a whole number"))
            })?,
            Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
    };
    if threads == 0 || threads > 1024 {
        return Err(Error::config("threads", format!("{threads} is not in 1..=1024")));
    }
    Ok(threads)
}

fn executor(threads: usize) -> Result<Executor> {
    if threads == 1 {
        return Ok(Executor::SingleThread);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("jarvis-perf-{i}"))
        .build()
        .map_err(|e| Error::config("threads", format!("cannot start {threads} threads: {e}")))?;
    Ok(Executor::MultiThread(Arc::new(pool)))
}
