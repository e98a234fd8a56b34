//! What a runtime is doing and holding, measured ([`Runtime::status`]), and the lines it logs
//! when it is ready.

use std::collections::HashSet;
use std::sync::Arc;

use super::Runtime;
use crate::kernels::Isa;
use crate::monitor::{process, system};
use crate::plan::{graph_bytes, tensor_bytes};

const MB: f64 = 1024.0 * 1024.0;

/// A snapshot of a runtime's figures (`get_status()` in Python).
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// CPU used by this whole process over the last two seconds or so, in percent of one core
    /// (as `top` shows it: 200 = two cores busy).
    pub cpu_usage: Option<f64>,
    /// Weights and model data this runtime holds, in MiB: the ONNX bytes, float masters of
    /// every kept version, constants of the graphs and plans (tract's packed panels included),
    /// int8 layer weights. Buffers of a call are freed when it returns, so none are counted.
    pub memory_allocated_mb: f64,
    /// Resident memory of the whole process, in MiB.
    pub rss_mb: Option<f64>,
    /// Successful inference calls since load.
    pub inferences: u64,
    /// Latency of the model run (pauses of the throttle excluded) over the last 1,024 calls.
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub quantized: bool,
    pub version: u64,
    /// Threads inference runs with now (lowered by the throttle), and the most it may use.
    pub threads: usize,
    pub max_threads: usize,
    /// Whether the throttle held work back in the last two seconds.
    pub throttled: bool,
    /// The CPU cap and the budget after backing off for other processes, percent of one core.
    pub cpu_limit: Option<f64>,
    pub cpu_budget: Option<f64>,
    /// CPU other processes used lately, percent of one core (measured while a cap is set).
    pub other_cpu_usage: Option<f64>,
    /// The machine's one-minute load average.
    pub load_average: Option<f64>,
    /// Instruction set of the int8 kernels (`avx512_vnni`, `avx_vnni`, `avx2`, `neon_i8mm`,
    /// `neon_dotprod`, `neon` or `scalar`).
    pub isa: &'static str,
    /// Concrete plans cached now (one per input signature), the most kept, and the weights
    /// they hold beyond the rest of the runtime's, in MiB.
    pub plans_cached: usize,
    pub max_plans: usize,
    pub plan_cache_mb: f64,
}

impl Runtime {
    /// Measures the runtime's figures now.
    pub fn status(&self) -> Status {
        let latency = self.monitor.latencies.percentiles();
        let (plans_cached, max_plans) = self.versions.current().plans.cached();
        let throttle = self.monitor.throttle.status();
        Status {
            cpu_usage: self.monitor.cpu.percent(),
            memory_allocated_mb: self.held_bytes() as f64 / MB,
            rss_mb: process::rss_bytes().map(|b| b as f64 / MB),
            inferences: self.monitor.latencies.count(),
            latency_ms_p50: latency.map(|l| l.p50),
            latency_ms_p99: latency.map(|l| l.p99),
            quantized: self.quantized(),
            version: self.version(),
            threads: throttle.threads,
            max_threads: self.threads,
            throttled: throttle.throttled,
            cpu_limit: throttle.limit,
            cpu_budget: throttle.budget,
            other_cpu_usage: throttle.other_cores.map(|c| c * 100.0),
            load_average: system::load_average(),
            isa: Isa::detect().name(),
            plans_cached,
            max_plans,
            plan_cache_mb: self.plan_cache_bytes() as f64 / MB,
        }
    }

    /// Bytes of everything this runtime holds for its model, each allocation counted once
    /// however many versions or plans share it.
    pub fn held_bytes(&self) -> usize {
        let mut seen = HashSet::new();
        let mut bytes = self.model.onnx.len();
        if let Some(typed) = self.model.graph.symbolic() {
            bytes += graph_bytes(typed, &mut seen);
        }
        let masters = |weights: &crate::model::weights::Weights, seen: &mut HashSet<usize>| {
            weights
                .values()
                .filter(|t| seen.insert(Arc::as_ptr(t) as usize))
                .map(|t| tensor_bytes(t))
                .sum::<usize>()
        };
        bytes += masters(&self.original, &mut seen);
        for version in self.versions.all() {
            bytes += masters(&version.masters, &mut seen);
            bytes += version.plans.held_bytes(&mut seen);
            for (_, features) in version.features_snapshot() {
                bytes += features.held_bytes(&mut seen);
            }
        }
        bytes
    }

    /// Bytes of weights held by the current version's cached concrete plans alone (tract packs
    /// constants anew per plan; int8 layers and constants shared with the float graph are not
    /// counted).
    pub fn plan_cache_bytes(&self) -> usize {
        let version = self.versions.current();
        let mut seen = HashSet::new();
        if let Some(decluttered) = version.plans.decluttered() {
            graph_bytes(decluttered, &mut seen);
        }
        version.plans.cache_bytes(&mut seen)
    }

    /// Logs, through `log` (Python's `logging` under the bindings), that the runtime is ready:
    /// precision, kernels, threads and model; for int8, the quantization summary and a warning
    /// per layer left in float.
    pub(super) fn announce(&self) {
        let source = &self.model.source;
        let precision = match self.quantization() {
            Some(_) => format!("int8 ({})", Isa::detect().name()),
            None => "float32 (tract kernels)".to_string(),
        };
        let plural = if self.threads == 1 { "" } else { "s" };
        log::info!(
            "Rust performance layer active: {precision}, {} thread{plural}, {source}",
            self.threads
        );
        if let Some(limit) = self.options.max_cpu_percent {
            log::info!("{source}: CPU capped at {limit}% of one core");
        }
        let Some(q) = self.quantization() else { return };
        let int8 = q.report.iter().filter(|l| l.int8).count();
        let calibration = if q.samples > 0 {
            format!("{} calibration on {} samples", q.options.method, q.samples)
        } else {
            "calibrated parameters from the file".to_string()
        };
        log::info!(
            "{source}: {int8}/{} layers int8 ({calibration}, per-channel {}); weights {:.2} MB \
             float -> {:.2} MB int8",
            q.report.len(),
            q.options.per_channel,
            q.float_weight_bytes as f64 / MB,
            q.int8_weight_bytes as f64 / MB
        );
        for layer in q.report.iter().filter(|l| !l.int8) {
            log::warn!(
                "{source}: layer {} left in float: {}",
                layer.name,
                layer.reason.as_deref().unwrap_or("no reason recorded")
            );
        }
    }
}
