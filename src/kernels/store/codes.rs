//! Activations as int8 layers exchange them — floats, or u8 codes written by one int8 layer
//! with the next one's input parameters — and the store that finishes a layer's sums into
//! either: `act(sum · scale + bias)`, quantized when the output is codes.

use crate::kernels::quant::{
    multiversion, quantize_value, round_half_even, Activation, ActivationQuant,
};
use crate::kernels::{Isa, Tier};

/// What turns a row of sums into finished values: `act((sum − offset) · scale + bias)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epilogue {
    /// Subtracted from integer sums (the zero-point correction); unused for float sums.
    pub offset: i32,
    pub scale: f32,
    pub bias: f32,
    pub activation: Activation,
}

/// Sums a kernel produces: exact i32 accumulators, or f32 sums of integer products (exact).
pub trait Sum: Copy + Send + Sync + 'static {
    /// `self − offset` as f32 (float sums are centred already: the offset is not theirs).
    fn centred(self, offset: i32) -> f32;
    /// `(self − offset) · scale + bias`, before the activation.
    #[inline(always)]
    fn affine(self, e: &Epilogue) -> f32 {
        self.centred(e.offset) * e.scale + e.bias
    }
}

impl Sum for i32 {
    #[inline(always)]
    fn centred(self, offset: i32) -> f32 {
        (self - offset) as f32
    }
}

impl Sum for f32 {
    #[inline(always)]
    fn centred(self, _: i32) -> f32 {
        self
    }
}

/// An activation element the int8 ops read and write: `f32` (a float tensor, quantized as it is
/// read) or `u8` (codes already quantized with the reading layer's parameters by the int8 layer
/// before it, so no float round trip happens between int8 layers).
pub trait Element: bytemuck::Pod + Default + Send + Sync {
    /// What storing a computed value needs: nothing for floats, the code parameters for u8.
    type Store: Copy + Send + Sync;
    /// This value as a u8 code of `input`.
    fn to_code(self, input: ActivationQuant) -> u8;
    /// `dst[i] = to_code(src[i]) − zero point` as f32 (the depthwise kernel's centred codes).
    fn centred_row(isa: Isa, src: &[Self], input: ActivationQuant, dst: &mut [f32]) {
        let zero_point = f32::from(input.zero_point);
        multiversion!(isa, {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = f32::from(v.to_code(input)) - zero_point;
            }
        })
    }
    /// These values as codes when they are codes already (`u8`), to copy rather than quantize.
    fn as_codes(_values: &[Self]) -> Option<&[u8]> {
        None
    }
    /// `dst[i] = to_code(src[i])` (the byte depthwise kernel's padded rows).
    fn code_row(isa: Isa, src: &[Self], input: ActivationQuant, dst: &mut [u8]) {
        multiversion!(isa, {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v.to_code(input);
            }
        })
    }
    /// `row[left..left + src.len()] = to_code(src)` and the zero point in the rest of `row`
    /// (a padded row of the byte depthwise kernel; codes past the row's end are dropped).
    fn padded_row(isa: Isa, src: &[Self], input: ActivationQuant, left: usize, row: &mut [u8]) {
        let left = left.min(row.len());
        let inside = src.len().min(row.len() - left);
        row[..left].fill(input.zero_point);
        Self::code_row(isa, &src[..inside], input, &mut row[left..left + inside]);
        row[left + inside..].fill(input.zero_point);
    }
    /// [`Self::store_row`] of `rows` rows of `width` sums, `pitch` apart in `sums`, into
    /// consecutive rows of `dst` (a depthwise kernel's flat accumulators, whose rows carry
    /// columns no output uses).
    fn store_rows<S: SimdSum>(
        isa: Isa,
        sums: &[S],
        [rows, width]: [usize; 2],
        pitch: usize,
        e: Epilogue,
        store: Self::Store,
        dst: &mut [Self],
    ) {
        store_each_row(isa, sums, [rows, width], pitch, e, store, dst);
    }
    /// `dst[i] = finish(sums[i])`, stored as this element.
    fn store_row<S: SimdSum>(
        isa: Isa,
        sums: &[S],
        e: Epilogue,
        store: Self::Store,
        dst: &mut [Self],
    );
}

