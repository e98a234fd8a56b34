//! `LinearAttention`: recurrent attention over a `[d_k, d_v]` state per key head (linear,
//! gated, delta-rule and gated delta-rule updates), the token mixer of recent linear-time
//! language and speech models.

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::computed::{concrete_shape, input, output_from, values, wrap, Compute};
use super::Parsed;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LinearAttention {
    q_heads: usize,
    kv_heads: usize,
    /// Bits of the f32 scale (0: `1 / sqrt(d_k)`).
    scale: u32,
    /// The state decays by `exp(decay)` each step.
    gated: bool,
    /// The value written is corrected by what the state already returns for the key.
    delta: bool,
    /// Where past state, decay and beta sit among the node's present inputs.
    slots: [Option<usize>; 3],
    state_output: bool,
}

pub(super) fn linear_attention(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let (gated, delta) = match node.get_attr_opt("update_rule")?.unwrap_or("gated_delta") {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        other => bail!("LinearAttention {}: unknown update_rule {other:?}", node.name),
    };
    let heads = |name: &str| -> TractResult<usize> {
        let v = node.get_attr::<i64>(name)?;
        usize::try_from(v)
            .ok()
            .filter(|&h| h > 0)
            .ok_or_else(|| format_err!("LinearAttention: {name} = {v}"))
    };
    let (q_heads, kv_heads) = (heads("q_num_heads")?, heads("kv_num_heads")?);
    ensure!(
        q_heads.is_multiple_of(kv_heads),
        "LinearAttention: {q_heads} query heads over {kv_heads} key heads"
    );
    let slots: Vec<Option<usize>> = optional_inputs(node).take(6).collect();
    let slot = |ix: usize| slots.get(ix).copied().flatten();
    let slots = [slot(3), slot(4), slot(5)];
    ensure!(gated == slots[1].is_some(), "LinearAttention: decay goes with the gated rules only");
    ensure!(delta == slots[2].is_some(), "LinearAttention: beta goes with the delta rules only");
    let op = LinearAttention {
        q_heads,
        kv_heads,
        scale: node.get_attr_opt::<f32>("scale")?.unwrap_or(0.0).to_bits(),
        gated,
        delta,
        slots,
        state_output: node.output.get(1).is_some_and(|o| !o.is_empty()),
    };
    Ok((wrap(op), vec![]))
}

impl LinearAttention {
    /// `(batch, steps, d_k, d_v)` from the query and value shapes.
    fn dims(&self, q: &[usize], v: &[usize]) -> TractResult<(usize, usize, usize, usize)> {
        ensure!(
            q.len() == 3 && v.len() == 3,
            "LinearAttention: query and value must be [B, T, H·D]"
        );
        ensure!(
            q[2].is_multiple_of(self.q_heads) && v[2].is_multiple_of(self.kv_heads),
            "LinearAttention: sizes vs heads"
        );
        Ok((q[0], q[1], q[2] / self.q_heads, v[2] / self.kv_heads))
    }
}

