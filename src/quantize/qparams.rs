//! Weight quantization: symmetric i8 per output channel (activations' asymmetric u8 is
//! `ActivationQuant::from_range`, in `kernels`). Rounding and saturation come from `kernels`,
//! in one place.

pub use crate::kernels::ActivationQuant;
use crate::kernels::{abs_max, quantize_i8_symmetric, Isa};

/// Symmetric i8 quantization of `n` rows of `k` weights: one scale per row (`per_channel`) or
/// one for the whole tensor. Codes stay in [−127, 127] so negation never overflows.
pub fn quantize_weights(
    weights: &[f32],
    n: usize,
    k: usize,
    per_channel: bool,
) -> (Vec<i8>, Vec<f32>) {
    let isa = Isa::detect();
    let scale_of = |values: &[f32]| {
        let max = abs_max(isa, values);
        if max > 0.0 && max.is_finite() {
            max / 127.0
        } else {
            1.0
        }
    };
    let scales: Vec<f32> = if per_channel {
        (0..n).map(|o| scale_of(&weights[o * k..(o + 1) * k])).collect()
    } else {
        vec![scale_of(weights); n]
    };
    // Row by row, one scale per call: live updates re-run this on whole layers.
    let mut codes = vec![0i8; weights.len()];
    for ((row, out), &scale) in
        weights.chunks(k.max(1)).zip(codes.chunks_mut(k.max(1))).zip(&scales)
    {
        quantize_i8_symmetric(isa, row, scale, out);
    }
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_formula_and_zero_is_exact() {
        let q = ActivationQuant::from_range(-1.0, 3.0);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-9);
        assert_eq!(q.zero_point, 64); // round(1 / (4/255)) = round(63.75)
        let relu = ActivationQuant::from_range(0.5, 6.0); // widened to include 0
        assert_eq!(relu.zero_point, 0);
        assert_eq!(
            ActivationQuant::from_range(0.0, 0.0),
            ActivationQuant { scale: 1.0, zero_point: 0 }
        );
    }

    #[test]
    fn weights_per_channel() {
        let w = [1.0, -0.5, 0.0, 0.03, -0.04, 0.01];
        let (q, s) = quantize_weights(&w, 2, 3, true);
        assert_eq!(q, vec![127, -64, 0, 95, -127, 32]);
        assert!((s[1] - 0.04 / 127.0).abs() < 1e-9);
        let (q, _) = quantize_weights(&w, 2, 3, false);
        assert_eq!(&q[3..], &[4, -5, 1]);
    }
}
