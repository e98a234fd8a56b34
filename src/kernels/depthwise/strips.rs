//! Depthwise convolution straight from a plane of u8 codes into the output plane, one strip of
//! up to 16 output columns at a time, sliding down the rows.
//!
//! For one input row and one word (four taps) of a kernel row, a byte permutation (`vpermb`)
//! of the row's bytes under the strip builds the 16 words `x[s·j + 4q .. s·j + 4q + 3]` of its
//! outputs `j` — the zero point where a tap falls in the padding. That vector is the same for
//! every output row the input row reaches: the strip keeps the words of the last `kh` input
//! rows in registers, so each output row costs one load and one permutation per word of the
//! row entering the window, one `vpdpbusd` per word of the kernel, and the finishing store,
//! straight from the sums in registers ([`crate::kernels::BytePlane`]'s padded copy permutes
//! once per output vector and kernel row, and stores its sums for a separate pass).
//!
//! Sums are of the raw codes, so `Σ w · q − zero_point · Σ w` is the centred sum: every
//! padding position reads the zero point, so the correction is the same for every output.

use super::bytes::{byte_kernel_fits, has_byte_permutes};
#[cfg(target_arch = "x86_64")]
use super::strips_avx512;
use crate::kernels::store::codes::SimdElement;
use crate::kernels::{ConvGeometry, Epilogue, Isa};

/// Outputs of one strip: one vector of sums.
pub(super) const LANES: usize = 16;

/// Bytes one load reads: those under a strip, the rest the zero point. Byte 63 is never
/// loaded, so the permutation reads the padding from there.
const LOAD_BYTES: usize = 63;

/// Largest column stride a strip's windows fit one load for (16 outputs of a 3-wide kernel at
/// stride 3 span 48 bytes).
const MAX_COLUMN_STRIDE: usize = 3;

/// Words of one kernel row: a kernel at most 8 wide.
pub(super) const MAX_ROW_WORDS: usize = 2;

/// One strip of output columns: where its input bytes lie in a row, and for each word of a
/// kernel row the permutation that builds the strip's 16 words from them. A strip of a plane
/// at most 8 outputs wide covers two output rows, `width` lanes each (see [`StripPlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Strip {
    /// First output column.
    pub(super) first: usize,
    /// Output columns (1 to 16).
    pub(super) lanes: usize,
    /// First input column loaded.
    pub(super) load_start: usize,
    /// Input bytes loaded from one row (below 64: the rest read as the zero point).
    pub(super) load_len: usize,
    /// Per word of a kernel row, the byte each output's tap reads from its own row's load
    /// ([`LOAD_BYTES`]: padding).
    pub(super) index: [[u8; 64]; MAX_ROW_WORDS],
    /// For a strip of two output rows, the same from one load that covers both input rows
    /// (the second's bytes `row_step · width` further).
    pub(super) pair_index: [[u8; 64]; MAX_ROW_WORDS],
}

/// The strips of a depthwise layer's geometry (one channel), the same for all its channels.
///
/// Planes at most 8 outputs wide (7×7) would leave half of each vector's lanes idle, so there
/// one vector holds two output rows side by side — contiguous in the output plane, one store —
/// and its words come from one load spanning both input rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripPlan {
    pub(super) geometry: ConvGeometry,
    pub(super) strips: Vec<Strip>,
    /// Output rows per vector: 1, or 2 for narrow planes.
    pub(super) rows_per_vector: usize,
    /// Bytes of the load that covers both input rows of a two-row vector.
    pub(super) pair_len: usize,
}

impl StripPlan {
    /// The plan for `geometry` when this CPU has AVX-512 VNNI and VBMI; `None` where the byte
    /// kernels do not take the kernel, for dilation, or for column strides above 3.
    pub fn new(isa: Isa, geometry: &ConvGeometry) -> Option<Self> {
        if !has_byte_permutes(isa) {
            return None;
        }
        Self::for_geometry(geometry)
    }

