//! Post-training INT8 quantization: calibrate, choose parameters, rewrite the graph with the
//! project's int8 ops, measure each layer against float, and the saved int8 format (`qdq`).

pub mod bias;
pub mod input;
mod layer;
mod link;
pub mod qdq;
pub mod qparams;
mod report;
mod residual;
mod rewrite;
pub mod rounding;
mod rows;
mod speed;
mod tidy;

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

pub use layer::{build_op, quantize_layer, LayerNumbers};
pub use report::{compare, measure_layers, LayerReport};
pub use rewrite::{find_layers, Candidate, LayerKind, Skipped, WeightOrder};

use crate::calibrate::{Calibrator, Method};
use crate::error::{chain, Error, Result};
use crate::model::TensorSpec;
use crate::ops::int8_layer;
use crate::plan::{Plans, Transform};
use input::{InputStats, InputStatsByLayer};
use qdq::onnx_node_name;
use qparams::ActivationQuant;

/// How to quantize.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub method: Method,
    /// One weight scale per output channel (else one per tensor).
    pub per_channel: bool,
    /// Node or tensor names of layers to keep in float.
    pub exclude: Vec<String>,
    /// Time each layer both ways on calibration data and keep float where int8 is clearly
    /// slower (`speed`). Timings vary from run to run, so with it two calibrations of the same
    /// model on the same data can choose different layers; without it they are bit-identical.
    pub speed_fallback: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: Method::DEFAULT,
            per_channel: true,
            exclude: Vec::new(),
            speed_fallback: true,
        }
    }
}

/// A source of calibration batches (inputs in model order); `Ok(None)` ends the data.
pub type BatchSource<'a> = dyn FnMut() -> Result<Option<Vec<Tensor>>> + Send + 'a;

/// What quantization produced, for reports.
#[derive(Debug, Clone)]
pub struct QuantizationSummary {
    pub options: QuantizeOptions,
    /// One entry per Conv/MatMul-like layer: int8 ones worst first, then those left in float.
    pub report: Vec<LayerReport>,
    /// Calibration batches and samples seen.
    pub batches: usize,
    pub samples: usize,
    /// The fixed bound on calibration memory (histograms), whatever the data size.
    pub calibration_bytes: usize,
    /// Bytes of float weights replaced, and of int8 weights holding them now.
    pub float_weight_bytes: usize,
    pub int8_weight_bytes: usize,
    /// Each int8 layer (tract node name) and its input's quantization: what `save` records.
    pub activations: Vec<(String, ActivationQuant)>,
    /// Int8 layer outputs passed to the next int8 layers, or to a max pool before them, as u8
    /// codes (no float round trip).
    pub linked_outputs: usize,
    /// Each int8 layer's input statistics (bias correction, 8-bit lattice), by layer name.
    pub input_stats: InputStatsByLayer,
}

/// The outcome of [`quantize`]: the graph with int8 ops in place of the quantized layers.
#[derive(Debug)]
pub struct Quantized {
    pub typed: TypedModel,
    pub summary: QuantizationSummary,
    /// The int8 layers as found in the float graph, with their input quantization.
    pub layers: Vec<(Candidate, ActivationQuant)>,
}