/// Whether `rows` rows of `width` sums `pitch` apart fit `sums_len` sums and `dst_len`
/// elements ([`Element::store_rows`]).
fn rows_fit(sums_len: usize, [rows, width]: [usize; 2], pitch: usize, dst_len: usize) -> bool {
    (rows == 0 || sums_len >= (rows - 1) * pitch + width)
        && dst_len >= rows * width
        && width <= pitch
}

/// [`Element::store_rows`] as one [`Element::store_row`] per row: what element types without a
/// strided SIMD store do, and the scalar reference of the one u8 has.
fn store_each_row<E: Element, S: SimdSum>(
    isa: Isa,
    sums: &[S],
    [rows, width]: [usize; 2],
    pitch: usize,
    e: Epilogue,
    store: E::Store,
    dst: &mut [E],
) {
    assert!(rows_fit(sums.len(), [rows, width], pitch, dst.len()));
    let lines = sums.chunks(pitch.max(1)).zip(dst.chunks_exact_mut(width.max(1)));
    for (sums, dst) in lines.take(rows) {
        E::store_row(isa, &sums[..width], e, store, dst);
    }
}

/// How float results are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FloatStore {
    /// Each result replaces what the output holds.
    #[default]
    Replace,
    /// Each result is added to what the output holds before the activation,
    /// `act(affine(sum) + dst)`: a residual connection's other branch, copied in beforehand, so
    /// the `Add` (and the ReLU after it) cost no pass of their own. The same float operations
    /// in the same order as storing the layer's result and adding the branch after it.
    AddTo,
}

impl Element for f32 {
    type Store = FloatStore;
    #[inline(always)]
    fn to_code(self, input: ActivationQuant) -> u8 {
        quantize_value(self, input.scale, input.zero_point)
    }
    fn store_row<S: SimdSum>(
        isa: Isa,
        sums: &[S],
        e: Epilogue,
        store: FloatStore,
        dst: &mut [f32],
    ) {
        let (low, high) = e.activation.bounds();
        let add = store == FloatStore::AddTo;
        multiversion!(isa, {
            for (o, &s) in dst.iter_mut().zip(sums) {
                let v = s.affine(&e);
                let v = if add { v + *o } else { v };
                // `clamp`-like without NaN handling (sums are finite): plain vmaxps/vminps.
                let v = if v < low { low } else { v };
                *o = if v > high { high } else { v };
            }
        })
    }
}