    /// [`Self::new`] on any CPU (the scalar path runs the same plan).
    pub(crate) fn for_geometry(g: &ConvGeometry) -> Option<Self> {
        let kh = g.kernel[0];
        let [sy, sx] = g.stride;
        let fits = byte_kernel_fits(g.kernel)
            && g.dilation == [1, 1]
            && sy >= 1
            && (1..=MAX_COLUMN_STRIDE).contains(&sx)
            && g.out.iter().all(|&side| side > 0)
            && g.height > 0
            && g.width > 0
            && kh <= g.height + 2 * g.pad[0];
        if !fits {
            return None;
        }
        let narrow = Self::strip(g, 0, 2).filter(|_| g.out[1] <= LANES / 2 && g.out[0] > 1);
        if let Some(strip) = narrow {
            let pair_len = sy * g.width + strip.load_len;
            if pair_len <= LOAD_BYTES {
                return Some(StripPlan {
                    geometry: *g,
                    strips: vec![strip],
                    rows_per_vector: 2,
                    pair_len,
                });
            }
        }
        let strips = (0..g.out[1])
            .step_by(LANES)
            .map(|first| Self::strip(g, first, 1))
            .collect::<Option<Vec<_>>>()?;
        Some(StripPlan { geometry: *g, strips, rows_per_vector: 1, pair_len: 0 })
    }

    /// The strip of outputs from column `first` over `rows` output rows; `None` if a tap it
    /// reads lies beyond one load.
    fn strip(g: &ConvGeometry, first: usize, rows: usize) -> Option<Strip> {
        let [_, kw] = g.kernel;
        let (sx, pad) = (g.stride[1], g.pad[1]);
        let lanes = (g.out[1] - first).min(LANES / rows);
        let load_start = (sx * first).saturating_sub(pad).min(g.width - 1);
        let load_len = (g.width - load_start).min(LOAD_BYTES);
        let row_step = g.stride[0] * g.width;
        let mut index = [[LOAD_BYTES as u8; 64]; MAX_ROW_WORDS];
        let mut pair_index = index;
        for q in 0..kw.div_ceil(4) {
            for (r, j, t) in
                (0..rows).flat_map(|r| (0..lanes).flat_map(move |j| (0..4).map(move |t| (r, j, t))))
            {
                let kx = 4 * q + t;
                let column = (sx * (first + j) + kx).checked_sub(pad);
                let Some(c) = column.filter(|&c| kx < kw && c < g.width) else { continue };
                let at = c - load_start;
                if at >= load_len {
                    return None;
                }
                let byte = 4 * (r * lanes + j) + t;
                index[q][byte] = at as u8;
                // Only two-row strips use it, and only when it fits (checked by the plan).
                pair_index[q][byte] = u8::try_from(r * row_step + at).unwrap_or(LOAD_BYTES as u8);
            }
        }
        Some(Strip { first, lanes, load_start, load_len, index, pair_index })
    }

    /// Input codes per channel.
    pub fn plane_len(&self) -> usize {
        self.geometry.height * self.geometry.width
    }

    /// Outputs per channel.
    pub fn out_len(&self) -> usize {
        self.geometry.out[0] * self.geometry.out[1]
    }

    /// Tap words per channel ([`crate::kernels::tap_words`]: kernel rows of `⌈kw/4⌉` words).
    pub fn words_len(&self) -> usize {
        self.geometry.kernel[0] * self.geometry.kernel[1].div_ceil(4)
    }

