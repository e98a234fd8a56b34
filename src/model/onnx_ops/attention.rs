//! ONNX `Attention` (opset 23+) where tract's translation cannot serve the node: a soft cap on
//! the scores, the scores as an output (`qk_matmul_output_mode`), per-batch key lengths
//! (`nonpad_kv_seqlen`) or a boolean mask. Everything else stays on tract's fused attention.

use ndarray::{ArrayD, Axis, IxDyn};
use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::computed::{concrete_shape, input, typed_output, values, wrap, Compute};
use super::{tract_parser, Parsed};

/// Input slots of `Attention` after Q, K, V.
const MASK: usize = 3;
const PAST_KEY: usize = 4;
const PAST_VALUE: usize = 5;
const KV_LENGTHS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Attention {
    q_heads: Option<usize>,
    kv_heads: Option<usize>,
    is_causal: bool,
    /// Bits of the f32 scale attribute (f32 is not `Hash`).
    scale: Option<u32>,
    softcap: u32,
    scores_mode: i64,
    /// Where each optional input (mask, past key, past value, key lengths) sits among the
    /// node's present inputs.
    slots: [Option<usize>; 4],
    /// Which of (present key, present value, scores) the node outputs.
    extra_outputs: [bool; 3],
}

pub(super) fn attention(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let present = |slot: usize| node.output.get(slot).is_some_and(|o| !o.is_empty());
    let wants_scores = present(3);
    let bool_mask = node.input.get(MASK).is_some_and(|name| is_bool(ctx, name));
    if !wants_scores && !bool_mask {
        if let Ok(parsed) = tract_parser("Attention", ctx, node) {
            return Ok(parsed);
        }
    }
    let slots: Vec<Option<usize>> = optional_inputs(node).take(7).collect();
    let slot = |ix: usize| slots.get(ix).copied().flatten();
    let usize_attr = |name: &str| -> TractResult<Option<usize>> {
        node.get_attr_opt::<i64>(name)?
            .map(|v| usize::try_from(v).map_err(|_| format_err!("Attention: {name} = {v}")))
            .transpose()
    };
    let op = Attention {
        q_heads: usize_attr("q_num_heads")?,
        kv_heads: usize_attr("kv_num_heads")?,
        is_causal: node.get_attr_opt::<i64>("is_causal")?.unwrap_or(0) != 0,
        scale: node.get_attr_opt::<f32>("scale")?.map(f32::to_bits),
        softcap: node.get_attr_opt::<f32>("softcap")?.unwrap_or(0.0).to_bits(),
        scores_mode: node.get_attr_opt::<i64>("qk_matmul_output_mode")?.unwrap_or(0),
        slots: [slot(MASK), slot(PAST_KEY), slot(PAST_VALUE), slot(KV_LENGTHS)],
        extra_outputs: [present(1), present(2), wants_scores],
    };
    Ok((wrap(op), vec![]))
}

/// Whether the graph declares tensor `name` boolean.
fn is_bool(ctx: &ParsingContext, name: &str) -> bool {
    let Some(graph) = ctx.model.graph.as_ref() else { return false };
    graph.input.iter().chain(&graph.value_info).filter(|v| v.name == name).any(|v| {
        let tensor = v.r#type.as_ref().and_then(|t| t.value.as_ref());
        matches!(tensor, Some(tract_onnx::pb::type_proto::Value::TensorType(t))
            if t.elem_type == DataType::Bool as i32)
    })
}

/// Sizes of one call, heads split out.
struct Dims {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    past: usize,
    key_size: usize,
    value_size: usize,
}

impl Attention {
    fn dims(
        &self,
        q: &[usize],
        k: &[usize],
        v: &[usize],
        past: Option<&[usize]>,
    ) -> TractResult<Dims> {
        ensure!(q.len() == k.len() && k.len() == v.len(), "Attention: Q, K, V ranks differ");
        let (q_heads, kv_heads, key_size, value_size) = match q.len() {
            4 => (q[1], k[1], q[3], v[3]),
            3 => {
                let (Some(qh), Some(kvh)) = (self.q_heads, self.kv_heads) else {
                    bail!("Attention: 3-D inputs need q_num_heads and kv_num_heads")
                };
                ensure!(
                    qh > 0 && kvh > 0 && q[2].is_multiple_of(qh) && v[2].is_multiple_of(kvh),
                    "Attention: hidden sizes vs heads"
                );
                (qh, kvh, q[2] / qh, v[2] / kvh)
            }
            r => bail!("Attention: Q has rank {r}, needs 3 or 4"),
        };
        ensure!(
            kv_heads > 0 && q_heads.is_multiple_of(kv_heads),
            "Attention: {q_heads} query heads over {kv_heads} key heads"
        );
        let seq = if q.len() == 4 { 2 } else { 1 };
        let past = past.map_or(0, |p| p.get(2).copied().unwrap_or(0));
        Ok(Dims {
            batch: q[0],
            q_heads,
            kv_heads,
            q_len: q[seq],
            kv_len: past + k[seq],
            past,
            key_size,
            value_size,
        })
    }

