//! Data-aware rounding of weights. Rounding each weight to its nearest code is optimal only if
//! the inputs it multiplies are uncorrelated; neighbouring pixels of an image or feature map are
//! strongly correlated, so a filter's rounding errors `e` add up in its output as `eᵀx`, whose
//! mean square after bias correction (which removes the mean) is `eᵀ C e`, `C` the centred
//! second moment of the input patches (`calibrate::PatchMoments`). For filters with few weights
//! per output channel (depthwise 3×3/5×5, an RGB stem) each channel's codes are chosen by
//! coordinate descent on `eᵀ C e`, starting from round-to-nearest: moves of one code by ±1 that
//! lower it, until none does. The scales stay as they were. The choice depends only on the
//! weights and `C`, which is saved with the model: a reload or a live update of the same weights
//! picks the same codes.

use super::rewrite::{Candidate, LayerKind};
use crate::calibrate::{packed_len, PatchLayout, MAX_PATCH_LEN};

/// Most passes over a filter's weights (descent stops earlier once no move helps; a few passes
/// is typical).
const MAX_PASSES: usize = 64;

/// The patches calibration should record for `layer`: convolutions with at most
/// [`MAX_PATCH_LEN`] weights per output channel.
pub fn patch_layout(layer: &Candidate) -> Option<PatchLayout> {
    match &layer.kind {
        LayerKind::Conv { pool_spec, group, .. } if layer.k <= MAX_PATCH_LEN => {
            Some(PatchLayout { pool_spec: (**pool_spec).clone(), groups: *group })
        }
        _ => None,
    }
}

/// Whether [`refine_codes`] re-chooses `layer`'s codes: a convolution whose recorded patch
/// moments fit its shape (otherwise its codes stay round-to-nearest), as the report says.
pub fn is_data_aware(layer: &Candidate) -> bool {
    let moments = &layer.input_stats.moments;
    match &layer.kind {
        LayerKind::Conv { group, .. } => {
            !moments.is_empty() && *group > 0 && moments.len() == group * packed_len(layer.k)
        }
        LayerKind::Linear { .. } => false,
    }
}

/// Re-chooses the codes of each row of `weights` (`scales.len()` rows of `k`, row `o` in group
/// `o / (rows / groups)`) to lower `eᵀ C_g e`, `C_g` group `g`'s packed matrix in `moments`.
/// `input_factors` (one per column) scales the input each column reads, as a folded 8-bit
/// input does. Returns whether the moments fit the layer; if not, the codes are untouched.
pub fn refine_codes(
    weights: &[f32],
    codes: &mut [i8],
    scales: &[f32],
    k: usize,
    groups: usize,
    moments: &[f32],
    input_factors: Option<&[f64]>,
) -> bool {
    let rows = scales.len();
    let fits = k > 0
        && groups > 0
        && rows.is_multiple_of(groups)
        && weights.len() == rows * k
        && codes.len() == rows * k
        && moments.len() == groups * packed_len(k)
        && input_factors.is_none_or(|f| f.len() == k);
    if !fits {
        return false;
    }
    let per_group = rows / groups;
    let rows = weights.chunks_exact(k).zip(codes.chunks_exact_mut(k)).zip(scales);
    let mut matrix = Vec::new();
    for (o, ((weights, codes), &scale)) in rows.enumerate() {
        if o % per_group == 0 {
            let g = o / per_group;
            matrix = unpack(&moments[g * packed_len(k)..(g + 1) * packed_len(k)], k, input_factors);
        }
        refine_row(weights, codes, scale, &matrix);
    }
    true
}

/// The full `k × k` matrix of a packed upper triangle, each entry `(a, b)` times
/// `factors[a]·factors[b]` when given.
fn unpack(packed: &[f32], k: usize, factors: Option<&[f64]>) -> Vec<f64> {
    let mut matrix = vec![0f64; k * k];
    let mut ab = 0;
    for a in 0..k {
        for b in a..k {
            let scale = factors.map_or(1.0, |f| f[a] * f[b]);
            let value = f64::from(packed[ab]) * scale;
            matrix[a * k + b] = value;
            matrix[b * k + a] = value;
            ab += 1;
        }
    }
    matrix
}

