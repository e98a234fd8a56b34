//! Where each updatable weight lives in the running graph: the layers (Conv, Gemm, MatMul) whose
//! weight tensor is exactly one ONNX weight, so that an update to it re-quantizes and re-packs
//! that layer alone instead of rebuilding the model.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::error::{chain, Error, Result};
use crate::model::weights::{BatchNorm, OnnxLayer, Weights};
use crate::quantize::input::InputStats;
use crate::quantize::qdq::{onnx_node_name, DeployedLayer};
use crate::quantize::qparams::ActivationQuant;
use crate::quantize::{build_op, find_layers, quantize_layer, Candidate, LayerKind};

/// A layer an update can reach directly.
#[derive(Debug, Clone)]
pub struct LayerSlot {
    /// The layer as found in the float graph; its `weights` are not kept (the master is).
    pub template: Candidate,
    /// The input quantization when the layer runs in int8.
    pub int8: Option<ActivationQuant>,
    /// The ONNX weight holding the layer's weights, and whether it is stored transposed
    /// (`k × n`, a MatMul operand) relative to the layer's own weight constant.
    pub weight: String,
    pub transposed: bool,
    /// The ONNX weight holding the bias, if it is one.
    pub bias: Option<String>,
    /// The `BatchNormalization` tract folded into the layer: its weights are then the
    /// template's own (the ONNX weight scaled), not the master's.
    pub batch_norm: Option<BatchNorm>,
}

impl LayerSlot {
    /// The layer's weights in kernel order (`n × k`) from a master value: borrowed when the
    /// master already is in that order (a Gemm weight), so an update copies nothing here.
    pub fn kernel_weights<'m>(&self, master: &'m Tensor) -> Result<Cow<'m, [f32]>> {
        let misfit = || {
            Error::Internal(format!(
                "{}: {} does not fit the layer",
                self.template.name, self.weight
            ))
        };
        let view = master
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::Internal(format!("weight {} is not float32: {e}", self.weight)))?;
        let slice = view.to_slice().ok_or_else(misfit)?;
        if !self.transposed && self.template.order.is_identity() {
            return (slice.len() == self.template.n * self.template.k)
                .then_some(Cow::Borrowed(slice))
                .ok_or_else(misfit);
        }
        let values =
            if self.transposed { transpose(slice, master.shape()) } else { slice.to_vec() };
        self.template.order.to_kernel(&values).map(Cow::Owned).ok_or_else(misfit)
    }

    /// A kernel-order (`n × k`) gradient in the layout of the master weight.
    pub fn to_master_layout(&self, kernel: &[f32], master_shape: &[usize]) -> Result<Vec<f32>> {
        let values = self.template.order.from_kernel(kernel).ok_or_else(|| {
            Error::Internal(format!("{}: gradient does not fit the layer", self.template.name))
        })?;
        Ok(if self.transposed {
            // The constant is the master transposed: transpose back.
            let (rows, cols) = (master_shape[0], master_shape[1]);
            transpose(&values, &[cols, rows])
        } else {
            values
        })
    }
}

/// An int8 layer's input quantization and per-channel input means (for bias correction).
pub type Int8Input = (ActivationQuant, Arc<InputStats>);

/// Every layer an update can reach directly, by the ONNX weights that feed them.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    pub layers: Vec<LayerSlot>,
    /// Layers bound to their ONNX weight that no update reaches alone — their bias shared with
    /// other layers, or a `BatchNormalization` folded in: updates rebuild them, but a saved file
    /// carries their int8 numbers like those of `layers`.
    saved_only: Vec<LayerSlot>,
    /// ONNX weight name → index in `layers`.
    by_weight: HashMap<String, usize>,
    per_channel: bool,
}

