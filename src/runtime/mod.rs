//! [`Runtime`]: the one object users hold. It owns the analysed model and the current version
//! of its weights with the runnable tract plans, validates every call's inputs against the
//! model's interface, and runs the plans. Updates and learning live in `update.rs`.

mod images;
mod outputs;
mod pools;
mod profile;
mod save;
mod status;
mod update;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::{multithread_tract_scope, Executor};

pub use images::{image_geometry, image_tensor};
pub use profile::NodeTime;
pub use save::SaveMode;
pub use status::Status;
pub use update::{LearnStep, UpdateOutcome};

use crate::error::{catch_panics, chain, Error, Result};
use crate::learn::{Int8Input, Slots, Version, Versions};
use crate::model::weights::{self, OnnxLayer, Weights};
use crate::model::{bind_inputs, OnnxModel, TensorSpec};
use crate::monitor::Monitor;
use crate::plan::{Plans, DEFAULT_MAX_PLANS};
use crate::quantize::qdq::{SavedModel, CHECKSUM_KEY, VERSION_KEY};
use crate::quantize::qparams::ActivationQuant;
use crate::quantize::{BatchSource, QuantizationSummary, QuantizeOptions, Quantized};
use pools::Pools;

/// Environment variable that sets the default thread count.
pub const THREADS_ENV: &str = "JARVIS_PERF_THREADS";

/// Options of [`Runtime::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Threads used inside operators; `None` reads `JARVIS_PERF_THREADS`, else uses every core.
    pub threads: Option<usize>,
    /// Refuse calls whose tensors would need more bytes than this (estimated from the graph's
    /// shapes before anything is allocated); `None`: no limit.
    pub max_memory_bytes: Option<u64>,
    /// Let NaN and ±Inf into float inputs. Off by default: tract's ReLU and max-pooling turn NaN
    /// into plausible numbers and int8 layers saturate it, so a NaN could pass silently.
    pub allow_non_finite: bool,
    /// Keep this process's CPU at or under this percent of one core while inference runs
    /// (fewer threads, then pauses; see [`crate::monitor::Throttle`]). `None`: no cap.
    pub max_cpu_percent: Option<f64>,
    /// Most concrete plans kept (one per input signature: batch size, image size, sequence
    /// length, …), least recently used dropped first; `None`: [`DEFAULT_MAX_PLANS`].
    pub max_plans: Option<usize>,
}

impl LoadOptions {
    /// The plan cache's bound.
    pub fn plan_capacity(&self) -> usize {
        self.max_plans.unwrap_or(DEFAULT_MAX_PLANS)
    }
}

/// What a runtime runs besides its float plans.
pub(super) enum Prepared {
    Float,
    /// The int8 graph of a symbolically typed model, rewritten once.
    Int8(Quantized),
    /// The int8 parameters of a model typed per signature, applied to each signature's graph.
    Int8PerSignature(QuantizationSummary),
}

/// A loaded model ready to run. `Runtime` is `Send + Sync`: any number of threads may call
/// [`Runtime::run`] at once, each call getting its own execution state, while another thread
/// updates the weights.
#[derive(Debug)]
pub struct Runtime {
    /// The model as loaded: interface, source, float ONNX bytes.
    model: OnnxModel,
    versions: Versions,
    /// The float weights as loaded, to tell which ones updates changed.
    original: Arc<Weights>,
    onnx_layers: Vec<OnnxLayer>,
    max_memory_bytes: Option<u64>,
    allow_non_finite: bool,
    /// The version the file carried (0 unless `save` wrote it after updates).
    loaded_version: u64,
    /// Loaded from a deployable file: no float masters, so no updates.
    deployable: bool,
    /// Threads configured: the most any run uses.
    threads: usize,
    /// The options as given, for copies of this runtime made from its bytes.
    options: LoadOptions,
    pools: Pools,
    monitor: Monitor,
}

