//! Depthwise convolution of small planes (7×7 to 28×28) and of strided 3×3 layers straight
//! from the input codes: no padded copy of the plane and no per-row work.
//!
//! Outputs are taken 16 at a time in row-major order, across output rows. For each such vector
//! and each word (four taps) of a kernel row, a precomputed [`Step`] says where the 16 windows
//! lie in the input plane: one masked 64-byte load covers them, a byte permutation (`vpermb`)
//! builds the 16 words of four codes — the zero point where a tap falls in the padding — and
//! one `vpdpbusd` multiplies them by the word's taps. The steps are the same for every channel
//! of a layer, and four channels share each step's loads. The sums come out in output order,
//! so one store finishes the plane.
//!
//! On 7×7 and 14×14 planes the padded-copy kernel ([`super::BytePlane`]) spent most of its
//! time on per-row work (a fill and a store per row of 7 to 16 codes); here a 7×7 plane with a
//! 3×3 kernel is 12 gathers and one store. A strided 3×3 layer's 16 consecutive outputs span
//! four input rows, more than one load: its vectors stay within one output row instead (each
//! row a multiple of 16 sums long, stored row by row). Other geometries whose windows span more
//! than 64 bytes, or whose table outgrows L1 (56×56 stride-1 planes, 28×28 ones with 5×5
//! kernels), are left to [`super::BytePlane`], whose rows are long enough to pay for it.

use super::depthwise_bytes::{byte_kernel_fits, has_byte_permutes};
#[cfg(test)]
use super::depthwise_bytes::{tap_words, MAX_TAP_WORDS};
use super::{ConvGeometry, Isa};

/// Outputs per vector of accumulators.
const LANES: usize = 16;

/// Most gathers a table holds: 256 × 88 bytes stay in L1 beside the plane. Larger tables
/// (a 28×28 plane with a 5×5 kernel takes 49 × 10 gathers, 43 KB) are read from L2 for every
/// channel, and the padded copy is faster there.
const MAX_STEPS: usize = 256;

/// Most gathers a table of row-aligned vectors holds: a strided layer's table (a 112 → 56
/// plane takes 56 rows × 4 vectors × 3 gathers, 59 KB) is read from L2, once per four channels,
/// and still beats the padded copy on strided 3×3 layers.
const MAX_ROW_STEPS: usize = 1024;

/// Most channels [`WindowTable::accumulate_channels`] gathers together (four sums of 16 outputs
/// in registers for each of their even and odd steps).
pub const MAX_GATHER_CHANNELS: usize = 4;

/// One gather: 16 outputs × one word of a kernel row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// Byte `4i + k` of the gathered words is byte `index[4i + k]` of the window.
    index: [u8; 64],
    /// Bytes of the gathered words that read the plane (the others hold the zero point).
    inside: u64,
    /// Bytes of the window they read: the load touches nothing else (nothing past the plane).
    window: u64,
    /// Where the window starts in the plane.
    start: usize,
}

/// The gathers of one depthwise geometry, shared by all its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTable {
    /// Gathers per vector of outputs: kernel rows × words per row.
    steps_per_vector: usize,
    steps: Vec<Step>,
    /// Codes of one input plane.
    plane_len: usize,
    /// Accumulators from one output row to the next.
    pitch: usize,
    /// Accumulators [`Self::accumulate`] writes: the outputs rounded up to whole vectors.
    pub flat_len: usize,
}

impl WindowTable {
    /// The table for `geometry` (one channel) when this CPU has AVX-512 VNNI and VBMI and every
    /// vector's windows fit 64 bytes; `None` otherwise.
    pub fn new(isa: Isa, geometry: &ConvGeometry) -> Option<Self> {
        if !has_byte_permutes(isa) {
            return None;
        }
        Self::for_geometry(geometry)
    }

    /// The table whatever the CPU (the scalar reference runs it anywhere): vectors of 16
    /// consecutive outputs across rows, or for a strided layer whose kernel rows are one word
    /// (3×3) where those span too much of the plane (two output rows are four input rows
    /// apart), vectors within one output row, each row starting a vector. Row vectors measured
    /// slower than the padded copy for stride-1 planes of 56×56 (0.097 → 0.119 ms) and 5×5
    /// kernels (0.068 → 0.073 ms), faster for strided 3×3 ones (0.098 → 0.083 ms).
    fn for_geometry(g: &ConvGeometry) -> Option<Self> {
        let row_pitch = g.out[1].next_multiple_of(LANES);
        let rows = g.stride[1] > 1 && g.kernel[1] <= 4;
        Self::build(g, g.out[1], MAX_STEPS)
            .or_else(|| rows.then(|| Self::build(g, row_pitch, MAX_ROW_STEPS))?)
    }