impl Element for u8 {
    type Store = OutputCodes;
    /// Already a code of `input`: the graph links only layers that agree on the parameters.
    #[inline(always)]
    fn to_code(self, _input: ActivationQuant) -> u8 {
        self
    }
    fn as_codes(values: &[u8]) -> Option<&[u8]> {
        Some(values)
    }
    fn code_row(_: Isa, src: &[u8], _: ActivationQuant, dst: &mut [u8]) {
        let len = src.len().min(dst.len());
        dst[..len].copy_from_slice(&src[..len]);
    }
    fn centred_row(isa: Isa, src: &[u8], input: ActivationQuant, dst: &mut [f32]) {
        let len = src.len().min(dst.len());
        match isa.tier() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with AVX-512F/BW; both slices
            // hold `len` elements.
            Tier::Avx512Vnni => unsafe {
                super::codes_avx512::centred(&src[..len], input.zero_point, dst)
            },
            _ => {
                for (d, &v) in dst.iter_mut().zip(&src[..len]) {
                    *d = f32::from(v) - f32::from(input.zero_point);
                }
            }
        }
    }
    fn store_rows<S: SimdSum>(
        isa: Isa,
        sums: &[S],
        [rows, width]: [usize; 2],
        pitch: usize,
        e: Epilogue,
        codes: OutputCodes,
        dst: &mut [u8],
    ) {
        assert!(rows_fit(sums.len(), [rows, width], pitch, dst.len()));
        match isa.tier() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with AVX-512F/BW; slices bound
            // every row read and written.
            Tier::Avx512Vnni => unsafe {
                super::codes_avx512::codes_rows(sums, [rows, width], pitch, &e, codes, dst)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the AVX2 instruction sets are only chosen on CPUs with AVX2 and FMA;
            // slices bound every row read and written (asserted).
            Tier::AvxVnni | Tier::Avx2 => unsafe {
                super::codes_avx2::codes_rows(sums, [rows, width], pitch, &e, codes, dst)
            },
            _ => store_each_row(isa, sums, [rows, width], pitch, e, codes, dst),
        }
    }
    fn store_row<S: SimdSum>(
        isa: Isa,
        sums: &[S],
        e: Epilogue,
        codes: OutputCodes,
        dst: &mut [u8],
    ) {
        assert!(dst.len() >= sums.len());
        match isa.tier() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with AVX-512F/BW; `dst` holds as
            // many elements as `sums` (asserted).
            Tier::Avx512Vnni => unsafe { super::codes_avx512::codes(sums, &e, codes, dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the AVX2 instruction sets are only chosen on CPUs with AVX2 and FMA;
            // `dst` holds as many elements as `sums` (asserted).
            Tier::AvxVnni | Tier::Avx2 => unsafe { super::codes_avx2::codes(sums, &e, codes, dst) },
            #[cfg(target_arch = "aarch64")]
            Tier::NeonI8mm | Tier::NeonDot | Tier::Neon => {
                super::codes_neon::codes(sums, &e, codes, dst)
            }
            _ => {
                let finish = codes.finish(&e);
                multiversion!(isa, {
                    for (d, &s) in dst.iter_mut().zip(sums) {
                        *d = finish.code(s.centred(finish.offset));
                    }
                })
            }
        }
    }
}

/// How a layer stores u8 codes for the next int8 layers: `q = saturate(round(v · (1 / scale)) +
/// zero_point)` — a multiply where `QuantizeLinear` divides (a vector division cost more than
/// the rest of the store), so a code may differ by one from the division's on values within
/// ~2^-17 (relative) of a rounding tie. The code bounds of one activation (the layer's) are
/// computed once here rather than per tile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputCodes {
    pub inverse_scale: f32,
    pub zero_point: u8,
    /// The activation `bounds` are for.
    activation: Activation,
    /// `activation`'s bounds as codes.
    bounds: (f32, f32),
}

impl From<ActivationQuant> for OutputCodes {
    fn from(q: ActivationQuant) -> Self {
        // No activation: the bounds are the whole code range.
        OutputCodes {
            inverse_scale: 1.0 / q.scale,
            zero_point: q.zero_point,
            activation: Activation::Identity,
            bounds: (0.0, 255.0),
        }
    }
}

impl OutputCodes {
    /// These codes with `activation`'s bounds precomputed (the activation of the layer that
    /// stores them: every tile of its store then skips computing them).
    pub fn with_activation(self, activation: Activation) -> Self {
        OutputCodes { activation, bounds: self.code_bounds(activation), ..self }
    }

    /// `activation`'s (low, high) bounds as codes: integers in [0, 255].
    fn code_bounds(self, activation: Activation) -> (f32, f32) {
        let zero_point = f32::from(self.zero_point);
        let (low, high) = activation.bounds();
        // Infinite bounds (no activation) saturate to the code range.
        let bound = |v: f32| round_half_even(v * self.inverse_scale + zero_point).clamp(0.0, 255.0);
        (bound(low), bound(high))
    }
}

