//! The quantize and dequantize loops ([`quantize_u8`](crate::kernels::quantize_u8),
//! [`dequantize_codes`](crate::kernels::dequantize_codes)) on aarch64 NEON, 16 values a step.
//!
//! Quantizing rounds half to even and converts in one instruction (`fcvtns`), which saturates
//! to i32; the zero point is added saturating and the sums narrowed saturating to bytes, so
//! every finite or infinite value lands where the scalar reference's float clamp puts it. NaN,
//! which the conversion makes 0, is masked to the reference's 0 (not the zero point).

use std::arch::aarch64::*;

use super::quant::quantize_value;

/// `dst[i] = quantize_value(src[i], scale, zero_point)`.
pub(super) fn quantize_u8(src: &[f32], scale: f32, zero_point: u8, dst: &mut [u8]) {
    let len = src.len().min(dst.len());
    let (src, dst) = (&src[..len], &mut dst[..len]);
    let whole = len / 16 * 16;
    for (from, to) in src[..whole].chunks_exact(16).zip(dst[..whole].chunks_exact_mut(16)) {
        // SAFETY: NEON is part of every aarch64 target; `from` has 16 floats and `to` 16
        // bytes.
        unsafe {
            let scale = vdupq_n_f32(scale);
            let zero_point = vdupq_n_s32(i32::from(zero_point));
            let quarter = |q: usize| {
                let v = vdivq_f32(vld1q_f32(from.as_ptr().add(4 * q)), scale);
                let code = vqaddq_s32(vcvtnq_s32_f32(v), zero_point);
                // NaN fails `v == v`: its lane becomes 0.
                vandq_s32(code, vreinterpretq_s32_u32(vceqq_f32(v, v)))
            };
            let low = vcombine_u16(vqmovun_s32(quarter(0)), vqmovun_s32(quarter(1)));
            let high = vcombine_u16(vqmovun_s32(quarter(2)), vqmovun_s32(quarter(3)));
            vst1q_u8(to.as_mut_ptr(), vcombine_u8(vqmovn_u16(low), vqmovn_u16(high)));
        }
    }
    for (d, &s) in dst[whole..].iter_mut().zip(&src[whole..]) {
        *d = quantize_value(s, scale, zero_point);
    }
}

/// `dst[i] = (codes[i] − zero_point) · scale`, a subtraction then a multiplication (not fused,
/// as the reference).
pub(super) fn dequantize_codes(codes: &[u8], scale: f32, zero_point: f32, dst: &mut [f32]) {
    let len = codes.len().min(dst.len());
    let (codes, dst) = (&codes[..len], &mut dst[..len]);
    let whole = len / 16 * 16;
    for (from, to) in codes[..whole].chunks_exact(16).zip(dst[..whole].chunks_exact_mut(16)) {
        // SAFETY: NEON is part of every aarch64 target; `from` has 16 bytes and `to` 16
        // floats.
        unsafe {
            let (scale, zero_point) = (vdupq_n_f32(scale), vdupq_n_f32(zero_point));
            let bytes = vld1q_u8(from.as_ptr());
            let halves = [vmovl_u8(vget_low_u8(bytes)), vmovl_high_u8(bytes)];
            for (h, half) in halves.into_iter().enumerate() {
                let words = [vmovl_u16(vget_low_u16(half)), vmovl_high_u16(half)];
                for (w, word) in words.into_iter().enumerate() {
                    let value = vmulq_f32(vsubq_f32(vcvtq_f32_u32(word), zero_point), scale);
                    vst1q_f32(to.as_mut_ptr().add(8 * h + 4 * w), value);
                }
            }
        }
    }
    for (d, &c) in dst[whole..].iter_mut().zip(&codes[whole..]) {
        *d = (f32::from(c) - zero_point) * scale;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::kernels::{dequantize_codes, quantize_u8, ActivationQuant, Isa};

    /// The values where rounding and saturation can go wrong: ties, the ends of the code
    /// range, beyond i32, infinities, NaN, signed zeros.
    fn edge_values() -> Vec<f32> {
        let mut values: Vec<f32> = (-600..=600).map(|i| i as f32 * 0.5).collect();
        values.extend([f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0]);
        values.extend([1e30, -1e30, 3e9, -3e9, 8_388_607.5, 16_777_215.0, -16_777_215.0]);
        values.extend([2_147_483_520.0, -2_147_483_648.0, f32::MIN_POSITIVE, -1e-40]);
        values
    }

    #[test]
    fn quantize_matches_the_scalar_reference_on_edges() {
        let values = edge_values();
        for isa in Isa::supported().filter(|isa| isa.is_neon()) {
            for scale in [1.0, 0.5, 3.0, 1e-30, 1e30, 0.0, f32::NAN] {
                for zero_point in [0u8, 1, 128, 254, 255] {
                    let (mut neon, mut scalar) = (vec![7u8; values.len()], vec![9u8; values.len()]);
                    quantize_u8(isa, &values, scale, zero_point, &mut neon);
                    quantize_u8(Isa::SCALAR, &values, scale, zero_point, &mut scalar);
                    for ((&v, n), s) in values.iter().zip(&neon).zip(&scalar) {
                        assert_eq!(n, s, "{v} / {scale} + {zero_point} on {isa:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_matches_the_scalar_reference_on_every_code() {
        let codes: Vec<u8> = (0..=255).chain(0..=40).collect();
        for isa in Isa::supported().filter(|isa| isa.is_neon()) {
            for (scale, zero_point) in [(0.0137f32, 0u8), (0.1, 128), (3.7e-3, 255), (1e-40, 3)] {
                let q = ActivationQuant { scale, zero_point };
                let (mut neon, mut scalar) = (vec![0f32; codes.len()], vec![1f32; codes.len()]);
                dequantize_codes(isa, &codes, q, &mut neon);
                dequantize_codes(Isa::SCALAR, &codes, q, &mut scalar);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&neon), bits(&scalar), "{q:?} on {isa:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn quantize_agrees_with_the_scalar_reference(
            values in proptest::collection::vec(-1e4f32..1e4f32, 0..70),
            scale in 1e-3f32..10.0,
            zero_point in 0u8..=255,
        ) {
            let mut scalar = vec![0u8; values.len()];
            quantize_u8(Isa::SCALAR, &values, scale, zero_point, &mut scalar);
            for isa in Isa::supported().filter(|isa| isa.is_neon()) {
                let mut neon = vec![0u8; values.len()];
                quantize_u8(isa, &values, scale, zero_point, &mut neon);
                prop_assert_eq!(&neon, &scalar);
            }
        }
    }
}