    /// The table with output rows `pitch` accumulators apart (`out[1]`: contiguous), at most
    /// `max_steps` gathers.
    fn build(g: &ConvGeometry, pitch: usize, max_steps: usize) -> Option<Self> {
        let [kh, kw] = g.kernel;
        let pixels = g.out[0] * g.out[1];
        if !byte_kernel_fits(g.kernel) || pixels == 0 {
            return None;
        }
        let words = kw.div_ceil(4);
        let vectors = (g.out[0] * pitch).div_ceil(LANES);
        if vectors * kh * words > max_steps {
            return None;
        }
        // The input index tap (ky, kx) of accumulator j reads, if j is an output and the tap
        // inside the plane.
        let input = |j: usize, ky: usize, kx: usize| {
            let (oy, ox) = (j / pitch, j % pitch);
            if oy >= g.out[0] || ox >= g.out[1] {
                return None;
            }
            let iy = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad[0])?;
            let ix = (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.pad[1])?;
            (iy < g.height && ix < g.width).then_some(iy * g.width + ix)
        };
        let mut steps = Vec::with_capacity(vectors * kh * words);
        for v in 0..vectors {
            for ky in 0..kh {
                for word in 0..words {
                    // (byte of the gathered words, input index) of every tap inside the plane.
                    let reads: Vec<(usize, usize)> = (0..LANES * 4)
                        .filter_map(|byte| {
                            let (j, kx) = (v * LANES + byte / 4, 4 * word + byte % 4);
                            if kx >= kw {
                                return None;
                            }
                            input(j, ky, kx).map(|at| (byte, at))
                        })
                        .collect();
                    let start = reads.iter().map(|&(_, at)| at).min().unwrap_or(0);
                    let mut step = Step { index: [0; 64], inside: 0, window: 0, start };
                    for (byte, at) in reads {
                        let offset = at - start;
                        if offset >= 64 {
                            return None;
                        }
                        step.index[byte] = offset as u8;
                        step.inside |= 1 << byte;
                        step.window |= 1 << offset;
                    }
                    steps.push(step);
                }
            }
        }
        Some(WindowTable {
            steps_per_vector: kh * words,
            steps,
            plane_len: g.height * g.width,
            pitch,
            flat_len: vectors * LANES,
        })
    }

    /// Accumulators from one output row to the next (the output width when rows are
    /// contiguous).
    pub fn pitch(&self) -> usize {
        self.pitch
    }

    /// `acc[j] = Σ_taps q · w` over output `j` (row-major) of the raw codes of `plane`, the
    /// padding read as `zero_point`; `flat_len` accumulators (those past the outputs are
    /// unused). `words` are [`tap_words`].
    pub fn accumulate(
        &self,
        isa: Isa,
        plane: &[u8],
        zero_point: u8,
        words: &[i32],
        acc: &mut [i32],
    ) {
        let plane = &plane[..self.plane_len.min(plane.len())];
        let words = &words[..self.steps_per_vector.min(words.len())];
        self.accumulate_channels(isa, plane, zero_point, words, acc)
    }

    /// [`Self::accumulate`] for up to [`MAX_GATHER_CHANNELS`] channels at once: `planes` holds
    /// their planes one after the other, `words` their tap words (one run per channel) and
    /// `acc` their accumulators (`flat_len` each). Each gather's step is loaded once for all of
    /// them.
    pub fn accumulate_channels(
        &self,
        isa: Isa,
        planes: &[u8],
        zero_point: u8,
        words: &[i32],
        acc: &mut [i32],
    ) {
        let per_vector = self.steps_per_vector;
        let channels = planes.len() / self.plane_len.max(1);
        assert!(
            (1..=MAX_GATHER_CHANNELS).contains(&channels)
                && planes.len() == channels * self.plane_len
                && words.len() == channels * per_vector
                && acc.len() >= channels * self.flat_len,
            "WindowTable::accumulate: planes, words and accumulators disagree"
        );
        #[cfg(target_arch = "x86_64")]
        if has_byte_permutes(isa) {
            let (table, flat_len) = (&self.steps[..], self.flat_len);
            // SAFETY: the CPU has the features (checked); every step reads only bytes at input
            // indices of a plane (built so), and each channel's `acc` has one vector per
            // `per_vector` steps.
            return unsafe {
                match channels {
                    4 => avx512::accumulate::<4>(
                        table, per_vector, planes, zero_point, words, acc, flat_len,
                    ),
                    3 => avx512::accumulate::<3>(
                        table, per_vector, planes, zero_point, words, acc, flat_len,
                    ),
                    2 => avx512::accumulate::<2>(
                        table, per_vector, planes, zero_point, words, acc, flat_len,
                    ),
                    _ => avx512::accumulate::<1>(
                        table, per_vector, planes, zero_point, words, acc, flat_len,
                    ),
                }
            };
        }
        let plane_len = self.plane_len;
        for c in 0..channels {
            let plane = &planes[c * plane_len..(c + 1) * plane_len];
            let words = &words[c * per_vector..(c + 1) * per_vector];
            let acc = &mut acc[c * self.flat_len..(c + 1) * self.flat_len];
            self.accumulate_scalar(plane, zero_point, words, acc);
        }
    }

    /// The scalar reference of one channel.
    fn accumulate_scalar(&self, plane: &[u8], zero_point: u8, words: &[i32], acc: &mut [i32]) {
        let per_vector = self.steps_per_vector;
        for (chunk, steps) in acc.chunks_exact_mut(LANES).zip(self.steps.chunks_exact(per_vector)) {
            for (i, a) in chunk.iter_mut().enumerate() {
                *a = steps.iter().zip(words).fold(0, |sum, (step, word)| {
                    let taps = word.to_le_bytes().map(|w| i32::from(w as i8));
                    sum + (0..4).fold(0, |s, k| {
                        let byte = 4 * i + k;
                        let inside = step.inside >> byte & 1 == 1;
                        let at = step.start + usize::from(step.index[byte]);
                        let q = if inside { plane[at] } else { zero_point };
                        s + i32::from(q) * taps[k]
                    })
                });
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Step;

    /// The sums of every vector of outputs over its `per_vector` steps, for `N` channels.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VBMI/VNNI; every step's `window` bytes from `start`
    /// lie inside each of the `N` planes (`planes.len() / N` bytes each); `words` holds
    /// `per_vector` words per channel and `acc` `flat_len` sums per channel, `steps` holding
    /// `per_vector` steps per 16 of them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    pub unsafe fn accumulate<const N: usize>(
        steps: &[Step],
        per_vector: usize,
        planes: &[u8],
        zero_point: u8,
        words: &[i32],
        acc: &mut [i32],
        flat_len: usize,
    ) {
        let zero_points = _mm512_set1_epi8(zero_point as i8);
        let plane_len = planes.len() / N;
        // `sums[c] + codes_c · word_c` for the 16 outputs of one step, the step's index and
        // masks loaded once for every channel.
        let gather = |sums: &mut [__m512i; N], step: &Step, s: usize| {
            // SAFETY: each load reads only the `window` bytes of its plane (the caller's
            // contract); `start` is inside it or 0 with an empty window.
            unsafe {
                let index = _mm512_loadu_si512(step.index.as_ptr().cast());
                for (c, sum) in sums.iter_mut().enumerate() {
                    let from = planes.as_ptr().wrapping_add(c * plane_len + step.start);
                    let window = _mm512_maskz_loadu_epi8(step.window, from.cast());
                    let codes =
                        _mm512_mask_permutexvar_epi8(zero_points, step.inside, index, window);
                    let word = _mm512_set1_epi32(words[c * per_vector + s]);
                    *sum = _mm512_dpbusd_epi32(*sum, codes, word);
                }
            }
        };
        for (v, steps) in steps.chunks_exact(per_vector).enumerate() {
            // Even and odd gathers in two sums per channel, held in registers: one chain of
            // ten `vpdpbusd` (a 5×5 kernel) was bound by the instruction's latency, and indexing
            // an array of two sums by `i % 2` kept them on the stack, each step waiting for the
            // last one's store.
            let (mut even, mut odd) = ([_mm512_setzero_si512(); N], [_mm512_setzero_si512(); N]);
            for (pair, steps) in steps.chunks_exact(2).enumerate() {
                gather(&mut even, &steps[0], 2 * pair);
                gather(&mut odd, &steps[1], 2 * pair + 1);
            }
            if let (1, Some(step)) = (per_vector % 2, steps.last()) {
                gather(&mut even, step, per_vector - 1);
            }
            for c in 0..N {
                let out = &mut acc[c * flat_len + 16 * v..][..16];
                // SAFETY: `out` is 16 i32.
                unsafe {
                    _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_add_epi32(even[c], odd[c]))
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::depthwise_cases::{square_plane, Case};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The scalar reference and the SIMD kernel give the naive convolution's centred
        /// integer sums exactly (raw sums minus zero point · Σ taps), for every stride,
        /// dilation, padding and kernel shape a table is built for.
        #[test]
        fn sums_equal_the_integer_reference(
            h in 1usize..16, w in 1usize..70, kh in 1usize..8, kw in 1usize..8,
            sy in 1usize..3, sx in 1usize..3, d in 1usize..3,
            pad_top in 0usize..4, pad_left in 0usize..4, cut in 0usize..2,
            zp in any::<u8>(), seed in any::<u64>(),
        ) {
            let case = Case::new([h, w], [kh, kw], [sy, sx], d, [pad_top, pad_left], cut, seed);
            let Some(case) = case else { return Ok(()) };
            // Refused: windows wider than 64 bytes or tables too big for L1 (the next test
            // checks the models' small planes are not).
            let Some(table) = WindowTable::for_geometry(&case.g) else { return Ok(()) };
            let want = case.centred_sums(zp);
            let mut words = [0; MAX_TAP_WORDS];
            let tap_sum = tap_words(case.g.kernel, &case.taps(), &mut words);
            let codes = &case.codes;
            let mut scalar = Vec::new();
            for isa in [Isa::Scalar, Isa::detect()] {
                let mut acc = vec![i32::MIN; table.flat_len];
                table.accumulate(isa, codes, zp, &words, &mut acc);
                let (pitch, width) = (table.pitch(), case.g.out[1]);
                let rows = acc.chunks(pitch).take(case.g.out[0]);
                let got: Vec<i32> =
                    rows.flat_map(|row| row[..width].iter().map(|&a| a - i32::from(zp) * tap_sum)).collect();
                prop_assert_eq!(&got, &want, "{:?}", isa);
                // Up to four channels gathered together: each the same as alone.
                for channels in 1..=MAX_GATHER_CHANNELS {
                    let planes: Vec<u8> = (0..channels)
                        .flat_map(|c| codes.iter().map(move |&q| q.wrapping_add(37 * c as u8)))
                        .collect();
                    let all_words: Vec<i32> = (0..channels)
                        .flat_map(|c| words[..table.steps_per_vector].iter().map(move |&w| w.rotate_left(8 * c as u32)))
                        .collect();
                    let mut together = vec![i32::MIN; channels * table.flat_len];
                    table.accumulate_channels(isa, &planes, zp, &all_words, &mut together);
                    for c in 0..channels {
                        let mut alone = vec![i32::MIN; table.flat_len];
                        let plane = &planes[c * codes.len()..(c + 1) * codes.len()];
                        let words = &all_words[c * table.steps_per_vector..(c + 1) * table.steps_per_vector];
                        table.accumulate(Isa::Scalar, plane, zp, words, &mut alone);
                        prop_assert_eq!(&together[c * table.flat_len..(c + 1) * table.flat_len], &alone[..], "{:?} {} channels", isa, channels);
                    }
                }
                if isa == Isa::Scalar {
                    scalar = acc;
                } else {
                    prop_assert_eq!(&acc, &scalar);
                }
            }
        }
    }

    #[test]
    fn the_models_small_planes_have_tables() {
        let plane = square_plane;
        for (side, k, s) in [(7, 3, 1), (7, 5, 1), (14, 3, 1), (14, 5, 2), (28, 3, 1), (28, 3, 2)] {
            assert!(WindowTable::for_geometry(&plane(side, k, s)).is_some(), "{side} {k} {s}");
        }
        // Strided layers over wide rows take vectors within output rows.
        for side in [112, 56] {
            let table = WindowTable::for_geometry(&plane(side, 3, 2)).unwrap();
            assert_eq!(table.pitch(), (side / 2).next_multiple_of(LANES), "{side}");
        }
        assert!(WindowTable::for_geometry(&plane(56, 5, 2)).is_none());
        // Large stride-1 planes have tables too big for L1.
        assert!(WindowTable::for_geometry(&plane(28, 5, 1)).is_none());
        assert!(WindowTable::for_geometry(&plane(56, 3, 1)).is_none());
    }
}