impl Compute for LinearAttention {
    fn name(&self) -> &'static str {
        "LinearAttention"
    }

    fn min_inputs(&self) -> usize {
        3
    }

    fn outputs(&self) -> usize {
        1 + usize::from(self.state_output)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let q = input(self.name(), inputs, 0)?;
        let v = concrete_shape(self.name(), input(self.name(), inputs, 2)?)?;
        let (batch, steps, dk, dv) = self.dims(&concrete_shape(self.name(), q)?, &v)?;
        let mut facts = tvec![q.datum_type.fact([batch, steps, self.q_heads * dv])];
        if self.state_output {
            let state_dt = match self.slots[0] {
                Some(ix) => input(self.name(), inputs, ix)?.datum_type,
                None => q.datum_type,
            };
            facts.push(state_dt.fact([batch, self.kv_heads, dk, dv]));
        }
        Ok(facts)
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (batch, steps, dk, dv) = self.dims(inputs[0].shape(), inputs[2].shape())?;
        let (hq, hk) = (self.q_heads, self.kv_heads);
        let group = hq / hk;
        ensure!(
            inputs[1].shape() == [batch, steps, hk * dk],
            "LinearAttention: key must be [B, T, {}]",
            hk * dk
        );
        let (q, k, v) =
            (values::<f64>(&inputs[0])?, values::<f64>(&inputs[1])?, values::<f64>(&inputs[2])?);
        let optional = |k: usize| self.slots[k].map(|ix| &inputs[ix]);
        let mut state = match optional(0) {
            Some(past) => {
                ensure!(
                    past.shape() == [batch, hk, dk, dv],
                    "LinearAttention: past_state must be [B, {hk}, {dk}, {dv}]"
                );
                values::<f64>(past)?
            }
            None => vec![0.0; batch * hk * dk * dv],
        };
        // Per-step decay: one value per head or one per head and key channel.
        let decay = optional(1)
            .map(|d| -> TractResult<(Vec<f64>, usize)> {
                let last = d.shape().last().copied().unwrap_or(0);
                ensure!(
                    last == hk || last == hk * dk,
                    "LinearAttention: decay last axis must be {hk} or {}",
                    hk * dk
                );
                let decay = values::<f64>(d)?;
                ensure!(
                    decay.len() == batch * steps * last,
                    "LinearAttention: decay must be [B, T, {last}]"
                );
                Ok((decay, last / hk))
            })
            .transpose()?;
        let beta = optional(2)
            .map(|b| -> TractResult<(Vec<f64>, usize)> {
                let last = b.shape().last().copied().unwrap_or(0);
                ensure!(
                    last == hk || last == 1,
                    "LinearAttention: beta last axis must be {hk} or 1"
                );
                let beta = values::<f64>(b)?;
                ensure!(
                    beta.len() == batch * steps * last,
                    "LinearAttention: beta must be [B, T, {last}]"
                );
                Ok((beta, last))
            })
            .transpose()?;
        let scale = match f32::from_bits(self.scale) {
            0.0 => 1.0 / (dk as f64).sqrt(),
            s => s as f64,
        };
        let mut out = vec![0f64; batch * steps * hq * dv];
        let mut written = vec![0f64; dv];
        for b in 0..batch {
            for t in 0..steps {
                for h in 0..hk {
                    let s = &mut state[(b * hk + h) * dk * dv..][..dk * dv];
                    let key = &k[((b * steps + t) * hk + h) * dk..][..dk];
                    if let Some((decay, per_head)) = &decay {
                        for i in 0..dk {
                            let g =
                                decay[((b * steps + t) * hk + h) * per_head + i % per_head].exp();
                            s[i * dv..(i + 1) * dv].iter_mut().for_each(|x| *x *= g);
                        }
                    }
                    written.copy_from_slice(&v[((b * steps + t) * hk + h) * dv..][..dv]);
                    if let Some((beta, width)) = &beta {
                        let weight = beta[(b * steps + t) * width + h % width];
                        for (m, w) in written.iter_mut().enumerate() {
                            let retrieved: f64 = (0..dk).map(|i| s[i * dv + m] * key[i]).sum();
                            *w = weight * (*w - retrieved);
                        }
                    }
                    for i in 0..dk {
                        for m in 0..dv {
                            s[i * dv + m] += key[i] * written[m];
                        }
                    }
                    for qh in h * group..(h + 1) * group {
                        let query = &q[((b * steps + t) * hq + qh) * dk..][..dk];
                        let y = &mut out[((b * steps + t) * hq + qh) * dv..][..dv];
                        for (m, y) in y.iter_mut().enumerate() {
                            *y = scale * (0..dk).map(|i| query[i] * s[i * dv + m]).sum::<f64>();
                        }
                    }
                }
            }
        }
        let dt = inputs[0].datum_type();
        let mut outputs = tvec![output_from(out, &[batch, steps, hq * dv], dt)?];
        if self.state_output {
            let state_dt = optional(0).map_or(dt, |p| p.datum_type());
            outputs.push(output_from(state, &[batch, hk, dk, dv], state_dt)?);
        }
        Ok(outputs)
    }
}
