//! Quantization arithmetic: the one rounding function, the saturations, and the vectorisable
//! loops that quantize float activations and dequantize i32 accumulators.

use super::Isa;

/// Rounds half to even, as ONNX `QuantizeLinear` specifies.
///
/// Written with the 2^23 trick rather than `f32::round_ties_even`, which is a libm call on the
/// baseline x86-64 target and would keep the quantize loops from vectorising.
#[inline(always)]
pub fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 8_388_608.0; // 2^23: adding it leaves no fraction bits
    let magnitude = v.abs();
    let rounded = ((magnitude + MAGIC) - MAGIC).copysign(v);
    // A select, not a branch, so loops vectorise; large values (and NaN) are kept as they are.
    if magnitude < MAGIC {
        rounded
    } else {
        v
    }
}

/// Saturates a rounded value to u8 (NaN becomes 0).
#[inline(always)]
pub fn saturate_u8(v: f32) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

/// Saturates a rounded value to i8 (NaN becomes 0).
#[cfg(test)]
#[inline(always)]
pub fn saturate_i8(v: f32) -> i8 {
    v.clamp(-128.0, 127.0) as i8
}

/// ONNX `QuantizeLinear` to u8 of one value: `saturate(round(x / scale) + zero_point)`.
#[inline(always)]
pub fn quantize_value(x: f32, scale: f32, zero_point: u8) -> u8 {
    // Round before adding the zero point, as the spec does: adding first could drop fraction
    // bits and move a near-tie. Written with selects (not `clamp`) so loops vectorise.
    let q = round_half_even(x / scale) + f32::from(zero_point);
    let q = if q > 0.0 { q } else { 0.0 }; // NaN lands here too and becomes 0
    let q = if q < 255.0 { q } else { 255.0 };
    // SAFETY: q is finite and in [0, 255] here, so the conversion is exact and in range; the
    // checked `as` conversion would keep the loop from vectorising.
    unsafe { q.to_int_unchecked::<i32>() as u8 }
}

/// u8 quantization of an activation (a tensor, or one row of it):
/// `q = saturate(round(x / scale) + zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationQuant {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActivationQuant {
    /// `scale = (max − min) / 255`, `zero_point = round(−min / scale)`, with the range widened
    /// to include 0 so that zero (and padding) is exact.
    pub fn from_range(low: f32, high: f32) -> Self {
        let (low, high) = (low.min(0.0), high.max(0.0));
        let span = high - low;
        if !(span.is_finite() && span > f32::MIN_POSITIVE * 255.0) {
            // A constant-zero tensor: any scale represents it exactly.
            return ActivationQuant { scale: 1.0, zero_point: 0 };
        }
        let scale = span / 255.0;
        ActivationQuant { scale, zero_point: saturate_u8(round_half_even(-low / scale)) }
    }

    /// The float range this quantization represents.
    pub fn range(&self) -> (f32, f32) {
        let zp = f32::from(self.zero_point);
        (-zp * self.scale, (255.0 - zp) * self.scale)
    }
}

/// Runs `$body` compiled for AVX-512, or for AVX2 and FMA, when `$isa` allows it (the same
/// source, vectorised 16 or 8 lanes wide instead of the baseline's SSE2, and `mul_add` one
/// instruction instead of a libm call), else as portable code.
macro_rules! multiversion {
    ($isa:expr, $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match $isa.tier() {
            // `move`: the body sees its scalars as values, not as references that a store could
            // alias, which would keep LLVM from vectorising.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with these features.
            $crate::kernels::Tier::Avx512Vnni => unsafe { wide(move || $body) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the AVX2 instruction sets are only chosen on CPUs with AVX2 and FMA.
            $crate::kernels::Tier::AvxVnni | $crate::kernels::Tier::Avx2 => unsafe {
                narrow(move || $body)
            },
            _ => $body,
        }
    }};
}

pub(crate) use multiversion;