    /// A 3-D `[B, S, H·D]` or 4-D `[B, H, S, D]` tensor as `[B, H, S, D]` f64.
    fn heads(tensor: &Tensor, heads: usize) -> TractResult<ArrayD<f64>> {
        let data = tensor.cast_to::<f64>()?.into_owned().into_plain_array::<f64>()?;
        if data.ndim() == 4 {
            return Ok(data);
        }
        let s = data.shape().to_vec();
        let split = data.into_shape_with_order(IxDyn(&[s[0], s[1], heads, s[2] / heads]))?;
        Ok(split.permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned())
    }
}

impl Compute for Attention {
    fn name(&self) -> &'static str {
        "Attention"
    }

    fn min_inputs(&self) -> usize {
        3
    }

    fn outputs(&self) -> usize {
        1 + self.extra_outputs.iter().filter(|&&o| o).count()
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = |ix: usize| -> TractResult<TVec<usize>> {
            let fact = input(self.name(), inputs, ix)?;
            concrete_shape(self.name(), fact)
        };
        let past = self.slots[1].map(&shape).transpose()?;
        let (q, k, v) = (shape(0)?, shape(1)?, shape(2)?);
        let d = self.dims(&q, &k, &v, past.as_deref())?;
        let dt = input(self.name(), inputs, 0)?.datum_type;
        let y: TVec<usize> = if q.len() == 4 {
            tvec![d.batch, d.q_heads, d.q_len, d.value_size]
        } else {
            tvec![d.batch, d.q_len, d.q_heads * d.value_size]
        };
        let mut facts = tvec![dt.fact(y)];
        let extra = [
            [d.batch, d.kv_heads, d.kv_len, d.key_size],
            [d.batch, d.kv_heads, d.kv_len, d.value_size],
            [d.batch, d.q_heads, d.q_len, d.kv_len],
        ];
        for (wanted, shape) in self.extra_outputs.iter().zip(extra) {
            if *wanted {
                facts.push(dt.fact(shape));
            }
        }
        Ok(facts)
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let optional = |k: usize| self.slots[k].and_then(|ix| inputs.get(ix));
        let past_key = optional(1);
        let d = self.dims(
            inputs[0].shape(),
            inputs[1].shape(),
            inputs[2].shape(),
            past_key.map(|p| p.shape()),
        )?;
        let q = Self::heads(&inputs[0], d.q_heads)?;
        let mut keys = Self::heads(&inputs[1], d.kv_heads)?;
        let mut values = Self::heads(&inputs[2], d.kv_heads)?;
        if let Some(past) = past_key {
            keys = concat_sequence(&Self::heads(past, d.kv_heads)?, &keys)?;
        }
        if let Some(past) = optional(2) {
            values = concat_sequence(&Self::heads(past, d.kv_heads)?, &values)?;
        }
        let bias = self.bias(&d, optional(0), optional(3))?;
        let scale =
            self.scale.map_or(1.0 / (d.key_size as f64).sqrt(), |s| f32::from_bits(s) as f64);
        let softcap = f32::from_bits(self.softcap) as f64;
        let group = d.q_heads / d.kv_heads;
        let mut scores = ArrayD::<f64>::zeros(IxDyn(&[d.batch, d.q_heads, d.q_len, d.kv_len]));
        let mut y = ArrayD::<f64>::zeros(IxDyn(&[d.batch, d.q_heads, d.q_len, d.value_size]));
        let mut probs = vec![0f64; d.kv_len];
        for b in 0..d.batch {
            for h in 0..d.q_heads {
                for i in 0..d.q_len {
                    for (t, p) in probs.iter_mut().enumerate() {
                        let dot: f64 = (0..d.key_size)
                            .map(|c| q[[b, h, i, c]] * keys[[b, h / group, t, c]])
                            .sum();
                        let mut score = dot * scale;
                        if softcap > 0.0 {
                            score = softcap * (score / softcap).tanh();
                        }
                        let biased = score + bias[[b, h, i, t]];
                        scores[[b, h, i, t]] = if self.scores_mode == 2 { biased } else { score };
                        *p = biased;
                    }
                    softmax(&mut probs);
                    for (t, &p) in probs.iter().enumerate() {
                        if self.scores_mode == 3 {
                            scores[[b, h, i, t]] = p;
                        }
                        for c in 0..d.value_size {
                            y[[b, h, i, c]] += p * values[[b, h / group, t, c]];
                        }
                    }
                }
            }
        }
        if inputs[0].rank() == 3 {
            let merged = y.permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned();
            y = merged.into_shape_with_order(IxDyn(&[
                d.batch,
                d.q_len,
                d.q_heads * d.value_size,
            ]))?;
        }
        let dt = inputs[0].datum_type();
        let back = |a: ArrayD<f64>| -> TractResult<TValue> { typed_output(a.into_tensor(), dt) };
        let mut outputs = tvec![back(y)?];
        for (wanted, out) in self.extra_outputs.iter().zip([keys, values, scores]) {
            if *wanted {
                outputs.push(back(out)?);
            }
        }
        Ok(outputs)
    }
}

