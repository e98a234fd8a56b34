//! Live weight updates on a [`Runtime`]: deltas, rollback, the head learner, and reading weights.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{prepare, run_plans, Prepared, Runtime};
use crate::error::{catch_panics, Error, Result};
use crate::kernels::Activation;
use crate::learn::{apply_deltas, check_enabled, head_gradient, Slots, Version};
use crate::model::weights::{self, Weights};
use crate::model::OnnxModel;
use crate::plan::Plans;
use crate::quantize::{BatchSource, LayerKind, QuantizationSummary, QuantizeOptions};

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// The version now current.
    pub version: u64,
    /// The int8 layers re-quantized and swapped in place; empty when the model was rebuilt.
    pub swapped_layers: Vec<String>,
    /// Whether the plans were rebuilt from the updated ONNX weights (weights that tract folded
    /// into other constants, layers running in float).
    pub rebuilt: bool,
}

/// What one head-learning step did.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnStep {
    pub version: u64,
    /// The layer trained (tract node name) and its ONNX weight.
    pub layer: String,
    pub weight: String,
    /// Mean cross-entropy and accuracy of the batch before the step.
    pub loss: f32,
    pub accuracy: f32,
}

impl Runtime {
    /// Refuses a change of weights when learning is disabled, or when the runtime came from a
    /// deployable file (it has no float master weights to change).
    fn check_learnable(&self) -> Result<()> {
        check_enabled()?;
        if self.deployable {
            return Err(Error::Update(format!(
                "{} is a deployable int8 file (saved with learnable=False): it holds int8 codes, \
                 not the float master weights an update changes; update the runtime the file \
                 was saved from, or a learnable save of it",
                self.model.source
            )));
        }
        Ok(())
    }

    /// The version of the weights inference runs on now.
    pub fn version(&self) -> u64 {
        self.versions.current().number
    }

    /// The versions `rollback` can return to, oldest first (the current one last).
    pub fn versions(&self) -> Vec<u64> {
        self.versions.numbers()
    }

    /// Keeps at most `capacity` versions (the current one included) for rollback.
    pub fn set_history(&self, capacity: usize) -> Result<()> {
        self.versions.set_capacity(capacity)
    }

    /// Bytes of float master weights that only past versions hold.
    pub fn history_bytes(&self) -> usize {
        self.versions.history_master_bytes()
    }

    /// Names of the float weights `update` accepts, sorted.
    pub fn weight_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.versions.current().masters.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// A copy of the current float (master) value of the weight called `name`.
    pub fn weights(&self, name: &str) -> Result<Tensor> {
        let version = self.versions.current();
        version
            .masters
            .get(name)
            .map(|t| (**t).clone())
            .ok_or_else(|| Error::Update(format!("{name}: no float weight of that name")))
    }

    /// Adds `scale × delta` to each named float weight, atomically: inference keeps running on
    /// the previous version until the new one is published with one pointer swap, and every
    /// call runs wholly on one version. Int8 layers whose weight is the updated tensor are
    /// re-quantized (fresh per-channel scales) and re-packed alone; any other weight (folded by
    /// tract, or feeding float ops) rebuilds the plans from the updated ONNX weights.
    pub fn update(&self, deltas: &[(String, Tensor)], scale: f32) -> Result<UpdateOutcome> {
        self.check_learnable()?;
        catch_panics("updating the weights", || {
            let mut history = self.versions.writer();
            let current = self.versions.current();
            let start = std::time::Instant::now();
            let applied = apply_deltas(&current.masters, deltas, scale)?;
            let mut masters = (*current.masters).clone();
            let touched: Vec<String> = applied.weights.keys().cloned().collect();
            masters.extend(applied.weights);
            let masters = Arc::new(masters);
            let number = history.next_number();
            let (version, outcome) = match current.slots.int8_layers_for(&touched) {
                Some(layers) => {
                    let ops = layers
                        .iter()
                        .map(|&ix| current.slots.build(ix, &masters))
                        .collect::<Result<HashMap<_, _>>>()?;
                    let built = start.elapsed();
                    warn_on_growth(&current.slots, &applied.peaks, &layers);
                    let plans = current.plans.with_ops(&ops)?;
                    log::debug!(
                        "update to version {number}: deltas added, layers re-quantized and \
                         re-packed by {built:?}, plans re-made by {:?}",
                        start.elapsed()
                    );
                    let features = current
                        .features_snapshot()
                        .into_iter()
                        .map(|(layer, f)| {
                            // A head's features do not run the head: nothing to re-plan then.
                            let f = if f.holds_any(&ops) { Arc::new(f.with_ops(&ops)?) } else { f };
                            Ok((layer, f))
                        })
                        .collect::<Result<HashMap<_, _>>>()?;
                    let swapped: Vec<String> = ops.into_keys().collect();
                    let version = Version::new(
                        number,
                        masters,
                        Arc::new(plans),
                        current.slots.clone(),
                        current.quantization.clone(),
                    )
                    .with_features(features);
                    (
                        version,
                        UpdateOutcome { version: number, swapped_layers: swapped, rebuilt: false },
                    )
                }
                None => {
                    let (plans, slots) = self.rebuild(&masters, current.quantization.as_deref())?;
                    let q = current.quantization.clone();
                    let version =
                        Version::new(number, masters, Arc::new(plans), Arc::new(slots), q);
                    (
                        version,
                        UpdateOutcome {
                            version: number,
                            swapped_layers: Vec::new(),
                            rebuilt: true,
                        },
                    )
                }
            };
            log::debug!(
                "update to version {number} ({} weight(s), {}) prepared in {:?}",
                touched.len(),
                if outcome.rebuilt { "rebuilt" } else { "swapped" },
                start.elapsed()
            );
            self.versions.publish(&mut history, version);
            Ok(outcome)
        })
    }