impl Slots {
    /// Binds the layers of `float_graph` (the decluttered float model) to the ONNX weights of
    /// `onnx_layers` whose values they hold unchanged — found by node name, confirmed by value,
    /// so a weight that tract folded (BatchNorm into a Conv) is never bound. `int8` gives the
    /// input quantization of each layer that runs in int8, by layer name.
    pub fn new(
        float_graph: &TypedModel,
        onnx_layers: &[OnnxLayer],
        masters: &Weights,
        int8: &HashMap<String, Int8Input>,
        per_channel: bool,
    ) -> Result<Self> {
        let (candidates, _) =
            find_layers(float_graph, &[]).map_err(|e| Error::Internal(chain(&e)))?;
        let by_node: HashMap<&str, &OnnxLayer> =
            onnx_layers.iter().map(|l| (l.node.as_str(), l)).collect();
        let mut slots = Slots { per_channel, ..Default::default() };
        for mut candidate in candidates {
            let Some(onnx) = by_node.get(onnx_node_name(&candidate.name)) else { continue };
            let Some(master) = masters.get(&onnx.weight) else { continue };
            let Ok(values) = plain_f32(master, &onnx.weight) else { continue };
            let matches =
                |v: &[f32]| candidate.order.to_kernel(v).as_deref() == Some(&candidate.weights[..]);
            let mut batch_norm = None;
            let transposed = if matches(&values) {
                false
            } else if master.rank() == 2 && matches(&transpose(&values, master.shape())) {
                true
            } else if let Some(bn) = onnx.batch_norm.as_ref() {
                if !folds_batch_norm(&candidate, &values, onnx.bias.as_deref(), bn, masters) {
                    continue;
                }
                batch_norm = Some(bn.clone());
                false
            } else {
                continue;
            };
            if batch_norm.is_some() {
                let int8 = int8.get(&candidate.name);
                if let Some((_, stats)) = int8 {
                    candidate.input_stats = stats.clone();
                }
                slots.saved_only.push(LayerSlot {
                    int8: int8.map(|(q, _)| *q),
                    template: candidate,
                    weight: onnx.weight.clone(),
                    transposed,
                    bias: None,
                    batch_norm,
                });
                continue;
            }
            let bias = match &onnx.bias {
                Some(name) => {
                    let same = masters
                        .get(name)
                        .and_then(|b| plain_f32(b, name).ok())
                        .is_some_and(|b| b == candidate.bias);
                    if !same {
                        continue; // the bias was folded: only a rebuild keeps it right
                    }
                    Some(name.clone())
                }
                None => None,
            };
            let bias_owned = onnx.bias_owned;
            candidate.weights = Vec::new();
            let input = int8.get(&candidate.name);
            if let Some((_, stats)) = input {
                candidate.input_stats = stats.clone();
            }
            let slot = LayerSlot {
                int8: input.map(|(q, _)| *q),
                template: candidate,
                weight: onnx.weight.clone(),
                transposed,
                bias,
                batch_norm: None,
            };
            if !bias_owned {
                slots.saved_only.push(slot);
                continue;
            }
            slots.by_weight.insert(slot.weight.clone(), slots.layers.len());
            if let Some(bias) = &slot.bias {
                slots.by_weight.insert(bias.clone(), slots.layers.len());
            }
            slots.layers.push(slot);
        }
        Ok(slots)
    }

