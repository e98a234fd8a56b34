//! Training losses exported with a model (`NegativeLogLikelihoodLoss`,
//! `SoftmaxCrossEntropyLoss`): a model exported with its loss head for on-device fine-tuning
//! evaluates it at inference time too.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::computed::{input, typed_output, values, wrap, Compute};
use super::Parsed;

/// How a loss's per-element values are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reduction {
    None,
    Sum,
    /// The weighted sum divided by the summed weights of the elements not ignored.
    Mean,
}

/// A class-indexed loss: `-log_prob[n, target[n, …], …] · weight[target]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ClassLoss {
    /// `SoftmaxCrossEntropyLoss` (log-softmax over the class axis first) or
    /// `NegativeLogLikelihoodLoss` (the input already holds log-probabilities).
    softmax: bool,
    reduction: Reduction,
    ignore_index: Option<i64>,
    /// Whether the node asks for the log-probabilities as a second output.
    log_prob_output: bool,
}

pub(super) fn negative_log_likelihood_loss(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    parse(node, false)
}

pub(super) fn softmax_cross_entropy_loss(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    parse(node, true)
}

fn parse(node: &NodeProto, softmax: bool) -> Parsed {
    let reduction = match node.get_attr_opt("reduction")?.unwrap_or("mean") {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        "mean" => Reduction::Mean,
        other => bail!("{}: unknown reduction {other:?}", node.name),
    };
    let ignore_index = node.get_attr_opt::<i64>("ignore_index")?;
    let log_prob_output = softmax && node.output.iter().filter(|o| !o.is_empty()).count() == 2;
    Ok((wrap(ClassLoss { softmax, reduction, ignore_index, log_prob_output }), vec![]))
}

impl Compute for ClassLoss {
    fn name(&self) -> &'static str {
        if self.softmax {
            "SoftmaxCrossEntropyLoss"
        } else {
            "NegativeLogLikelihoodLoss"
        }
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn outputs(&self) -> usize {
        1 + usize::from(self.log_prob_output)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let scores = input(self.name(), inputs, 0)?;
        let target = input(self.name(), inputs, 1)?;
        ensure!(scores.rank() >= 2, "{}: input needs a class axis (rank >= 2)", self.name());
        let loss_shape: TVec<TDim> = match self.reduction {
            Reduction::None => target.shape.to_tvec(),
            Reduction::Sum | Reduction::Mean => tvec![],
        };
        let mut facts = tvec![scores.datum_type.fact(loss_shape)];
        if self.log_prob_output {
            facts.push(scores.without_value());
        }
        Ok(facts)
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let name = self.name();
        ensure!(inputs.len() >= 2, "{name} takes scores and targets");
        let dt = inputs[0].datum_type();
        let shape = inputs[0].shape().to_vec();
        ensure!(shape.len() >= 2, "{name}: scores {shape:?} need a class axis");
        let (batch, classes) = (shape[0], shape[1]);
        let inner: usize = shape[2..].iter().product();
        let mut log_prob = values::<f64>(&inputs[0])?;
        if self.softmax {
            log_softmax_classes(&mut log_prob, classes, inner);
        }
        let target = values::<i64>(&inputs[1])?;
        ensure!(
            target.len() == batch * inner,
            "{name}: target has {} elements, scores {shape:?} need {}",
            target.len(),
            batch * inner
        );
        let class_weight = inputs.get(2).map(|w| values::<f64>(w)).transpose()?;
        let class_weight = class_weight.as_deref();
        if let Some(w) = class_weight {
            ensure!(w.len() == classes, "{name}: weight has {} classes, not {classes}", w.len());
        }
        let mut losses = vec![0f64; batch * inner];
        let mut weight_sum = 0f64;
        for n in 0..batch {
            for d in 0..inner {
                let ix = n * inner + d;
                let class = target[ix];
                if Some(class) == self.ignore_index {
                    continue;
                }
                let c = usize::try_from(class)
                    .ok()
                    .filter(|&c| c < classes)
                    .ok_or_else(|| format_err!("{name}: target {class} is not a class index"))?;
                let weight = class_weight.map_or(1.0, |w| w[c]);
                losses[ix] = -log_prob[(n * classes + c) * inner + d] * weight;
                weight_sum += weight;
            }
        }
        let loss = match self.reduction {
            Reduction::None => {
                ndarray::ArrayD::from_shape_vec(inputs[1].shape(), losses)?.into_tensor()
            }
            Reduction::Sum => tensor0(losses.iter().sum::<f64>()),
            Reduction::Mean => tensor0(losses.iter().sum::<f64>() / weight_sum),
        };
        let mut outputs = tvec![typed_output(loss, dt)?];
        if self.log_prob_output {
            let log_prob = ndarray::ArrayD::from_shape_vec(&*shape, log_prob)?.into_tensor();
            outputs.push(typed_output(log_prob, dt)?);
        }
        Ok(outputs)
    }
}

/// Log-softmax over axis 1 of a `[N, C, inner]` buffer, in place.
fn log_softmax_classes(values: &mut [f64], classes: usize, inner: usize) {
    for sample in values.chunks_mut(classes * inner) {
        for d in 0..inner {
            let at = |c: usize| c * inner + d;
            let max = (0..classes).map(|c| sample[at(c)]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..classes).map(|c| (sample[at(c)] - max).exp()).sum();
            let log_sum = sum.ln() + max;
            for c in 0..classes {
                sample[at(c)] -= log_sum;
            }
        }
    }
}
