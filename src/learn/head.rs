//! The head learner: one step of softmax cross-entropy gradient descent on a final linear layer,
//! from the features the model computes for it.

use crate::error::{Error, Result};

/// The gradient of the mean softmax cross-entropy over a batch with respect to a linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadGradient {
    /// `n × k`, the layer's own (kernel) order.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// Mean loss and accuracy of the batch before the step.
    pub loss: f32,
    pub accuracy: f32,
}

/// For `rows` feature vectors of length `k` and their labels, the gradient of the mean
/// cross-entropy of `softmax(features · Wᵀ + b)` with respect to `W` (`n × k`) and `b`.
pub fn head_gradient(
    features: &[f32],
    labels: &[i64],
    weights: &[f32],
    bias: &[f32],
    n: usize,
    k: usize,
) -> Result<HeadGradient> {
    let rows = labels.len();
    if rows == 0 || features.len() != rows * k || weights.len() != n * k || bias.len() != n {
        return Err(Error::Update(format!(
            "{} feature values for {rows} labels do not make rows of {k}",
            features.len()
        )));
    }
    if let Some((row, label)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= n) {
        return Err(Error::Update(format!(
            "label {label} at position {row} is not a class of the layer's {n} outputs"
        )));
    }
    if let Some(bad) = features.iter().position(|f| !f.is_finite()) {
        return Err(Error::Update(format!("features hold {} at flat index {bad}", features[bad])));
    }
    let mut grad_w = vec![0f32; n * k];
    let mut grad_b = vec![0f32; n];
    let (mut loss, mut correct) = (0f64, 0usize);
    let mut probabilities = vec![0f32; n];
    for (row, &label) in labels.iter().enumerate() {
        let x = &features[row * k..(row + 1) * k];
        for (o, p) in probabilities.iter_mut().enumerate() {
            *p = bias[o] + dot(&weights[o * k..(o + 1) * k], x);
        }
        let best = argmax(&probabilities);
        let (max, logits_label) = (probabilities[best], probabilities[label as usize]);
        let mut total = 0f32;
        for p in probabilities.iter_mut() {
            *p = (*p - max).exp();
            total += *p;
        }
        let label = label as usize;
        correct += usize::from(best == label);
        // log-softmax in log-sum-exp form: exact even when the label's probability underflows.
        loss += f64::from(total.ln() - (logits_label - max));
        for (o, p) in probabilities.iter().enumerate() {
            // d loss / d logit = softmax − one-hot, averaged over the batch.
            let g = (p / total - f32::from(o == label)) / rows as f32;
            grad_b[o] += g;
            for (gw, xi) in grad_w[o * k..(o + 1) * k].iter_mut().zip(x) {
                *gw += g * xi;
            }
        }
    }
    Ok(HeadGradient {
        weights: grad_w,
        bias: grad_b,
        loss: (loss / rows as f64) as f32,
        accuracy: correct as f32 / rows as f32,
    })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen independent partial sums: float addition does not reassociate, so a single
    // running sum would run one add at a time (the logits are n × rows dot products of k).
    const LANES: usize = 16;
    let (a_lanes, b_lanes) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_lanes.remainder().iter().zip(b_lanes.remainder()).map(|(x, y)| x * y).sum();
    let mut sums = [0f32; LANES];
    for (x, y) in a_lanes.zip(b_lanes) {
        for ((s, x), y) in sums.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    sums.iter().sum::<f32>() + tail
}

fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradient against central finite differences of the loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let (n, k) = (3, 4);
        let features: Vec<f32> = (0..2 * k).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
        let labels = [2i64, 0];
        let weights: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.1).collect();
        let bias = vec![0.1, -0.2, 0.05];
        let g = head_gradient(&features, &labels, &weights, &bias, n, k).unwrap();
        let loss =
            |w: &[f32], b: &[f32]| head_gradient(&features, &labels, w, b, n, k).unwrap().loss;
        let eps = 1e-2;
        for i in 0..n * k {
            let (mut up, mut down) = (weights.clone(), weights.clone());
            up[i] += eps;
            down[i] -= eps;
            let numeric = (loss(&up, &bias) - loss(&down, &bias)) / (2.0 * eps);
            assert!((numeric - g.weights[i]).abs() < 2e-3, "w[{i}]: {numeric} vs {}", g.weights[i]);
        }
        for o in 0..n {
            let (mut up, mut down) = (bias.clone(), bias.clone());
            up[o] += eps;
            down[o] -= eps;
            let numeric = (loss(&weights, &up) - loss(&weights, &down)) / (2.0 * eps);
            assert!((numeric - g.bias[o]).abs() < 2e-3, "b[{o}]: {numeric} vs {}", g.bias[o]);
        }
    }

    #[test]
    fn dot_matches_a_double_precision_sum() {
        for len in [0, 1, 15, 16, 17, 100, 1280] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.25).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-3, "len {len}");
        }
    }

    #[test]
    fn labels_out_of_range_are_refused() {
        let err = head_gradient(&[0.0; 2], &[5], &[0.0; 4], &[0.0; 2], 2, 2).unwrap_err();
        assert!(err.to_string().contains("label 5"), "{err}");
    }
}