/// Calibrates the float model of `float` on `batches` and returns the int8 graph with its
/// report. The layers are found in the float graph typed for the first batch (the symbolic
/// graph, or that batch's signature for a graph typed per signature); the returned graph and
/// report are of that graph.
pub fn quantize(
    float: &Plans,
    inputs: &[TensorSpec],
    batches: &mut BatchSource<'_>,
    options: &QuantizeOptions,
    executor: Executor,
) -> Result<Quantized> {
    let rewrite = |e: TractError| Error::Rewrite(chain(&e));
    let Some(first_batch) = batches()? else {
        return Err(Error::Calibration("no calibration data: the source yielded nothing".into()));
    };
    let reference = float.typed_for(&first_batch)?;
    let decluttered = &reference;
    let (mut candidates, skipped) = find_layers(decluttered, &options.exclude).map_err(rewrite)?;
    let observed: Vec<OutletId> = candidates.iter().map(|c| c.input).collect();
    let mut calibrator = Calibrator::new(decluttered, inputs, &observed, executor.clone())?;
    calibrator.track_means(&candidates.iter().map(bias::mean_layout).collect::<Vec<_>>());
    calibrator.track_lattices(
        &candidates.iter().map(|c| input::lattice_eligible(decluttered, c)).collect::<Vec<_>>(),
    );
    calibrator.track_patches(candidates.iter().map(rounding::patch_layout).collect());
    let retype = |batch: &[Tensor]| float.typed_for(batch);
    calibrator.observe(first_batch.clone(), retype)?;
    while let Some(batch) = batches()? {
        calibrator.observe(batch, retype)?;
    }
    let (batch_count, samples) = calibrator.seen();
    log::info!("calibrated on {samples} samples in {batch_count} batches ({})", options.method);

    let mut ranges: Vec<(f32, f32)> =
        calibrator.observers().iter().map(|observer| observer.range(options.method)).collect();
    let stats = calibrator.means().into_iter().zip(calibrator.lattices());
    let stats = stats.zip(calibrator.patch_moments());
    for (candidate, ((means, lattice), moments)) in candidates.iter_mut().zip(stats) {
        candidate.input_stats =
            Arc::new(InputStats { means, lattice, moments, ..InputStats::default() });
    }
    share_split_layers(&mut candidates, &mut ranges);
    let activations: Vec<ActivationQuant> =
        ranges.iter().map(|&(low, high)| ActivationQuant::from_range(low, high)).collect();
    rows::choose_row_quantization(
        decluttered,
        &mut candidates,
        &activations,
        options.per_channel,
        inputs,
        first_batch.clone(),
        executor.clone(),
    )?;
    let (candidates, activations, slower) = keep_faster_layers(
        decluttered,
        candidates,
        activations,
        (options.per_channel, options.speed_fallback),
        inputs,
        first_batch.clone(),
        executor.clone(),
    )?;
    let skipped: Vec<Skipped> = skipped.into_iter().chain(slower).collect();
    let rewritten = rewrite_layers(decluttered, &candidates, &activations, options.per_channel)?;
    let report = measure_layers(
        decluttered,
        &rewritten.typed,
        &candidates,
        &rewritten.outlets,
        &skipped,
        inputs,
        first_batch,
        executor,
    )?;
    let summary = QuantizationSummary {
        batches: batch_count,
        samples,
        calibration_bytes: calibrator.memory_bound_bytes(),
        ..QuantizationSummary::of_layers(options, report, &candidates, &activations, &rewritten)
    };
    let layers = candidates.into_iter().zip(activations).collect();
    linked(Quantized { typed: rewritten.typed, summary, layers })
}

impl QuantizationSummary {
    /// The summary of the int8 layers `activations` (tract layer name, input quantization)
    /// with their input statistics and per-layer `report`; calibration counts, weight sizes
    /// and links are zero until filled in.
    fn new(
        options: &QuantizeOptions,
        report: Vec<LayerReport>,
        activations: Vec<(String, ActivationQuant)>,
        input_stats: InputStatsByLayer,
    ) -> Self {
        QuantizationSummary {
            options: options.clone(),
            report,
            batches: 0,
            samples: 0,
            calibration_bytes: 0,
            float_weight_bytes: 0,
            int8_weight_bytes: 0,
            activations,
            linked_outputs: 0,
            input_stats,
        }
    }

