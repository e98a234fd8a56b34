//! `CausalConvWithState`: a depthwise 1-D convolution that sees only the past, carrying its
//! last `k - 1` inputs from call to call (streaming speech and state-space models).

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::computed::{concrete_shape, input, output_from, values, wrap, Compute};
use super::Parsed;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CausalConvWithState {
    /// `x · sigmoid(x)` on the output (`silu`/`swish`), or none.
    silu: bool,
    /// Where the optional bias and past state sit among the node's present inputs.
    bias: Option<usize>,
    past: Option<usize>,
    /// Whether the node outputs the new state.
    state_output: bool,
}

pub(super) fn causal_conv_with_state(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let silu = match node.get_attr_opt("activation")?.unwrap_or("none") {
        "none" => false,
        "silu" | "swish" => true,
        other => bail!("CausalConvWithState {}: unknown activation {other:?}", node.name),
    };
    let slots: Vec<Option<usize>> = optional_inputs(node).take(4).collect();
    let slot = |ix: usize| slots.get(ix).copied().flatten();
    let state_output = node.output.get(1).is_some_and(|o| !o.is_empty());
    Ok((wrap(CausalConvWithState { silu, bias: slot(2), past: slot(3), state_output }), vec![]))
}

impl Compute for CausalConvWithState {
    fn name(&self) -> &'static str {
        "CausalConvWithState"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn outputs(&self) -> usize {
        1 + usize::from(self.state_output)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = input(self.name(), inputs, 0)?;
        let w = concrete_shape(self.name(), input(self.name(), inputs, 1)?)?;
        ensure!(
            x.rank() == 3 && w.len() == 3 && w[2] >= 1,
            "{}: input [B, C, L], weight [C, 1, k]",
            self.name()
        );
        let mut facts = tvec![x.without_value()];
        if self.state_output {
            facts.push(x.datum_type.fact([
                x.shape[0].clone(),
                x.shape[1].clone(),
                (w[2] - 1).into(),
            ]));
        }
        Ok(facts)
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (shape, w_shape) = (inputs[0].shape().to_vec(), inputs[1].shape().to_vec());
        let (batch, channels, len, k) = (shape[0], shape[1], shape[2], w_shape[2]);
        ensure!(
            w_shape[0] == channels && w_shape[1] == 1,
            "{}: weight {w_shape:?} is not [C, 1, k]",
            self.name()
        );
        let (x, weight) = (values::<f64>(&inputs[0])?, values::<f64>(&inputs[1])?);
        let bias = self.bias.map(|ix| values::<f64>(&inputs[ix])).transpose()?;
        ensure!(
            bias.as_ref().is_none_or(|b| b.len() == channels),
            "{}: bias must have {channels} values",
            self.name()
        );
        let history = k - 1;
        let past = match self.past {
            Some(ix) => values::<f64>(&inputs[ix])?,
            None => vec![0.0; batch * channels * history],
        };
        ensure!(
            past.len() == batch * channels * history,
            "{}: past_state must be [B, C, {history}]",
            self.name()
        );
        let padded_len = history + len;
        let mut out = Vec::with_capacity(batch * channels * len);
        let mut state = Vec::with_capacity(batch * channels * history);
        for plane in 0..batch * channels {
            let c = plane % channels;
            let padded: Vec<f64> = past[plane * history..(plane + 1) * history]
                .iter()
                .chain(&x[plane * len..(plane + 1) * len])
                .copied()
                .collect();
            let taps = &weight[c * k..(c + 1) * k];
            for t in 0..len {
                let sum: f64 = taps.iter().zip(&padded[t..t + k]).map(|(w, v)| w * v).sum();
                let y = sum + bias.as_ref().map_or(0.0, |b| b[c]);
                out.push(if self.silu { y / (1.0 + (-y).exp()) } else { y });
            }
            state.extend_from_slice(&padded[padded_len - history..]);
        }
        let dt = inputs[0].datum_type();
        let mut outputs = tvec![output_from(out, &shape, dt)?];
        if self.state_output {
            outputs.push(output_from(state, &[batch, channels, history], dt)?);
        }
        Ok(outputs)
    }
}