impl Attention {
    /// The additive bias `[B, Hq, Sq, T]`: the mask (boolean false or padding → -inf), the
    /// causal triangle past the cached positions, and key positions past each batch's length.
    fn bias(
        &self,
        d: &Dims,
        mask: Option<&TValue>,
        lengths: Option<&TValue>,
    ) -> TractResult<ArrayD<f64>> {
        let shape = [d.batch, d.q_heads, d.q_len, d.kv_len];
        let mut bias = ArrayD::<f64>::zeros(IxDyn(&shape));
        if let Some(mask) = mask {
            let additive = if mask.datum_type() == DatumType::Bool {
                let keep = mask.to_plain_array_view::<bool>()?;
                keep.mapv(|k| if k { 0.0 } else { f64::NEG_INFINITY })
            } else {
                mask.cast_to::<f64>()?.into_owned().into_plain_array::<f64>()?
            };
            // A mask shorter than the keys leaves the rest masked out.
            let mut padded_shape = additive.shape().to_vec();
            let last = padded_shape.len().checked_sub(1).context("Attention: scalar mask")?;
            let short = d
                .kv_len
                .checked_sub(padded_shape[last])
                .context("Attention: mask longer than the keys")?;
            padded_shape[last] = d.kv_len;
            let mut padded = ArrayD::from_elem(IxDyn(&padded_shape), f64::NEG_INFINITY);
            padded.slice_axis_mut(Axis(last), (0..d.kv_len - short).into()).assign(&additive);
            let broadcast = padded.broadcast(IxDyn(&shape)).ok_or_else(|| {
                format_err!("Attention: mask {padded_shape:?} does not broadcast to {shape:?}")
            })?;
            bias += &broadcast;
        }
        if self.is_causal {
            // Query i (after `past` cached positions) sees keys up to `past + i`.
            for (at, value) in bias.indexed_iter_mut() {
                if at[3] > d.past + at[2] {
                    *value = f64::NEG_INFINITY;
                }
            }
        }
        if let Some(lengths) = lengths {
            for (b, &len) in values::<i64>(lengths)?.iter().enumerate().take(d.batch) {
                let start = usize::try_from(len).unwrap_or(0).min(d.kv_len);
                bias.index_axis_mut(Axis(0), b)
                    .slice_axis_mut(Axis(2), (start..).into())
                    .fill(f64::NEG_INFINITY);
            }
        }
        Ok(bias)
    }
}

/// `[B, H, S1, D]` then `[B, H, S2, D]` along the sequence axis.
fn concat_sequence(past: &ArrayD<f64>, new: &ArrayD<f64>) -> TractResult<ArrayD<f64>> {
    Ok(ndarray::concatenate(Axis(2), &[past.view(), new.view()])?)
}

/// Softmax in place (a row of only -inf gives NaN, as the reference does).
fn softmax(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    row.iter_mut().for_each(|x| *x = (*x - max).exp());
    let sum: f64 = row.iter().sum();
    row.iter_mut().for_each(|x| *x /= sum);
}