    /// The summary of int8 `candidates` with input quantizations `activations`, rewritten into
    /// `rewritten`, before calibration counts and linking are filled in.
    fn of_layers(
        options: &QuantizeOptions,
        report: Vec<LayerReport>,
        candidates: &[Candidate],
        activations: &[ActivationQuant],
        rewritten: &Rewritten,
    ) -> Self {
        let names = candidates.iter().map(|c| c.name.clone());
        let stats = candidates.iter().map(|c| (c.name.clone(), c.input_stats.clone()));
        QuantizationSummary {
            float_weight_bytes: rewritten.float_bytes,
            int8_weight_bytes: rewritten.int8_bytes,
            ..Self::new(
                options,
                report,
                names.zip(activations.iter().copied()).collect(),
                stats.collect(),
            )
        }
    }
}

/// Signal-to-noise ratio (dB) of a layer's int8 output against float, on the same float input,
/// below which the layer stays float: cosine ≈ 0.985, where one layer alone would cost an
/// ImageNet CNN points of top-1.
const MIN_LAYER_SQNR_DB: f64 = 15.0;
/// How much slower (median) an int8 layer must be, and consistently, to stay float: a layer
/// near a tie could go either way from one calibration to the next on a busy machine.
const SLOWER: f64 = 1.25;
/// And by at least this much (ms): tens of microseconds per call swing between processes with
/// the machine's state (a 1-channel stem measured 0.045 against 0.025 ms in one run, a tie in
/// the next), and a layer that loses less costs little.
const MIN_LOSS_MS: f64 = 0.05;

/// The candidates whose int8 op is neither measured slower than their float layer nor too far
/// from it, with their input quantizations, and the others as skipped layers saying why
/// (`speed`).
#[allow(clippy::too_many_arguments)]
fn keep_faster_layers(
    float: &TypedModel,
    candidates: Vec<Candidate>,
    activations: Vec<ActivationQuant>,
    (per_channel, speed_fallback): (bool, bool),
    inputs: &[TensorSpec],
    batch: Vec<Tensor>,
    executor: Executor,
) -> Result<(Vec<Candidate>, Vec<ActivationQuant>, Vec<Skipped>)> {
    let times =
        speed::time_layers(float, &candidates, &activations, per_channel, inputs, batch, executor)?;
    // The parts of a layer tract split go together: the saved file quantizes ONNX nodes.
    let mut by_node: HashMap<&str, speed::LayerTimes> = HashMap::new();
    for (candidate, time) in candidates.iter().zip(&times) {
        if let Some(t) = time {
            let total =
                by_node.entry(onnx_node_name(&candidate.name)).or_insert(speed::LayerTimes {
                    float_ms: 0.0,
                    int8_ms: 0.0,
                    sqnr_db: f64::INFINITY,
                    consistently_slower: true,
                });
            total.float_ms += t.float_ms;
            total.int8_ms += t.int8_ms;
            total.sqnr_db = total.sqnr_db.min(t.sqnr_db);
            total.consistently_slower &= t.consistently_slower;
        }
    }
    let by_node: HashMap<String, speed::LayerTimes> =
        by_node.into_iter().map(|(name, t)| (name.to_string(), t)).collect();
    let (mut kept, mut kept_activations, mut slower) = (Vec::new(), Vec::new(), Vec::new());
    for (candidate, activation) in candidates.into_iter().zip(activations) {
        let time = by_node.get(onnx_node_name(&candidate.name));
        let reason = time.and_then(|t| {
            log::debug!(
                "{}: int8 {:.3} ms, float {:.3} ms, {:.1} dB from float",
                candidate.name,
                t.int8_ms,
                t.float_ms,
                t.sqnr_db
            );
            if t.sqnr_db < MIN_LAYER_SQNR_DB {
                Some(format!(
                    "int8 output {:.1} dB from float on calibration data (below {MIN_LAYER_SQNR_DB} dB)",
                    t.sqnr_db
                ))
            } else if speed_fallback
                && t.consistently_slower
                && t.int8_ms > SLOWER * t.float_ms
                && t.int8_ms - t.float_ms >= MIN_LOSS_MS
            {
                Some(format!(
                    "int8 measured slower than float ({:.3} ms against {:.3} ms)",
                    t.int8_ms, t.float_ms
                ))
            } else {
                None
            }
        });
        match reason {
            Some(reason) => {
                log::info!("{}: stays float: {reason}", candidate.name);
                slower.push(Skipped { name: candidate.name, reason });
            }
            None => {
                kept.push(candidate);
                kept_activations.push(activation);
            }
        }
    }
    Ok((kept, kept_activations, slower))
}