/// `dst[i] = (codes[i] − zero point) · scale`: the values codes stand for, which
/// [`quantize_value`] maps back to the same codes.
pub fn dequantize_codes(isa: Isa, codes: &[u8], q: ActivationQuant, dst: &mut [f32]) {
    let (scale, zero_point) = (q.scale, f32::from(q.zero_point));
    #[cfg(target_arch = "aarch64")]
    if isa.is_neon() {
        return super::quant_neon::dequantize_codes(codes, scale, zero_point, dst);
    }
    multiversion!(isa, {
        for (d, &c) in dst.iter_mut().zip(codes) {
            *d = (f32::from(c) - zero_point) * scale;
        }
    })
}

/// `dst[i] = quantize_value(src[i], scale, zero_point)`.
pub fn quantize_u8(isa: Isa, src: &[f32], scale: f32, zero_point: u8, dst: &mut [u8]) {
    #[cfg(target_arch = "aarch64")]
    if isa.is_neon() {
        return super::quant_neon::quantize_u8(src, scale, zero_point, dst);
    }
    multiversion!(isa, {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = quantize_value(s, scale, zero_point);
        }
    })
}

/// The smallest and the largest value of `values`, NaN ignored (`(+∞, −∞)` when empty or all
/// NaN): the range of one row for per-row dynamic quantization.
pub fn min_max(isa: Isa, values: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    multiversion!(isa, {
        let chunks = values.chunks_exact(LANES);
        let (mut low, mut high) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in chunks.remainder() {
            (low, high) = (low.min(v), high.max(v));
        }
        let (mut lows, mut highs) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
        for chunk in chunks {
            for ((l, h), &v) in lows.iter_mut().zip(highs.iter_mut()).zip(chunk) {
                (*l, *h) = (l.min(v), h.max(v));
            }
        }
        let low = lows.into_iter().fold(low, f32::min);
        (low, highs.into_iter().fold(high, f32::max))
    })
}

/// The largest magnitude in `values`, NaN ignored (0 when empty): what `fold(0, max(|v|))`
/// gives, computed on the bit patterns so the reduction vectorises (for non-negative floats the
/// integer order of the bits is the float order; NaN patterns sort above infinity, hence masked).
pub fn abs_max(isa: Isa, values: &[f32]) -> f32 {
    const LANES: usize = 16;
    // A NaN's magnitude becomes 0 by a mask rather than a select, which LLVM would fold into
    // the maximum as a branchy chain that does not vectorise.
    let magnitude = |v: &f32| {
        let bits = v.to_bits() & 0x7fff_ffff;
        bits & u32::from(bits <= 0x7f80_0000).wrapping_neg()
    };
    let bits = multiversion!(isa, {
        let chunks = values.chunks_exact(LANES);
        let tail = chunks.remainder().iter().map(magnitude).max().unwrap_or(0);
        let mut lanes = [0u32; LANES];
        for chunk in chunks {
            for (lane, v) in lanes.iter_mut().zip(chunk) {
                *lane = (*lane).max(magnitude(v));
            }
        }
        lanes.into_iter().fold(tail, u32::max)
    });
    f32::from_bits(bits)
}

/// Symmetric i8 codes of one row of weights sharing `scale`:
/// `saturate_i8(round_half_even(w / scale).max(-127.0))`, so codes stay in [−127, 127].
///
/// Clamping before rounding gives the same codes (the bounds are integers and rounding is
/// monotonic), and in [−127, 127] adding 1.5 × 2^23 rounds half to even by itself and leaves
/// the code in the low byte of the sum's bits: no checked float → int conversion, so the loop
/// vectorises (live updates re-quantize whole layers).
pub fn quantize_i8_symmetric(isa: Isa, src: &[f32], scale: f32, dst: &mut [i8]) {
    const SHIFT: f32 = 12_582_912.0; // 1.5 × 2^23
    multiversion!(isa, {
        for (d, &w) in dst.iter_mut().zip(src) {
            let x = w / scale;
            let x = if x > -127.0 { x } else { -127.0 }; // NaN lands here, as before
            let x = if x < 127.0 { x } else { 127.0 };
            *d = (x + SHIFT).to_bits() as u8 as i8;
        }
    })
}