/// An epilogue that finishes sums straight into codes: `clamp(round_half_even((sum − offset) ·
/// scale + shift), low, high)`. The float epilogue and the quantization are one multiply-add
/// (`scale = epilogue scale / output scale`, `shift = bias / output scale + zero point`), and
/// the activation is the code bounds (`ReLU`: the zero point; `ReLU6`: the code of 6): a SIMD
/// store is five instructions per 16 values instead of eleven, which mattered for the 1×1
/// layers of few input channels, whose stores cost as much as their products.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeFinish {
    pub offset: i32,
    pub scale: f32,
    pub shift: f32,
    /// The activation's bounds as codes, integers in [0, 255].
    pub low: f32,
    pub high: f32,
}

impl OutputCodes {
    /// How sums finished by `e` are stored as these codes.
    #[inline(always)]
    pub fn finish(self, e: &Epilogue) -> CodeFinish {
        let (low, high) = if e.activation == self.activation {
            self.bounds
        } else {
            self.code_bounds(e.activation)
        };
        CodeFinish {
            offset: e.offset,
            scale: e.scale * self.inverse_scale,
            shift: e.bias.mul_add(self.inverse_scale, f32::from(self.zero_point)),
            low,
            high,
        }
    }
}

impl CodeFinish {
    /// The code of a centred sum (the scalar reference of the SIMD stores; fused multiply-add
    /// as they do).
    #[inline(always)]
    pub fn code(&self, centred: f32) -> u8 {
        let q = round_half_even(centred.mul_add(self.scale, self.shift));
        let q = if q > self.low { q } else { self.low }; // NaN lands here too
        let q = if q < self.high { q } else { self.high };
        // SAFETY: q is in [low, high] ⊂ [0, 255] and integral, so the conversion is exact.
        unsafe { q.to_int_unchecked::<i32>() as u8 }
    }
}

#[cfg(target_arch = "x86_64")]
pub use super::codes_avx512::{SimdElement, SimdSum};

#[cfg(target_arch = "aarch64")]
pub use super::codes_neon::SimdSum;

/// Sums the SIMD store can load (every [`Sum`] on targets without it).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub trait SimdSum: Sum {}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
impl<S: Sum> SimdSum for S {}

/// Elements the SIMD kernels store (every [`Element`] on targets without them).
#[cfg(not(target_arch = "x86_64"))]
pub trait SimdElement: Element {}
#[cfg(not(target_arch = "x86_64"))]
impl<E: Element> SimdElement for E {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn epilogue(offset: i32, scale: f32, bias: f32, relu6: bool) -> Epilogue {
        let activation = if relu6 { Activation::Clip(0.0, 6.0) } else { Activation::Identity };
        Epilogue { offset, scale, bias, activation }
    }

    proptest! {
        /// The SIMD store equals the scalar reference byte for byte, for integer and float sums,
        /// any length (masked tails write nothing past the row), values far outside the code
        /// range; and each code is within one of `QuantizeLinear`'s of the float result.
        #[test]
        fn simd_codes_match_the_scalar_reference(
            sums in proptest::collection::vec(-300_000i32..300_000, 1..200),
            offset in -500i32..500, scale in 1e-4f32..0.05, bias in -2f32..2.0, relu6 in any::<bool>(),
            out_scale in 1e-3f32..0.5, zero_point in any::<u8>(),
        ) {
            let e = epilogue(offset, scale, bias, relu6);
            let codes = OutputCodes::from(ActivationQuant { scale: out_scale, zero_point });
            let floats_in: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
            let mut values = vec![0f32; sums.len()];
            f32::store_row(Isa::SCALAR, &sums, e, FloatStore::Replace, &mut values);
            for isa in Isa::reference_first() {
                let (mut from_i32, mut from_f32) = (vec![7u8; sums.len() + 1], vec![7u8; sums.len() + 1]);
                u8::store_row(isa, &sums, e, codes, &mut from_i32);
                u8::store_row(isa, &floats_in, Epilogue { offset: 0, ..e }, codes, &mut from_f32);
                prop_assert_eq!(from_i32[sums.len()], 7);
                let finish = codes.finish(&e);
                for (i, ((&q, &v), &s)) in from_i32.iter().zip(&values).zip(&sums).enumerate() {
                    prop_assert_eq!(q, finish.code((s - offset) as f32), "{:?} at {}", isa, i);
                    prop_assert!(q.abs_diff(quantize_value(v, out_scale, zero_point)) <= 1);
                }
                if offset == 0 {
                    prop_assert_eq!(&from_i32, &from_f32);
                }
            }
        }
    }