    /// Consecutive channels in one call (a 7×7 channel takes less time than a call's set-up):
    /// `planes` their input codes (zero point `zero_point`), `words` their tap words, channel
    /// `c` finished by `epilogues[c]` (whose offset removes `zero_point · Σ taps`) into its
    /// plane of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn run<E: SimdElement>(
        &self,
        isa: Isa,
        planes: &[u8],
        zero_point: u8,
        words: &[i32],
        epilogues: &[Epilogue],
        store: E::Store,
        out: &mut [E],
    ) {
        let channels = epilogues.len();
        assert!(
            planes.len() == channels * self.plane_len()
                && words.len() == channels * self.words_len()
                && out.len() == channels * self.out_len(),
            "StripPlan::run: planes, words or outputs do not match the geometry"
        );
        #[cfg(target_arch = "x86_64")]
        if has_byte_permutes(isa) {
            let out_len = self.out_len();
            let mut sink =
                strips_avx512::Finished::<E> { epilogues, store, out: out.as_mut_ptr(), out_len };
            // SAFETY: the CPU has the features (checked); the plan was built for this geometry,
            // so every load stays inside a row of a plane, and the sink writes only the
            // strips' lanes of the rows of each channel's plane (lengths asserted above).
            unsafe { strips_avx512::dispatch(self, planes, zero_point, words, &mut sink) };
            return;
        }
        let _ = isa;
        let (plane_len, words_len, out_len) = (self.plane_len(), self.words_len(), self.out_len());
        for (c, &e) in epilogues.iter().enumerate() {
            let plane = &planes[c * plane_len..(c + 1) * plane_len];
            let sums =
                self.sums_scalar(plane, zero_point, &words[c * words_len..(c + 1) * words_len]);
            E::store_row(Isa::SCALAR, &sums, e, store, &mut out[c * out_len..(c + 1) * out_len]);
        }
    }

    /// The raw sums of one channel (padding reading `zero_point`), row-major: the portable
    /// path and the reference the SIMD one is tested against.
    fn sums_scalar(&self, plane: &[u8], zero_point: u8, words: &[i32]) -> Vec<i32> {
        let g = &self.geometry;
        let per_row = g.kernel[1].div_ceil(4);
        let tap = |ky: usize, kx: usize| {
            i32::from(words[ky * per_row + kx / 4].to_le_bytes()[kx % 4] as i8)
        };
        let code = |iy: Option<usize>, ix: Option<usize>| match (iy, ix) {
            (Some(y), Some(x)) if y < g.height && x < g.width => i32::from(plane[y * g.width + x]),
            _ => i32::from(zero_point),
        };
        let mut sums = Vec::with_capacity(g.out[0] * g.out[1]);
        for oy in 0..g.out[0] {
            for ox in 0..g.out[1] {
                let mut sum = 0;
                for ky in 0..g.kernel[0] {
                    let iy = (oy * g.stride[0] + ky).checked_sub(g.pad[0]);
                    for kx in 0..g.kernel[1] {
                        let ix = (ox * g.stride[1] + kx).checked_sub(g.pad[1]);
                        sum += code(iy, ix) * tap(ky, kx);
                    }
                }
                sums.push(sum);
            }
        }
        sums
    }

    /// The raw sums the SIMD path computes for one channel (the scalar ones without it).
    #[cfg(test)]
    fn sums(&self, isa: Isa, plane: &[u8], zero_point: u8, words: &[i32]) -> Vec<i32> {
        #[cfg(target_arch = "x86_64")]
        if has_byte_permutes(isa) {
            let mut sums = vec![i32::MIN; self.out_len()];
            let mut sink = strips_avx512::RawSums { out: sums.as_mut_ptr() };
            // SAFETY: as in `run`, for one channel.
            unsafe { strips_avx512::dispatch(self, plane, zero_point, words, &mut sink) };
            return sums;
        }
        let _ = isa;
        self.sums_scalar(plane, zero_point, words)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::bytes::{tap_words, MAX_TAP_WORDS};
    use super::super::cases::{square_plane, Case};
    use super::*;
    use crate::kernels::{Activation, OutputCodes};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The scalar path and the SIMD kernel give the naive convolution's centred integer
        /// sums exactly (raw sums minus zero point · Σ taps), for every stride, padding and
        /// kernel shape a plan is built for, on planes one to five strips wide.
        #[test]
        fn sums_equal_the_integer_reference(
            h in 1usize..20, w in 1usize..90, kh in 1usize..9, kw in 1usize..9,
            sy in 1usize..3, sx in 1usize..4,
            pad_top in 0usize..4, pad_left in 0usize..4, cut in 0usize..2,
            zp in any::<u8>(), seed in any::<u64>(),
        ) {
            let case = Case::new([h, w], [kh, kw], [sy, sx], 1, [pad_top, pad_left], cut, seed);
            let Some(case) = case else { return Ok(()) };
            // Every geometry without dilation gets a plan: 16 windows span at most 52 bytes.
            let Some(plan) = StripPlan::for_geometry(&case.g) else {
                return Err(TestCaseError::fail(format!("no plan for {:?}", case.g)));
            };
            let want = case.centred_sums(zp);
            let mut words = [0; MAX_TAP_WORDS];
            let tap_sum = tap_words(case.g.kernel, &case.taps(), &mut words);
            let words = &words[..kh * kw.div_ceil(4)];
            for isa in Isa::reference_first() {
                let got: Vec<i32> = plan
                    .sums(isa, &case.codes, zp, words)
                    .iter()
                    .map(|&s| s - i32::from(zp) * tap_sum)
                    .collect();
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }

        /// The finished codes and floats (replacing the output or added to it) the kernel stores
        /// equal the scalar path's, for one to three channels per call, each with its own plane,
        /// taps and epilogue.
        #[test]
        fn stores_equal_the_scalar_path(
            side in 1usize..40, k in 1usize..8, s in 1usize..3, channels in 1usize..4,
            zp in any::<u8>(), scale in 0.001f32..0.2, relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let g = square_plane(side, k, s);
            let cases: Option<Vec<Case>> = (0..channels as u64)
                .map(|c| Case::new([side, side], [k, k], [s, s], 1, g.pad, 0, seed ^ c))
                .collect();
            let Some(cases) = cases else { return Ok(()) };
            let Some(plan) = StripPlan::for_geometry(&cases[0].g) else {
                return Err(TestCaseError::fail(format!("no plan for {:?}", cases[0].g)));
            };
            let activation = if relu6 { Activation::Clip(0.0, 6.0) } else { Activation::Identity };
            let (mut planes, mut all_words, mut epilogues) = (Vec::new(), Vec::new(), Vec::new());
            for (c, case) in cases.iter().enumerate() {
                let mut words = [0; MAX_TAP_WORDS];
                let tap_sum = tap_words(case.g.kernel, &case.taps(), &mut words);
                planes.extend_from_slice(&case.codes);
                all_words.extend_from_slice(&words[..plan.words_len()]);
                let offset = i32::from(zp) * tap_sum;
                epilogues.push(Epilogue { offset, scale: scale * (c + 1) as f32, bias: 0.5, activation });
            }
            let quant = crate::kernels::ActivationQuant { scale: 0.05, zero_point: 17 };
            let codes = OutputCodes::from(quant).with_activation(activation);
            let len = channels * plan.out_len();
            let mut outputs = Vec::new();
            for isa in Isa::reference_first() {
                let mut bytes = vec![0u8; len];
                plan.run(isa, &planes, zp, &all_words, &epilogues, codes, &mut bytes);
                let mut floats = vec![0f32; len];
                let store = crate::kernels::FloatStore::Replace;
                plan.run(isa, &planes, zp, &all_words, &epilogues, store, &mut floats);
                // Added to a residual branch already in the output.
                let mut added: Vec<f32> = (0..len).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
                let store = crate::kernels::FloatStore::AddTo;
                plan.run(isa, &planes, zp, &all_words, &epilogues, store, &mut added);
                outputs.push((bytes, floats, added));
            }
            prop_assert_eq!(&outputs[0].0, &outputs[1].0);
            prop_assert_eq!(&outputs[0].1, &outputs[1].1);
            prop_assert_eq!(&outputs[0].2, &outputs[1].2);
        }
    }

    /// The models' depthwise layers all get a plan: 3×3 and 5×5, stride 1 and 2, planes from
    /// 7×7 to 112×112.
    #[test]
    fn the_models_layers_are_planned() {
        for (side, k, s) in [
            (112, 3, 1),
            (112, 3, 2),
            (56, 3, 1),
            (56, 5, 2),
            (28, 5, 1),
            (14, 5, 1),
            (14, 3, 2),
            (7, 5, 1),
            (7, 3, 1),
        ] {
            assert!(StripPlan::for_geometry(&square_plane(side, k, s)).is_some(), "{side} {k} {s}");
        }
    }
}