/// Gives the parts of an ONNX layer that tract split in several (a convolution whose output
/// a `Split` cuts, or whose input a `Concat` joins) one input range, their union, and no
/// per-channel statistics: the saved file holds one quantization per ONNX node, and the int8
/// graph rebuilt from it must be the one calibrated.
fn share_split_layers(candidates: &mut [Candidate], ranges: &mut [(f32, f32)]) {
    let mut union: HashMap<String, (f32, f32, usize)> = HashMap::new();
    for (candidate, &(low, high)) in candidates.iter().zip(ranges.iter()) {
        let entry = union.entry(onnx_node_name(&candidate.name).to_string()).or_insert((
            f32::INFINITY,
            f32::NEG_INFINITY,
            0,
        ));
        *entry = (entry.0.min(low), entry.1.max(high), entry.2 + 1);
    }
    for (candidate, range) in candidates.iter_mut().zip(ranges.iter_mut()) {
        if let Some(&(low, high, parts)) = union.get(onnx_node_name(&candidate.name)) {
            if parts > 1 {
                *range = (low, high);
                candidate.input_stats = Arc::new(InputStats::default());
            }
        }
    }
}

/// Rebuilds the int8 graph from saved activation parameters and input means (by layer name):
/// no calibration, and the same weights give the same codes, so the plan is bit-identical to
/// the one saved.
pub fn quantize_with_saved(
    decluttered: &TypedModel,
    saved: &[(String, ActivationQuant)],
    stats: &InputStatsByLayer,
    options: &QuantizeOptions,
) -> Result<Quantized> {
    let rewrite = |e: TractError| Error::Rewrite(chain(&e));
    let (all, mut skipped) = find_layers(decluttered, &options.exclude).map_err(rewrite)?;
    // Files from other quantizers name layers by ONNX node; ours by tract node: compare both
    // without tract's expansion suffixes.
    // A layer tract split into parts (`….einsum.split-over-1.0..32`) keeps its own name: look
    // the exact name up first, so the parts do not share one part's parameters.
    let exact: HashMap<&str, ActivationQuant> =
        saved.iter().map(|(n, q)| (n.as_str(), *q)).collect();
    let by_name: HashMap<&str, ActivationQuant> =
        saved.iter().map(|(n, q)| (onnx_node_name(n), *q)).collect();
    let (mut candidates, mut activations) = (Vec::new(), Vec::new());
    for mut layer in all {
        let found =
            exact.get(layer.name.as_str()).or_else(|| by_name.get(onnx_node_name(&layer.name)));
        match found {
            Some(q) => {
                if let Some(s) = stats.get(&layer.name) {
                    layer.input_stats = s.clone();
                }
                activations.push(*q);
                candidates.push(layer);
            }
            None => {
                skipped.push(Skipped { name: layer.name, reason: "float in the saved file".into() })
            }
        }
    }
    let rewritten = rewrite_layers(decluttered, &candidates, &activations, options.per_channel)?;
    let report = candidates
        .iter()
        .map(|c| LayerReport::int8(c, None))
        .chain(skipped.iter().map(LayerReport::float))
        .collect();
    let summary =
        QuantizationSummary::of_layers(options, report, &candidates, &activations, &rewritten);
    let layers = candidates.into_iter().zip(activations).collect();
    linked(Quantized { typed: rewritten.typed, summary, layers })
}