/// `eᵀ M e` for the codes of one row (`M` full, `k × k`).
pub fn rounding_cost(weights: &[f32], codes: &[i8], scale: f32, matrix: &[f64]) -> f64 {
    let e = errors(weights, codes, scale);
    let k = e.len();
    (0..k).map(|a| e[a] * (0..k).map(|b| matrix[a * k + b] * e[b]).sum::<f64>()).sum()
}

fn errors(weights: &[f32], codes: &[i8], scale: f32) -> Vec<f64> {
    codes
        .iter()
        .zip(weights)
        .map(|(&q, &w)| f64::from(q) * f64::from(scale) - f64::from(w))
        .collect()
}

/// Coordinate descent on `eᵀ M e` over one row's codes: each pass tries moving every code by
/// ±1 (within ±127) and keeps the better move if it lowers the cost.
fn refine_row(weights: &[f32], codes: &mut [i8], scale: f32, matrix: &[f64]) {
    let k = codes.len();
    let s = f64::from(scale);
    if !(s.is_finite() && s > 0.0) || matrix.iter().any(|v| !v.is_finite()) {
        return;
    }
    let mut e = errors(weights, codes, scale);
    // gradient / 2: M e
    let mut me: Vec<f64> = (0..k).map(|a| (0..k).map(|b| matrix[a * k + b] * e[b]).sum()).collect();
    for _ in 0..MAX_PASSES {
        let mut moved = false;
        for t in 0..k {
            let diagonal = matrix[t * k + t];
            if diagonal <= 0.0 {
                continue;
            }
            // Cost change of q_t += d: 2·d·s·(M e)_t + s²·M_tt. Only clear gains count, so
            // float noise cannot make the descent cycle.
            let threshold = -1e-9 * s * s * diagonal;
            let mut best = (0i8, threshold);
            for d in [-1i8, 1] {
                let allowed = codes[t].checked_add(d).is_some_and(|q| (-127..=127).contains(&q));
                let change = 2.0 * f64::from(d) * s * me[t] + s * s * diagonal;
                if allowed && change < best.1 {
                    best = (d, change);
                }
            }
            if best.0 != 0 {
                let step = f64::from(best.0) * s;
                codes[t] += best.0;
                e[t] += step;
                for (a, m) in me.iter_mut().enumerate() {
                    *m += matrix[a * k + t] * step;
                }
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::quantize::qparams::quantize_weights;

    /// A positive semi-definite `k × k` matrix `A Aᵀ / k + ridge·I` from `values`, packed.
    fn packed_gram(values: &[f32], k: usize, ridge: f32) -> Vec<f32> {
        let a = |i: usize, j: usize| values[(i * k + j) % values.len()];
        let mut packed = Vec::new();
        for i in 0..k {
            for j in i..k {
                let dot: f32 = (0..k).map(|l| a(i, l) * a(j, l)).sum::<f32>() / k as f32;
                packed.push(dot + if i == j { ridge } else { 0.0 });
            }
        }
        packed
    }

    proptest! {
        #[test]
        fn never_worse_than_round_to_nearest(
            weights in prop::collection::vec(-1.0f32..1.0, 18),
            mixing in prop::collection::vec(-1.0f32..1.0, 1..40),
            ridge in 0.0f32..0.5,
        ) {
            // Two rows of 9 taps sharing one correlated input (one group).
            let (codes, scales) = quantize_weights(&weights, 2, 9, true);
            let moments = packed_gram(&mixing, 9, ridge);
            let mut refined = codes.clone();
            prop_assert!(refine_codes(&weights, &mut refined, &scales, 9, 1, &moments, None));
            let matrix = unpack(&moments, 9, None);
            for (o, &scale) in scales.iter().enumerate() {
                let row = o * 9..(o + 1) * 9;
                let before = rounding_cost(&weights[row.clone()], &codes[row.clone()], scale, &matrix);
                let after = rounding_cost(&weights[row.clone()], &refined[row.clone()], scale, &matrix);
                prop_assert!(after <= before + 1e-12 * before.abs(), "row {o}: {after} > {before}");
                prop_assert!(refined[row].iter().all(|q| (-127..=127).contains(q)));
            }
        }
    }

    #[test]
    fn uncorrelated_inputs_keep_nearest_codes_and_correlated_ones_gain() {
        // Eight weights 0.4 of a step above a code (all rounded down), one at the maximum.
        let mut weights: Vec<f32> = (0..8).map(|j| (10.0 * j as f32 + 0.4) / 127.0).collect();
        weights.push(1.0);
        let (codes, scales) = quantize_weights(&weights, 1, 9, true);
        // Independent inputs: round-to-nearest is already optimal, nothing moves.
        let identity: Vec<f32> =
            (0..9).flat_map(|a| (a..9).map(move |b| if a == b { 1.0 } else { 0.0 })).collect();
        let mut same = codes.clone();
        assert!(refine_codes(&weights, &mut same, &scales, 9, 1, &identity, None));
        assert_eq!(same, codes);
        // Nearly equal inputs (a smooth image): the sum of the errors matters most, and the
        // descent rounds some weights up to cancel it.
        let smooth: Vec<f32> =
            (0..9).flat_map(|a| (a..9).map(move |b| if a == b { 1.0 } else { 0.98 })).collect();
        let mut refined = codes.clone();
        assert!(refine_codes(&weights, &mut refined, &scales, 9, 1, &smooth, None));
        let matrix = unpack(&smooth, 9, None);
        let before = rounding_cost(&weights, &codes, scales[0], &matrix);
        let after = rounding_cost(&weights, &refined, scales[0], &matrix);
        assert!(after < 0.1 * before, "{after} vs {before}");
        // Moments that do not fit the layer leave the codes alone.
        let mut untouched = codes.clone();
        assert!(!refine_codes(&weights, &mut untouched, &scales, 9, 1, &smooth[1..], None));
        assert_eq!(untouched, codes);
    }

    #[test]
    fn input_factors_scale_the_matrix() {
        let packed = [1.0f32, 2.0, 3.0];
        assert_eq!(unpack(&packed, 2, Some(&[2.0, 0.5])), vec![4.0, 2.0, 2.0, 0.75]);
    }

    /// The report's `data-aware` follows what `refine_codes` does: moments that do not fit the
    /// layer leave round-to-nearest, and the report says `nearest`.
    #[test]
    fn a_layer_is_data_aware_only_when_its_moments_fit() {
        use std::sync::Arc;

        use tract_onnx::prelude::{tvec, OutletId};
        use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
        use tract_onnx::tract_core::ops::nn::DataFormat;

        use crate::kernels::Activation;
        use crate::quantize::input::InputStats;
        use crate::quantize::WeightOrder;

        let (n, channels, taps) = (2, 3, 9);
        let k = channels * taps;
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: None,
            input_channels: channels,
            output_channels: n,
        };
        let conv = |moments: Vec<f32>| Candidate {
            name: "stem".into(),
            kind: LayerKind::Conv {
                pool_spec: Box::new(pool_spec.clone()),
                group: 1,
                depthwise: false,
            },
            input: OutletId::new(0, 0),
            output: OutletId::new(1, 0),
            weights: vec![0.5; n * k],
            order: WeightOrder::Conv { n, channels, taps },
            n,
            k,
            bias: vec![0.0; n],
            activation: Activation::Identity,
            input_stats: Arc::new(InputStats { moments, ..InputStats::default() }),
        };
        let fitting = vec![1.0; packed_len(k)];
        assert!(is_data_aware(&conv(fitting.clone())));
        assert!(!is_data_aware(&conv(Vec::new())));
        assert!(!is_data_aware(&conv(fitting[1..].to_vec())));
        // And refine_codes agrees: it leaves codes whose moments do not fit untouched.
        let weights = vec![0.013f32; n * k];
        let (mut codes, scales) = quantize_weights(&weights, n, k, true);
        assert!(!refine_codes(&weights, &mut codes, &scales, k, 1, &fitting[1..], None));
        assert!(refine_codes(&weights, &mut codes, &scales, k, 1, &fitting, None));
    }
}