impl Runtime {
    /// Loads an ONNX file and prepares its float plan.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        Self::from_saved(SavedModel::load(path)?, options)
    }

    /// Prepares the float plan of an already analysed model.
    pub fn from_model(model: OnnxModel, options: &LoadOptions) -> Result<Self> {
        Self::from_saved(SavedModel { model, int8: None }, options)
    }

    /// Prepares the plan of a model read from a file: float, or int8 for a file `save` wrote
    /// from an int8 runtime (no calibration data needed; the plan is bit-identical) or a QDQ
    /// file from another quantizer.
    pub fn from_saved(saved: SavedModel, options: &LoadOptions) -> Result<Self> {
        let SavedModel { model, int8 } = saved;
        let deployable = int8.as_ref().is_some_and(|s| s.deployable);
        catch_panics("preparing the model", || {
            let threads = resolve_threads(options.threads)?;
            check_cpu_limit(options.max_cpu_percent)?;
            check_max_plans(options.max_plans)?;
            let float =
                Plans::from_graph(&model.graph, None, &model.source, options.plan_capacity())?;
            let prepared = match int8 {
                None => Prepared::Float,
                Some(saved) => {
                    let method =
                        saved.options.method.parse().unwrap_or(crate::calibrate::Method::DEFAULT);
                    let options = QuantizeOptions {
                        method,
                        per_channel: saved.options.per_channel,
                        ..QuantizeOptions::default()
                    };
                    let layers: Vec<(String, ActivationQuant)> = saved
                        .layers
                        .iter()
                        .map(|l| {
                            let q = ActivationQuant { scale: l.scale, zero_point: l.zero_point };
                            (l.name.clone(), q)
                        })
                        .collect();
                    let stats = saved
                        .layers
                        .iter()
                        .map(|l| (l.name.clone(), Arc::new(l.input.clone())))
                        .collect();
                    match float.decluttered() {
                        Some(decluttered) => Prepared::Int8(crate::quantize::quantize_with_saved(
                            decluttered,
                            &layers,
                            &stats,
                            &options,
                        )?),
                        None => Prepared::Int8PerSignature(crate::quantize::summary_from_saved(
                            &layers, &stats, &options,
                        )),
                    }
                }
            };
            log::debug!("prepared {} with {threads} thread(s)", model.source);
            Self::assemble(model, options, Pools::new(threads), float, prepared, deployable)
        })
    }

    /// Loads an ONNX file, calibrates it on `batches` (inputs in model order, until the source
    /// returns `None`) and prepares its int8 plan.
    pub fn load_quantized(
        path: &Path,
        options: &LoadOptions,
        quantize: &QuantizeOptions,
        batches: &mut BatchSource<'_>,
    ) -> Result<Self> {
        let model = SavedModel::load(path)?.float_model()?;
        Self::from_model_quantized(model, options, quantize, batches)
    }

    /// Calibrates an analysed model on `batches` and prepares its int8 plan. A model typed per
    /// signature is calibrated at the shapes the batches have; its parameters (by layer name)
    /// then quantize the graph of every signature it runs at.
    pub fn from_model_quantized(
        model: OnnxModel,
        options: &LoadOptions,
        quantize: &QuantizeOptions,
        batches: &mut BatchSource<'_>,
    ) -> Result<Self> {
        catch_panics("quantizing the model", || {
            let threads = resolve_threads(options.threads)?;
            check_cpu_limit(options.max_cpu_percent)?;
            check_max_plans(options.max_plans)?;
            let float =
                Plans::from_graph(&model.graph, None, &model.source, options.plan_capacity())?;
            let start = Instant::now();
            let pools = Pools::new(threads);
            let executor = pools.get(threads)?;
            let q = crate::quantize::quantize(&float, &model.inputs, batches, quantize, executor)?;
            let report = &q.summary.report;
            log::info!(
                "{}: {}/{} layers int8 after {:?} ({} samples)",
                model.source,
                report.iter().filter(|l| l.int8).count(),
                report.len(),
                start.elapsed(),
                q.summary.samples
            );
            let prepared = if float.per_signature_typing() {
                Prepared::Int8PerSignature(q.summary)
            } else {
                Prepared::Int8(q)
            };
            Self::assemble(model, options, pools, float, prepared, false)
        })
    }

    /// The runtime around the float plans, or the int8 ones `prepared` describes.
    fn assemble(
        model: OnnxModel,
        options: &LoadOptions,
        pools: Pools,
        float: Plans,
        prepared: Prepared,
        deployable: bool,
    ) -> Result<Self> {
        let int8 = !matches!(prepared, Prepared::Float);
        if int8 && crate::kernels::Isa::detect() == crate::kernels::Isa::SCALAR {
            log::warn!(
                "{}: this CPU has neither AVX-512 VNNI nor AVX2, so the int8 layers run the \
                 portable scalar kernels, far slower than the float model",
                model.source
            );
        }
        // A deployable file's weights are its int8 codes, not masters an update could change.
        let (masters, onnx_layers) = match deployable {
            true => (Arc::new(Weights::new()), Vec::new()),
            false => (model.weights.clone(), model.layers.clone()),
        };
        if let Some(expected) = model.metadata_value(CHECKSUM_KEY).filter(|_| !deployable) {
            let actual = weights::checksum(&masters);
            if actual != expected {
                return Err(Error::ModelLoad {
                    path: model.source.clone(),
                    reason: format!(
                        "the float weights do not match the checksum saved with them ({actual} \
                         instead of {expected}): the file was corrupted or edited"
                    ),
                });
            }
        }
        let (plans, slots, quantization) = prepare(float, prepared, &onnx_layers, &masters)?;
        let number =
            model.metadata_value(VERSION_KEY).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let quantization = quantization.map(Arc::new);
        let first =
            Version::new(number, masters.clone(), Arc::new(plans), Arc::new(slots), quantization);
        let runtime = Runtime {
            model,
            versions: Versions::new(first),
            original: masters,
            onnx_layers,
            loaded_version: number,
            deployable,
            max_memory_bytes: options.max_memory_bytes,
            allow_non_finite: options.allow_non_finite,
            threads: pools.max_threads(),
            options: options.clone(),
            monitor: Monitor::new(pools.max_threads(), options.max_cpu_percent),
            pools,
        };
        runtime.announce();
        Ok(runtime)
    }

    /// Makes a runtime from bytes [`Runtime::to_bytes`] (or `save`) produced — how a runtime
    /// travels to other processes. `source` names the model in messages. An int8 runtime's
    /// bytes rebuild the same int8 plan without calibration data.
    pub fn from_bytes(bytes: &[u8], source: &str, options: &LoadOptions) -> Result<Self> {
        catch_panics("loading the model", || {
            Self::from_saved(SavedModel::from_bytes(bytes, source, None)?, options)
        })
    }

    /// The options this runtime was loaded with, the CPU cap as it is now.
    pub fn options(&self) -> LoadOptions {
        LoadOptions { max_cpu_percent: self.cpu_limit(), ..self.options.clone() }
    }

    /// The CPU cap in percent of one core, if any.
    pub fn cpu_limit(&self) -> Option<f64> {
        self.monitor.throttle.limit()
    }

    /// Sets (or, with `None`, removes) the CPU cap; see [`LoadOptions::max_cpu_percent`].
    pub fn set_cpu_limit(&self, percent: Option<f64>) -> Result<()> {
        check_cpu_limit(percent)?;
        self.monitor.throttle.set_limit(percent);
        log::info!("{}: CPU cap {}", self.model.source, describe_limit(percent));
        Ok(())
    }

    /// The weights in `masters` that differ from the ones loaded.
    fn changed_since_load(&self, masters: &Weights) -> Weights {
        masters
            .iter()
            .filter(|(name, t)| self.original.get(*name).is_none_or(|o| !Arc::ptr_eq(o, t)))
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect()
    }

    /// Whether the model runs with int8 layers.
    pub fn quantized(&self) -> bool {
        self.versions.current().quantization.is_some()
    }

    /// The quantization outcome, if the model was quantized.
    pub fn quantization(&self) -> Option<Arc<QuantizationSummary>> {
        self.versions.current().quantization.clone()
    }

    /// The analysed model this runtime was built from.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// The decluttered tract graph (BatchNorm folded, reshapes simplified) the current plans
    /// run, with the int8 ops in place for an int8 runtime.
    pub fn decluttered(&self) -> Option<TypedModel> {
        self.versions.current().plans.decluttered().cloned()
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
    /// The whole call runs on one version of the weights. Under a CPU cap the call may first
    /// pause, and runs with the threads the throttle allows.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let executor = self.pools.get(self.monitor.admit())?;
        let version = self.versions.current();
        if !self.allow_non_finite {
            for (spec, tensor) in self.model.inputs.iter().zip(&inputs) {
                crate::model::check_finite(spec, tensor)?;
            }
        }
        if let Some(limit) = self.max_memory_bytes {
            let bindings = bind_inputs(&self.model.inputs, &inputs)?;
            let needed = version.plans.tensor_bytes(&bindings, &inputs)?;
            if needed > u128::from(limit) {
                return Err(Error::config(
                    "max_memory_mb",
                    format!(
                        "this call needs about {} MB of tensors ({bindings:?}), over the limit \
                         of {} MB; use smaller batches",
                        needed / 1_000_000,
                        limit / 1_000_000
                    ),
                ));
            }
        }
        let start = Instant::now();
        let outputs = run_plans(&version.plans, &self.model.inputs, inputs, executor)?;
        self.monitor.record(start.elapsed());
        Ok(outputs)
    }

    /// The executor for work other than inference (learning): the threads the throttle allows
    /// now, without pausing.
    fn executor_now(&self) -> Result<Executor> {
        self.pools.get(self.monitor.throttle.status().threads)
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

    pub(crate) fn input_names(&self) -> String {
        self.model.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// Runs `plans` on inputs in the order of `specs`, after checking them, on `executor`.
fn run_plans(
    plans: &Plans,
    specs: &[TensorSpec],
    inputs: Vec<Tensor>,
    executor: Executor,
) -> Result<Vec<Tensor>> {
    run_plans_with(plans, specs, inputs, executor, |plan, values| plan.run(values))
}

/// [`run_plans`] with `execute` running the chosen plan on the inputs (a plain run, or one
/// that times each node: `profile`).
fn run_plans_with(
    plans: &Plans,
    specs: &[TensorSpec],
    inputs: Vec<Tensor>,
    executor: Executor,
    execute: impl FnOnce(&Arc<TypedSimplePlan>, TVec<TValue>) -> TractResult<TVec<TValue>> + Send,
) -> Result<Vec<Tensor>> {
    if inputs.len() != specs.len() {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::input(
            names.join(", "),
            format!("the model takes {} input(s), {} given", names.len(), inputs.len()),
        ));
    }
    let bindings = bind_inputs(specs, &inputs)?;
    let pool = match &executor {
        Executor::MultiThread(pool) => Some(pool.clone()),
        _ => None,
    };
    let plan = plans.get(&bindings, &inputs)?;
    let run = move || {
        catch_panics("inference", || {
            let values: TVec<TValue> = inputs.into_iter().map(TValue::from).collect();
            let outputs = multithread_tract_scope(executor, || execute(&plan, values))
                .map_err(|e| Error::Inference(chain(&e)))?;
            outputs.into_iter().map(outputs::exchangeable).collect()
        })
    };
    match pool {
        // The whole run on a pool thread: each op's parallel section then starts where it
        // is, instead of being handed over from this thread and waited for, op after op.
        Some(pool) => pools::run_with_workers_awake(&pool, run),
        None => run(),
    }
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

/// The plans a runtime runs, the slots updates reach, and the int8 summary, from the float
/// plans and what was prepared besides them.
pub(super) fn prepare(
    float: Plans,
    prepared: Prepared,
    onnx_layers: &[OnnxLayer],
    masters: &Weights,
) -> Result<(Plans, Slots, Option<QuantizationSummary>)> {
    match prepared {
        Prepared::Float => {
            let slots = match float.decluttered() {
                Some(graph) => Slots::new(graph, onnx_layers, masters, &HashMap::new(), true)?,
                // Updates of a graph typed per signature rebuild it: no layer is swapped alone.
                None => Slots::default(),
            };
            Ok((float, slots, None))
        }
        Prepared::Int8(q) => {
            let int8: HashMap<String, Int8Input> = q
                .layers
                .iter()
                .map(|(c, a)| (c.name.clone(), (*a, c.input_stats.clone())))
                .collect();
            let per_channel = q.summary.options.per_channel;
            let graph = float
                .decluttered()
                .ok_or_else(|| Error::Internal("int8 graph of a per-signature model".into()))?;
            let slots = Slots::new(graph, onnx_layers, masters, &int8, per_channel)?;
            let plans = Plans::new(&q.typed, None, float.name())?;
            Ok((plans, slots, Some(q.summary)))
        }
        Prepared::Int8PerSignature(summary) => {
            let plans = float.with_transform(crate::quantize::per_signature_rewrite(&summary))?;
            Ok((plans, Slots::default(), Some(summary)))
        }
    }
}

/// Refuses a plan cache that could hold no plan.
fn check_max_plans(max_plans: Option<usize>) -> Result<()> {
    match max_plans {
        Some(0) => Err(Error::config("max_plans", "0: the cache must hold at least one plan")),
        _ => Ok(()),
    }
}

/// Refuses a CPU cap that is not a positive, finite percentage.
fn check_cpu_limit(percent: Option<f64>) -> Result<()> {
    match percent {
        Some(p) if !(p.is_finite() && p > 0.0) => Err(Error::config(
            "max_cpu_percent",
            format!("{p} is not a positive percentage (100 = one core)"),
        )),
        _ => Ok(()),
    }
}

fn describe_limit(percent: Option<f64>) -> String {
    percent.map_or_else(|| "removed".to_string(), |p| format!("{p}% of one core"))
}