    /// The int8 layers touched by an update of `names`, if every name feeds one directly (the
    /// update can then swap those layers alone); `None` when the model must be rebuilt.
    pub fn int8_layers_for<'n>(
        &self,
        names: impl IntoIterator<Item = &'n String>,
    ) -> Option<Vec<usize>> {
        let mut layers = Vec::new();
        for name in names {
            let ix = *self.by_weight.get(name)?;
            self.layers[ix].int8?;
            if !layers.contains(&ix) {
                layers.push(ix);
            }
        }
        Some(layers)
    }

    /// The int8 op of layer `ix` built from the weights in `masters`.
    pub fn build(&self, ix: usize, masters: &Weights) -> Result<(String, Box<dyn TypedOp>)> {
        let slot = &self.layers[ix];
        let missing = |name: &str| Error::Internal(format!("no master weight {name}"));
        let Some(input) = slot.int8 else {
            return Err(Error::Internal(format!("{} is not an int8 layer", slot.template.name)));
        };
        let mut layer = slot.template.clone();
        let weights =
            slot.kernel_weights(masters.get(&slot.weight).ok_or_else(|| missing(&slot.weight))?)?;
        if let Some(bias) = &slot.bias {
            layer.bias = plain_f32(masters.get(bias).ok_or_else(|| missing(bias))?, bias)?;
        }
        Ok((layer.name.clone(), build_op(&layer, &weights, input, self.per_channel)?))
    }

    /// The numbers of every int8 layer bound to an ONNX weight (its bias owned or shared),
    /// computed from `masters` as its op computes them and put in the weight's layout, by ONNX
    /// node: what a saved file carries for these layers.
    pub fn computed_layers(&self, masters: &Weights) -> Result<HashMap<String, DeployedLayer>> {
        let mut computed = HashMap::new();
        for slot in self.layers.iter().chain(&self.saved_only) {
            let Some(input) = slot.int8 else { continue };
            let master =
                masters.get(&slot.weight).ok_or_else(|| Error::Internal(slot.weight.clone()))?;
            let mut layer = slot.template.clone();
            if let Some(bias) = &slot.bias {
                let value = masters.get(bias).ok_or_else(|| Error::Internal(bias.clone()))?;
                layer.bias = plain_f32(value, bias)?;
            }
            let weights = match slot.batch_norm {
                Some(_) => Cow::Borrowed(&slot.template.weights[..]),
                None => slot.kernel_weights(master)?,
            };
            let numbers = quantize_layer(&layer, &weights, input, self.per_channel)?;
            let codes: Vec<f32> = numbers.codes.iter().map(|&c| f32::from(c)).collect();
            let codes = slot.to_master_layout(&codes, master.shape())?;
            let deployed = DeployedLayer {
                weight: slot.weight.clone(),
                // Whole numbers in [-127, 127]: the cast is exact.
                codes: codes.iter().map(|&c| c as i8).collect(),
                scales: numbers.scales,
                kernel_bias: numbers.bias,
                layer_bias: layer.bias,
                // A folded BatchNormalization goes from the file's graph with the layer's
                // float weight: the kernel's bias is then the node's whole bias.
                bias_is_input: slot.bias.is_some() || slot.batch_norm.is_some(),
                batch_norm: slot.batch_norm.as_ref().map(|bn| bn.node.clone()),
            };
            computed.insert(onnx_node_name(&layer.name).to_string(), deployed);
        }
        Ok(computed)
    }

    /// The layer a head learner trains: `name` (a layer or its weight's name), or else the last
    /// linear layer of the graph.
    pub fn head(&self, name: Option<&str>) -> Result<&LayerSlot> {
        let linear = |s: &&LayerSlot| matches!(s.template.kind, LayerKind::Linear { .. });
        match name {
            Some(name) => self
                .layers
                .iter()
                .find(|s| {
                    s.template.name == name
                        || s.weight == name
                        || onnx_node_name(&s.template.name) == name
                })
                .filter(linear)
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        self.layers.iter().filter(linear).map(|s| s.weight.as_str()).collect();
                    Error::Update(format!(
                        "layer {name:?} is not a linear layer with its own weights (these are: {})",
                        known.join(", ")
                    ))
                }),
            None => self.layers.iter().rev().find(linear).ok_or_else(|| {
                Error::Update(
                    "the model has no linear layer whose weights are a plain ONNX weight".into(),
                )
            }),
        }
    }
}

/// Whether `layer`'s weights and bias are the ONNX `weight` values (and `bias`, if any) with
/// `bn` folded in, up to float rounding: then writing the layer's numbers in place of the
/// weight and leaving `bn` out computes the same.
fn folds_batch_norm(
    layer: &Candidate,
    weight: &[f32],
    bias: Option<&str>,
    bn: &BatchNorm,
    masters: &Weights,
) -> bool {
    let param = |name: &str| masters.get(name).and_then(|t| plain_f32(t, name).ok());
    let [Some(gamma), Some(beta), Some(mean), Some(var)] =
        bn.parameters.each_ref().map(|p| param(p))
    else {
        return false;
    };
    let n = layer.n;
    let conv_bias = match bias {
        Some(name) => param(name).unwrap_or_default(),
        None => vec![0.0; n],
    };
    let Some(kernel) = layer.order.to_kernel(weight) else { return false };
    let fits = |v: &[f32]| v.len() == n;
    if ![&gamma, &beta, &mean, &var, &conv_bias].iter().all(|v| fits(v))
        || kernel.len() != layer.weights.len()
        || layer.bias.len() != n
    {
        return false;
    }
    let close = |a: f32, b: f32, scale: f32| (a - b).abs() <= 1e-4 * scale + f32::MIN_POSITIVE;
    (0..n).all(|o| {
        let factor = gamma[o] / (var[o] + bn.epsilon).sqrt();
        let k = layer.k;
        let (want, have) = (&kernel[o * k..(o + 1) * k], &layer.weights[o * k..(o + 1) * k]);
        let row = want.iter().fold(0f32, |m, &w| m.max((w * factor).abs()));
        let folded_bias = (conv_bias[o] - mean[o]) * factor + beta[o];
        want.iter().zip(have).all(|(&w, &h)| close(w * factor, h, row))
            && close(folded_bias, layer.bias[o], folded_bias.abs().max(row))
    })
}

fn plain_f32(tensor: &Tensor, name: &str) -> Result<Vec<f32>> {
    let view = tensor
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::Internal(format!("weight {name} is not float32: {e}")))?;
    Ok(match view.as_slice() {
        Some(slice) => slice.to_vec(),
        None => view.iter().copied().collect(),
    })
}

/// Row-major transpose of a 2-D `shape` array.
fn transpose(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