/// What is applied to a layer's output as it is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    /// `max(x, 0)`
    Relu,
    /// `min(max(x, low), high)` (ReLU6 is `Clip(0, 6)`)
    Clip(f32, f32),
}

impl Activation {
    /// The (low, high) clamp this activation is.
    #[inline(always)]
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Activation::Identity => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Clip(low, high) => (low, high),
        }
    }

    /// Applies the clamp. Branch-free, so loops calling it vectorise; inputs come from integer
    /// accumulators and are never NaN.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        let (low, high) = self.bounds();
        v.max(low).min(high)
    }
}

/// Turns i32 accumulators back into floats: for each row `r` and column `o`,
/// `out(r, o) = epilogues[o]` applied to `acc[r][o]`. `acc` rows are `acc_stride` wide;
/// `store(r, o, value)` places each result. The reference [`EpilogueColumns::finish_row`] is
/// tested against.
#[cfg(test)]
pub fn dequantize_rows(
    acc: &[i32],
    acc_stride: usize,
    rows: usize,
    epilogues: &[super::Epilogue],
    mut store: impl FnMut(usize, usize, f32),
) {
    use super::store::codes::Sum;
    for r in 0..rows {
        let row = &acc[r * acc_stride..r * acc_stride + epilogues.len()];
        for (o, (&sum, e)) in row.iter().zip(epilogues).enumerate() {
            store(r, o, e.activation.apply(sum.affine(e)));
        }
    }
}

/// An int8 layer's per-channel epilogues as separate columns, so that finishing a row of sums is
/// one vectorised loop (the [`super::Epilogue`] structs interleave their fields).
#[derive(Debug, Clone, PartialEq)]
pub struct EpilogueColumns {
    offsets: Vec<i32>,
    scales: Vec<f32>,
    biases: Vec<f32>,
    lows: Vec<f32>,
    highs: Vec<f32>,
    /// `Σ_k W[o][k]`, for rows quantized with their own zero point.
    column_sums: Vec<i32>,
}

impl EpilogueColumns {
    pub fn new(epilogues: &[super::Epilogue], column_sums: &[i32]) -> Self {
        let bounds: Vec<(f32, f32)> = epilogues.iter().map(|e| e.activation.bounds()).collect();
        EpilogueColumns {
            offsets: epilogues.iter().map(|e| e.offset).collect(),
            scales: epilogues.iter().map(|e| e.scale).collect(),
            biases: epilogues.iter().map(|e| e.bias).collect(),
            lows: bounds.iter().map(|b| b.0).collect(),
            highs: bounds.iter().map(|b| b.1).collect(),
            column_sums: column_sums.iter().copied().take(epilogues.len()).collect(),
        }
    }