/// The rewrite that gives each graph typed for a signature the int8 layers of `summary` (its
/// saved or calibrated parameters, by layer name): how a graph typed per signature runs int8
/// at every shape with one calibration.
pub fn per_signature_rewrite(summary: &QuantizationSummary) -> Transform {
    let activations = summary.activations.clone();
    let stats = summary.input_stats.clone();
    let options = QuantizeOptions { exclude: Vec::new(), ..summary.options.clone() };
    Arc::new(move |typed: TypedModel| {
        Ok(quantize_with_saved(&typed, &activations, &stats, &options)?.typed)
    })
}

/// The summary of int8 parameters read from a file, for a graph typed per signature (whose
/// layers are only found once a signature types it): each saved layer reported int8.
pub fn summary_from_saved(
    saved: &[(String, ActivationQuant)],
    stats: &InputStatsByLayer,
    options: &QuantizeOptions,
) -> QuantizationSummary {
    let report = saved.iter().map(|(name, _)| LayerReport::saved(name)).collect();
    QuantizationSummary::new(options, report, saved.to_vec(), stats.clone())
}

/// `quantized` with its consecutive int8 layers linked and its max pools on the project's
/// kernel (after the per-layer report, which reads every layer's float output).
fn linked(mut quantized: Quantized) -> Result<Quantized> {
    let folded = tidy::fold_downsamples(&mut quantized.typed)
        .map_err(|e| Error::Rewrite(format!("folding downsamples: {}", chain(&e))))?;
    log::debug!("{folded} strided 1×1 convolutions read their input directly");
    let fused = residual::fuse_residual_adds(&mut quantized.typed)
        .map_err(|e| Error::Rewrite(format!("fusing residual adds: {}", chain(&e))))?;
    log::debug!("{fused} residual adds are added by the int8 layer before them");
    let count = link::link_int8_layers(&mut quantized.typed)
        .map_err(|e| Error::Rewrite(format!("linking int8 layers: {}", chain(&e))))?;
    log::debug!("{count} int8 layer outputs pass u8 codes to the next int8 layers");
    quantized.summary.linked_outputs = count;
    let pools = tidy::replace_max_pools(&mut quantized.typed)
        .map_err(|e| Error::Rewrite(format!("replacing max pools: {}", chain(&e))))?;
    log::debug!("{pools} max pools run on the int8 graph's own kernel");
    let pooled = link::link_max_pools(&mut quantized.typed)
        .map_err(|e| Error::Rewrite(format!("linking max pools: {}", chain(&e))))?;
    log::debug!("{pooled} max pools take the maximum of the codes before them");
    quantized.summary.linked_outputs += pooled;
    Ok(quantized)
}

/// The int8 graph and its weight sizes.
struct Rewritten {
    typed: TypedModel,
    outlets: Vec<OutletId>,
    float_bytes: usize,
    int8_bytes: usize,
}

/// Replaces each candidate layer (with its input quantization) by its int8 op.
fn rewrite_layers(
    decluttered: &TypedModel,
    candidates: &[Candidate],
    activations: &[ActivationQuant],
    per_channel: bool,
) -> Result<Rewritten> {
    let mut typed = decluttered.clone();
    let mut replaced = HashMap::new();
    let mut outlets = Vec::with_capacity(candidates.len());
    let (mut float_bytes, mut int8_bytes) = (0, 0);
    for (layer, &input) in candidates.iter().zip(activations) {
        let op = build_op(layer, &layer.weights, input, per_channel)?;
        float_bytes += layer.weights.len() * 4 + layer.bias.len() * 4;
        int8_bytes += int8_layer(&*op).map_or(0, |l| l.weights.bytes());
        let outlet = rewrite::substitute(&mut typed, layer, op, &mut replaced)
            .map_err(|e| Error::Rewrite(chain(&e)))?;
        outlets.push(outlet);
    }
    Ok(Rewritten { typed, outlets, float_bytes, int8_bytes })
}