    proptest! {
        /// Centred codes: the SIMD widening equals the portable loop for any row length, and
        /// writes nothing past the row.
        #[test]
        fn centred_rows_match_the_portable_loop(codes in proptest::collection::vec(any::<u8>(), 0..70), zero_point in any::<u8>()) {
            let input = ActivationQuant { scale: 0.1, zero_point };
            let (mut simd, mut scalar) = (vec![9f32; codes.len() + 1], vec![9f32; codes.len() + 1]);
            u8::centred_row(Isa::detect(), &codes, input, &mut simd);
            u8::centred_row(Isa::SCALAR, &codes, input, &mut scalar);
            prop_assert_eq!(&simd, &scalar);
            prop_assert_eq!(simd[codes.len()], 9.0);
            let floats: Vec<f32> = codes.iter().map(|&q| (f32::from(q) - f32::from(zero_point)) * 0.1).collect();
            let mut from_floats = vec![9f32; codes.len() + 1];
            f32::centred_row(Isa::detect(), &floats, input, &mut from_floats);
            prop_assert_eq!(&from_floats, &scalar);
        }
    }

    proptest! {
        /// Rows of flat sums (a depthwise kernel's, `pitch` apart) stored at once equal one
        /// scalar row store per row, on every instruction set, and nothing is written past them.
        #[test]
        fn row_stores_equal_one_store_per_row(
            rows in 1usize..6, width in 1usize..70, slack in 0usize..20, seed in any::<u64>(),
            zero_point in any::<u8>(), relu6 in any::<bool>(),
        ) {
            let pitch = width + slack;
            let mut state = seed;
            let sums: Vec<i32> = (0..rows * pitch).map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 48) as i32 - (1 << 15)
            }).collect();
            let e = epilogue(1234, 3e-5, 0.25, relu6);
            let codes = OutputCodes::from(ActivationQuant { scale: 0.02, zero_point });
            let mut want = vec![7u8; rows * width];
            for (r, dst) in want.chunks_exact_mut(width).enumerate() {
                u8::store_row(Isa::SCALAR, &sums[r * pitch..r * pitch + width], e, codes, dst);
            }
            for isa in Isa::reference_first() {
                let mut got = vec![7u8; rows * width + 1];
                u8::store_rows(isa, &sums, [rows, width], pitch, e, codes, &mut got[..rows * width]);
                prop_assert_eq!(&got[..rows * width], &want[..], "{:?}", isa);
                prop_assert_eq!(got[rows * width], 7, "{:?} wrote past the rows", isa);
            }
        }
    }

    #[test]
    fn ties_round_to_even_in_both_paths() {
        // v / scale = k + 0.5 exactly (scale 1): even neighbours, as QuantizeLinear does.
        let sums: Vec<f32> = (0..100).map(|i| i as f32 - 20.5).collect();
        let e = epilogue(0, 1.0, 0.0, false);
        let codes = OutputCodes::from(ActivationQuant { scale: 1.0, zero_point: 10 });
        let want: Vec<u8> = sums.iter().map(|&v| quantize_value(v, 1.0, 10)).collect();
        for isa in Isa::reference_first() {
            let mut got = vec![0u8; sums.len()];
            u8::store_row(isa, &sums, e, codes, &mut got);
            assert_eq!(got, want, "{isa:?}");
        }
    }
}