    /// Makes `version` (default: the previous one) current again; outputs are bit-identical to
    /// what that version gave. Versions after it leave the history. Returns the version now
    /// current.
    pub fn rollback(&self, version: Option<u64>) -> Result<u64> {
        self.check_learnable()?;
        self.versions.rollback(version)
    }

    /// One step of gradient descent (learning rate `lr`) on the softmax cross-entropy of a
    /// linear layer — `layer`, by layer or weight name, or the model's last linear layer —
    /// from the features the model computes for it on `inputs` (in model order), against
    /// `labels` (one class index per row of features). Applied through [`Runtime::update`].
    pub fn learn(
        &self,
        inputs: Vec<Tensor>,
        labels: &[i64],
        lr: f32,
        layer: Option<&str>,
    ) -> Result<LearnStep> {
        self.check_learnable()?;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Update(format!(
                "learning rate must be positive and finite, got {lr}"
            )));
        }
        let current = self.versions.current();
        let slot = current.slots.head(layer)?;
        let name = slot.template.name.clone();
        let LayerKind::Linear { kept_axes } = slot.template.kind else {
            return Err(Error::Update(format!("{name} is not a linear layer")));
        };
        if slot.template.activation != Activation::Identity {
            return Err(Error::Update(format!(
                "{name} applies {:?} after its product; the head learner needs a plain linear layer",
                slot.template.activation
            )));
        }
        let features = current.features(&name, || current.plans.features_of(&name))?;
        let values = run_plans(&features, &self.model.inputs, inputs, self.executor_now()?)?;
        let features =
            values.into_iter().next().ok_or_else(|| Error::Internal("no features".into()))?;
        let shape = features.shape().to_vec();
        let rows: usize = shape[..kept_axes.min(shape.len())].iter().product();
        if rows != labels.len() {
            return Err(Error::Update(format!(
                "{} labels for {rows} feature rows (features of {name} have shape {shape:?})",
                labels.len()
            )));
        }
        let features = features
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::Internal(format!("features of {name}: {e}")))?
            .iter()
            .copied()
            .collect::<Vec<f32>>();
        let (n, k) = (slot.template.n, slot.template.k);
        let master = current
            .masters
            .get(&slot.weight)
            .ok_or_else(|| Error::Internal(format!("no master weight {}", slot.weight)))?;
        let weights = slot.kernel_weights(master)?;
        let bias = match &slot.bias {
            Some(b) => current.masters.get(b).map_or_else(
                || slot.template.bias.clone(),
                |t| {
                    t.to_plain_array_view::<f32>()
                        .map(|v| v.iter().copied().collect())
                        .unwrap_or_default()
                },
            ),
            None => slot.template.bias.clone(),
        };
        let gradient = head_gradient(&features, labels, &weights, &bias, n, k)?;
        // The step is `−lr × gradient`, applied as the update's scale: the same floats as
        // scaling the gradient first, without another copy of the layer.
        let weight_delta = slot.to_master_layout(&gradient.weights, master.shape())?;
        let mut deltas = vec![(slot.weight.clone(), tensor(master.shape(), &weight_delta)?)];
        if let Some(b) = &slot.bias {
            deltas.push((b.clone(), tensor(&[n], &gradient.bias)?));
        }
        let weight = slot.weight.clone();
        drop(current);
        let outcome = self.update(&deltas, -lr)?;
        Ok(LearnStep {
            version: outcome.version,
            layer: name,
            weight,
            loss: gradient.loss,
            accuracy: gradient.accuracy,
        })
    }

    /// Re-runs calibration on `batches` with the current weights (after updates have moved
    /// activation ranges) and publishes the result as a new version: fresh activation
    /// parameters for every int8 layer, the same layers kept in float, `method` or the one used
    /// so far. The per-layer report is measured again. Returns the new version.
    pub fn recalibrate(
        &self,
        batches: &mut BatchSource<'_>,
        method: Option<crate::calibrate::Method>,
    ) -> Result<u64> {
        self.check_learnable()?;
        catch_panics("recalibrating", || {
            let mut history = self.versions.writer();
            let current = self.versions.current();
            let Some(q) = &current.quantization else {
                return Err(Error::Update(
                    "a float runtime has no quantization to recalibrate".into(),
                ));
            };
            let float = self.float_plans(&current.masters)?;
            let exclude = q.report.iter().filter(|l| !l.int8).map(|l| l.name.clone()).collect();
            let options = QuantizeOptions {
                method: method.unwrap_or(q.options.method),
                exclude,
                ..q.options.clone()
            };
            let quantized = crate::quantize::quantize(
                &float,
                &self.model.inputs,
                batches,
                &options,
                self.executor_now()?,
            )?;
            let prepared = if float.per_signature_typing() {
                Prepared::Int8PerSignature(quantized.summary)
            } else {
                Prepared::Int8(quantized)
            };
            let (plans, slots, summary) =
                prepare(float, prepared, &self.onnx_layers, &current.masters)?;
            let number = history.next_number();
            let summary = summary.map(Arc::new);
            let version = Version::new(
                number,
                current.masters.clone(),
                Arc::new(plans),
                Arc::new(slots),
                summary,
            );
            Ok(self.versions.publish(&mut history, version))
        })
    }

    /// The float plans of `masters`, rebuilt from the ONNX weights as a fresh load would.
    fn float_plans(&self, masters: &Weights) -> Result<Plans> {
        let changed = self.changed_since_load(masters);
        let proto = OnnxModel::decode(&self.model.onnx, &self.model.source)?;
        let proto = weights::with_weights(proto, &changed, &[])?;
        let bytes = Arc::new(prost::Message::encode_to_vec(&proto));
        let model =
            OnnxModel::from_proto(&proto, bytes, &self.model.source, self.model.dir.as_deref())?;
        Plans::from_graph(&model.graph, None, &model.source, self.options.plan_capacity())
    }

    /// Plans and slots for `masters`, rebuilt from the ONNX weights as a fresh load would,
    /// with the activation parameters of `quantization` kept.
    fn rebuild(
        &self,
        masters: &Weights,
        quantization: Option<&QuantizationSummary>,
    ) -> Result<(Plans, Slots)> {
        let float = self.float_plans(masters)?;
        let prepared = match (quantization, float.decluttered()) {
            (None, _) => Prepared::Float,
            (Some(q), Some(decluttered)) => {
                let options = QuantizeOptions { exclude: Vec::new(), ..q.options.clone() };
                Prepared::Int8(crate::quantize::quantize_with_saved(
                    decluttered,
                    &q.activations,
                    &q.input_stats,
                    &options,
                )?)
            }
            (Some(q), None) => Prepared::Int8PerSignature(q.clone()),
        };
        let (plans, slots, _) = prepare(float, prepared, &self.onnx_layers, masters)?;
        Ok((plans, slots))
    }
}

/// Warns when an update grows a layer's weights far beyond what its output range was
/// calibrated for: the next layer's input quantization may then clip.
fn warn_on_growth(slots: &Slots, peaks: &HashMap<String, (f32, f32)>, layers: &[usize]) {
    for &ix in layers {
        let slot = &slots.layers[ix];
        let Some(&(before, after)) = peaks.get(&slot.weight) else { continue };
        if before > 0.0 && after > 4.0 * before {
            log::warn!(
                "{}: weights grew {:.1}x in one update; activations downstream were calibrated \
                 for the old ones and may clip (re-quantize with fresh calibration data)",
                slot.template.name,
                after / before
            );
        }
    }
}

fn tensor(shape: &[usize], values: &[f32]) -> Result<Tensor> {
    Tensor::from_shape(shape, values).map_err(|e| Error::Internal(format!("{e}")))
}