    /// `out[o] = act((sums[o] − offset_o) · scale_o + bias_o)`: what [`dequantize_rows`] stores,
    /// for one row. With `row_quant` (a row quantized with its own parameters, the epilogues
    /// holding the weight scales alone), `act((sums[o] − z · Σ_k W[o][k]) · (s · scale_o) +
    /// bias_o)` instead.
    pub fn finish_row(
        &self,
        isa: Isa,
        sums: &[i32],
        row_quant: Option<ActivationQuant>,
        out: &mut [f32],
    ) {
        let n = self.scales.len().min(sums.len()).min(out.len());
        let (sums, out) = (&sums[..n], &mut out[..n]);
        let columns = (&self.scales[..n], &self.biases[..n], &self.lows[..n], &self.highs[..n]);
        match row_quant {
            None => {
                let offsets = &self.offsets[..n];
                multiversion!(isa, {
                    let (scales, biases, lows, highs) = columns;
                    for o in 0..n {
                        let v = (sums[o] - offsets[o]) as f32 * scales[o] + biases[o];
                        out[o] = v.max(lows[o]).min(highs[o]);
                    }
                })
            }
            Some(quant) => {
                let (row_scale, zero_point) = (quant.scale, i32::from(quant.zero_point));
                let column_sums = &self.column_sums[..n];
                multiversion!(isa, {
                    let (scales, biases, lows, highs) = columns;
                    for o in 0..n {
                        let centred = (sums[o] - zero_point * column_sums[o]) as f32;
                        let v = centred * (row_scale * scales[o]) + biases[o];
                        out[o] = v.max(lows[o]).min(highs[o]);
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of a range of quantizations comes back from its value unchanged, on every
    /// ISA: a max pool on codes hands its readers exactly the codes they would compute.
    #[test]
    fn dequantized_codes_quantize_back_to_themselves() {
        let codes: Vec<u8> = (0..=255).collect();
        for (scale, zero_point) in [(0.0137f32, 0u8), (0.1, 128), (3.7e-3, 255), (0.9, 17)] {
            for isa in Isa::reference_first() {
                let mut values = vec![f32::NAN; 256];
                dequantize_codes(isa, &codes, ActivationQuant { scale, zero_point }, &mut values);
                let back: Vec<u8> =
                    values.iter().map(|&v| quantize_value(v, scale, zero_point)).collect();
                assert_eq!(back, codes, "scale {scale} zero point {zero_point} {isa:?}");
            }
        }
    }
    use proptest::prelude::*;

    #[test]
    fn rounding_is_half_to_even_like_onnx() {
        for (v, want) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
            (-2.5, -2.0),
            (254.5, 254.0),
            (3.4999, 3.0),
            (3.5001, 4.0),
            (1e30, 1e30),
        ] {
            assert_eq!(round_half_even(v), want, "round({v})");
        }
        assert!(round_half_even(f32::NAN).is_nan());
    }

    #[test]
    fn quantize_matches_the_onnx_reference_example() {
        // onnx/backend/test/case/node/quantizelinear.py, uint8 case.
        let x = [0.0, 2.0, 3.0, 1000.0, -254.0, -1000.0];
        let mut q = [0u8; 6];
        quantize_u8(Isa::SCALAR, &x, 2.0, 128, &mut q);
        assert_eq!(q, [128, 129, 130, 255, 1, 0]);
    }

    #[test]
    fn saturation_never_wraps() {
        assert_eq!(saturate_u8(-3.0), 0);
        assert_eq!(saturate_u8(300.0), 255);
        assert_eq!(saturate_i8(-300.0), -128);
        assert_eq!(saturate_i8(300.0), 127);
        assert_eq!(saturate_u8(f32::NAN), 0);
    }

    #[test]
    fn simd_quantize_matches_the_portable_loop() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 300.0).collect();
        let (mut simd, mut scalar) = (vec![0u8; 1000], vec![0u8; 1000]);
        quantize_u8(Isa::detect(), &values, 0.9, 60, &mut simd);
        quantize_u8(Isa::SCALAR, &values, 0.9, 60, &mut scalar);
        assert_eq!(simd, scalar);
    }

    /// The formula `quantize_i8_symmetric` replaces, kept as its reference.
    fn symmetric_reference(w: f32, scale: f32) -> i8 {
        saturate_i8(round_half_even(w / scale).max(-127.0))
    }

    #[test]
    fn symmetric_codes_match_the_reference_on_ties_and_extremes() {
        let mut values: Vec<f32> = (-300..=300).map(|i| i as f32 * 0.5).collect();
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e30, -1e30, 126.5]);
        for isa in Isa::reference_first() {
            for scale in [1.0, 0.5, 3.0, 1e-30] {
                let mut codes = vec![0i8; values.len()];
                quantize_i8_symmetric(isa, &values, scale, &mut codes);
                for (&w, &c) in values.iter().zip(&codes) {
                    assert_eq!(c, symmetric_reference(w, scale), "w {w} scale {scale} {isa:?}");
                }
            }
        }
    }

    #[test]
    fn abs_max_ignores_nan_like_the_float_fold() {
        let values = [0.5, f32::NAN, -3.0, 2.0, -0.0];
        assert_eq!(abs_max(Isa::detect(), &values), 3.0);
        assert_eq!(abs_max(Isa::SCALAR, &[f32::NEG_INFINITY, 1.0]), f32::INFINITY);
        assert_eq!(abs_max(Isa::SCALAR, &[]), 0.0);
        assert_eq!(abs_max(Isa::SCALAR, &[f32::NAN]), 0.0);
    }

    proptest! {
        #[test]
        fn rounding_agrees_with_std(v in -1e7f32..1e7f32) {
            prop_assert_eq!(round_half_even(v), v.round_ties_even());
        }

        #[test]
        fn symmetric_codes_agree_with_the_reference(
            values in proptest::collection::vec(-1e3f32..1e3f32, 0..70),
            scale in 1e-4f32..10.0,
        ) {
            for isa in Isa::reference_first() {
                let mut codes = vec![0i8; values.len()];
                quantize_i8_symmetric(isa, &values, scale, &mut codes);
                let want: Vec<i8> = values.iter().map(|&w| symmetric_reference(w, scale)).collect();
                prop_assert_eq!(&codes, &want);
            }
        }

        #[test]
        fn abs_max_agrees_with_the_float_fold(values in proptest::collection::vec(-1e30f32..1e30f32, 0..70)) {
            let want = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            prop_assert_eq!(abs_max(Isa::detect(), &values), want);
            prop_assert_eq!(abs_max(Isa::SCALAR, &values), want);
        }

        #[test]
        fn min_max_agrees_with_the_float_folds(
            values in proptest::collection::vec(-1e30f32..1e30f32, 0..70),
            nan_at in proptest::option::of(0usize..70),
        ) {
            let mut values = values;
            if let Some(i) = nan_at.filter(|&i| i < values.len()) {
                values[i] = f32::NAN;
            }
            let want = (
                values.iter().fold(f32::INFINITY, |m, &v| m.min(v)),
                values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            );
            for isa in Isa::reference_first() {
                prop_assert_eq!(min_max(isa, &values), want);
            }
        }

        #[test]
        fn finished_rows_agree_with_the_epilogues(
            sums in proptest::collection::vec(-100_000i32..100_000, 19),
            scale in 1e-3f32..1.0,
            zero_point in 0u8..=255,
            clip in proptest::bool::ANY,
        ) {
            let activation = if clip { Activation::Clip(-3.0, 40.0) } else { Activation::Identity };
            let column_sums: Vec<i32> = (0..19).map(|o| o * 37 - 300).collect();
            let epilogues: Vec<crate::kernels::Epilogue> = (0..19)
                .map(|o| crate::kernels::Epilogue {
                    offset: o * 11 - 50,
                    scale: 0.5 + o as f32 / 7.0,
                    bias: o as f32 - 1.0,
                    activation,
                })
                .collect();
            let columns = EpilogueColumns::new(&epilogues, &column_sums);
            let mut want = vec![0f32; 19];
            dequantize_rows(&sums, 19, 1, &epilogues, |_, o, v| want[o] = v);
            let row = ActivationQuant { scale, zero_point };
            let per_row: Vec<f32> = (0..19)
                .map(|o| {
                    let centred = (sums[o] - i32::from(zero_point) * column_sums[o]) as f32;
                    activation.apply(centred * (scale * epilogues[o].scale) + epilogues[o].bias)
                })
                .collect();
            for isa in Isa::reference_first() {
                let mut out = vec![f32::NAN; 19];
                columns.finish_row(isa, &sums, None, &mut out);
                prop_assert_eq!(&out, &want);
                columns.finish_row(isa, &sums, Some(row), &mut out);
                prop_assert_eq!(&out, &per_row);
            }
        }

        #[test]
        fn quantize_agrees_with_the_spec_formula(x in -1e4f32..1e4f32, scale in 1e-3f32..10.0, zp in 0u8..=255) {
            let mut q = [0u8];
            quantize_u8(Isa::detect(), &[x], scale, zp, &mut q);
            let spec = ((x / scale).round_ties_even() + f32::from(zp)).clamp(0.0, 255.0) as u8;
            prop_assert_eq!(q[0], spec);
        }
    }
}
