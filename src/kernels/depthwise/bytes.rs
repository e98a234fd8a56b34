//! Depthwise convolution of one channel plane on its u8 codes, four taps per `vpdpbusd`.
//!
//! The plane is copied into padded rows of codes (the zero point in the padding), the rows split
//! into phases by the row stride so that every kernel row reads one contiguous run over the
//! flattened output rows (as in [`crate::kernels::PhasedPlane`]). For 16 outputs and one kernel
//! row, a byte permutation (`vpermb`) turns the 64 bytes under them into 16 words of four
//! consecutive columns — `x[s·j], x[s·j + 1], x[s·j + 2], x[s·j + 3]` for column stride `s` — and
//! one `vpdpbusd` multiplies them by that kernel row's four weights. A 3×3 kernel is three
//! instructions per 16 outputs where the f32 kernel needs nine multiply-adds, and the plane is a
//! byte per code instead of four.
//!
//! Sums are of the raw codes, so `Σ w · q − zero_point · Σ w` is the centred sum: every padding
//! position holds the zero point, so the correction is the same for every output and exact.

use crate::kernels::quant::ActivationQuant;
use crate::kernels::store::codes::Element;
use crate::kernels::{ConvGeometry, Isa};

/// Outputs one accumulator vector holds.
const LANES: usize = 16;

/// Bytes one permuted load reads (a 512-bit vector).
const WINDOW: usize = 64;

/// Largest kernel side the byte kernels take: its tap words fit [`MAX_TAP_WORDS`].
const MAX_KERNEL: usize = 8;

/// Weight words of one channel: up to [`MAX_KERNEL`] rows of two words.
pub const MAX_TAP_WORDS: usize = MAX_KERNEL * 2;

/// Whether the byte kernels ([`BytePlane`], [`crate::kernels::StripPlan`]) take a `kernel`: both
/// sides from 1 to 8, so its weight words fit [`MAX_TAP_WORDS`].
pub fn byte_kernel_fits(kernel: [usize; 2]) -> bool {
    kernel.iter().all(|&side| (1..=MAX_KERNEL).contains(&side))
}

/// Where each kernel row reads in a [`BytePlane`] buffer, and the buffer's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BytePlane {
    pub(super) geometry: ConvGeometry,
    /// Row and column strides.
    pub(super) stride: [usize; 2],
    /// Rows of one row phase.
    pub(super) rows: usize,
    /// Bytes per padded row (`pitch · column stride`).
    pub(super) row_bytes: usize,
    /// Row pitch of the flat accumulators (outputs per row, plus columns no output uses).
    pub pitch: usize,
    /// Byte offset of each (kernel row, word)'s window for output 0, kernel row-major.
    word_offsets: Vec<usize>,
    /// Accumulators computed per plane: `out_height · pitch`, rounded up to whole vectors.
    pub flat_len: usize,
}

impl BytePlane {
    /// The layout for `geometry` (one channel) when this CPU has the instructions (AVX-512 VNNI
    /// and VBMI, AVX2 or NEON) and the geometry fits: no dilation, a column stride of 1 or 2, kernel
    /// sides up to 8. `None` otherwise: [`crate::kernels::PhasedPlane`] takes those.
    pub fn new(isa: Isa, geometry: &ConvGeometry) -> Option<Self> {
        if !byte_kernel_runs(isa) {
            return None;
        }
        Self::for_geometry(geometry)
    }

    /// The layout whatever the CPU (the scalar reference runs it anywhere).
    fn for_geometry(geometry: &ConvGeometry) -> Option<Self> {
        let g = *geometry;
        let [kh, kw] = g.kernel;
        let [sy, sx] = g.stride;
        if !byte_kernel_fits(g.kernel)
            || g.dilation != [1, 1]
            || sy == 0
            || !(1..=2).contains(&sx)
            || g.out[0] == 0
            || g.out[1] == 0
        {
            return None;
        }
        let pitch = g.out[1] + (kw - 1) / sx;
        let rows = g.out[0] + (kh - 1) / sy;
        let row_bytes = pitch * sx;
        let words_per_row = kw.div_ceil(4);
        let plane_bytes = rows * row_bytes;
        let mut word_offsets = Vec::with_capacity(kh * words_per_row);
        for ky in 0..kh {
            for word in 0..words_per_row {
                word_offsets.push((ky % sy) * plane_bytes + (ky / sy) * row_bytes + 4 * word);
            }
        }
        let flat_len = (g.out[0] * pitch).div_ceil(LANES) * LANES;
        Some(BytePlane {
            geometry: g,
            stride: [sy, sx],
            rows,
            row_bytes,
            pitch,
            word_offsets,
            flat_len,
        })
    }

    /// Bytes of the row phases.
    pub(super) fn planes_len(&self) -> usize {
        self.stride[0] * self.rows * self.row_bytes
    }

    /// Length of the buffer [`Self::fill`] writes: the row phases, plus the slack the last
    /// vector's window reads past them.
    pub fn buffer_len(&self) -> usize {
        let last = self.word_offsets.iter().max().copied().unwrap_or(0);
        let reach = last + self.stride[1] * (self.flat_len - LANES) + WINDOW;
        self.planes_len().max(reach)
    }

    /// Copies one `height × width` plane (floats quantized with `input`, or codes of it
    /// already) into `dst` (`buffer_len` bytes): codes at their padded positions in their row
    /// phase, the zero point everywhere else.
    pub fn fill<E: Element>(&self, isa: Isa, plane: &[E], input: ActivationQuant, dst: &mut [u8]) {
        let g = &self.geometry;
        let zero_point = input.zero_point;
        let (row_bytes, sy) = (self.row_bytes, self.stride[0]);
        assert!(plane.len() >= g.height * g.width && dst.len() >= self.buffer_len());
        #[cfg(target_arch = "x86_64")]
        if let (Some(codes), true) = (E::as_codes(plane), has_byte_permutes(isa)) {
            // SAFETY: the CPU has AVX-512F/BW (checked); the slices hold the plane and the
            // buffer (asserted), and the kernel indexes rows within both.
            return unsafe { avx512::fill(self, codes, zero_point, &mut dst[..self.buffer_len()]) };
        }
        #[cfg(target_arch = "x86_64")]
        if let (Some(codes), true) = (E::as_codes(plane), isa.is_avx2()) {
            let dst = &mut dst[..self.buffer_len()];
            // SAFETY: the AVX2 instruction sets are only chosen on CPUs with AVX2; the slices
            // hold the plane and the buffer (asserted).
            return unsafe { super::bytes_avx2::fill(self, codes, zero_point, dst) };
        }
        let rows = self.rows;
        let phase_rows = (0..sy).flat_map(|py| (0..rows).map(move |qy| qy * sy + py));
        for (row, padded) in dst[..self.planes_len()].chunks_exact_mut(row_bytes).zip(phase_rows) {
            // Row qy of phase py holds padded row qy · sy + py.
            match padded.checked_sub(g.pad[0]).filter(|&y| y < g.height) {
                Some(y) => {
                    E::padded_row(isa, &plane[y * g.width..][..g.width], input, g.pad[1], row)
                }
                None => row.fill(zero_point),
            }
        }
        dst[self.planes_len()..self.buffer_len()].fill(zero_point);
    }

    /// `acc[oy · pitch + ox] = Σ_taps q · w` of the raw codes over the filled buffer
    /// (`flat_len` accumulators; columns `ox ≥ out_width` hold values no output uses).
    /// `words` are [`tap_words`].
    pub fn accumulate(&self, isa: Isa, x: &[u8], words: &[i32], acc: &mut [i32]) {
        assert!(x.len() >= self.buffer_len() && acc.len() >= self.flat_len);
        let acc = &mut acc[..self.flat_len];
        let words = &words[..self.word_offsets.len()];
        let sx = self.stride[1];
        #[cfg(target_arch = "x86_64")]
        if has_byte_permutes(isa) {
            // SAFETY: the CPU has the features (checked); every window read is inside `x`:
            // the furthest starts at max(word_offsets) + sx · (flat_len − 16) and reads 64
            // bytes, which `buffer_len` (asserted) covers.
            return unsafe { avx512::accumulate(x, &self.word_offsets, words, sx, acc) };
        }
        #[cfg(target_arch = "x86_64")]
        if isa.is_avx2() {
            // SAFETY: the AVX2 instruction sets are only chosen on CPUs that run them; every
            // window read is inside `x`: the furthest starts at max(word_offsets) +
            // sx · (flat_len − 8) + 4 · sx and reads 16 bytes, short of the 64 bytes from
            // max(word_offsets) + sx · (flat_len − 16) that `buffer_len` (asserted) covers.
            return unsafe {
                super::bytes_avx2::accumulate(isa, x, &self.word_offsets, words, sx, acc)
            };
        }
        #[cfg(target_arch = "aarch64")]
        if isa.is_neon() {
            // SAFETY: the NEON instruction sets are only chosen on CPUs that run them; every
            // window read is inside `x`: the furthest starts at max(word_offsets) +
            // sx · (flat_len − 4) and reads 16 bytes, short of the 64 bytes from
            // max(word_offsets) + sx · (flat_len − 16) that `buffer_len` (asserted) covers.
            return unsafe {
                super::bytes_neon::accumulate(isa, x, &self.word_offsets, words, sx, acc)
            };
        }
        let _ = isa;
        for (i, a) in acc.iter_mut().enumerate() {
            *a = self.word_offsets.iter().zip(words).fold(0, |sum, (&offset, &word)| {
                let four = &x[offset + sx * i..][..4];
                let taps = word.to_le_bytes();
                sum + four
                    .iter()
                    .zip(taps)
                    .map(|(&q, w)| i32::from(q) * i32::from(w as i8))
                    .sum::<i32>()
            });
        }
    }
}

/// Weight words of the kernel rows of one channel's `taps` (kernel row-major, i8 values as f32)
/// into `words`: `⌈width / 4⌉` words per row, four taps each, 0 past the kernel's width.
/// Returns `Σ taps` (times the zero point, the part of raw-code sums that centring removes).
pub fn tap_words(kernel: [usize; 2], taps: &[f32], words: &mut [i32; MAX_TAP_WORDS]) -> i32 {
    let [kh, kw] = kernel;
    let words_per_row = kw.div_ceil(4);
    *words = [0; MAX_TAP_WORDS];
    let mut sum = 0;
    for ky in 0..kh.min(MAX_KERNEL) {
        for kx in 0..kw.min(MAX_KERNEL) {
            let tap = taps.get(ky * kw + kx).copied().unwrap_or(0.0) as i8;
            sum += i32::from(tap);
            let word = &mut words[ky * words_per_row + kx / 4];
            *word |= i32::from(tap as u8) << (8 * (kx % 4));
        }
    }
    sum
}

/// Whether `isa` runs [`BytePlane`]'s SIMD accumulation: AVX-512 with VBMI's byte permutation,
/// the 256-bit instruction sets (byte shuffles within 128-bit lanes), NEON (table lookups).
fn byte_kernel_runs(isa: Isa) -> bool {
    has_byte_permutes(isa) || isa.is_avx2() || isa.is_neon()
}

/// Whether `isa` runs the byte kernel here: AVX-512 VNNI plus VBMI's byte permutation.
pub(in crate::kernels) fn has_byte_permutes(isa: Isa) -> bool {
    isa.byte_permutes()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::BytePlane;

    /// [`BytePlane::fill`] from codes: every row is one masked load (the zero point in the
    /// lanes outside the input row) and one masked store per 64 bytes, in one loop over the
    /// plane — a call per row (padding fills and a copy) cost more than the row on 7×7 and
    /// 14×14 planes.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW; `codes` holds the `height × width` plane and `dst`
    /// is `layout.buffer_len()` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn fill(layout: &BytePlane, codes: &[u8], zero_point: u8, dst: &mut [u8]) {
        let g = &layout.geometry;
        let below = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        let zero_points = _mm512_set1_epi8(zero_point as i8);
        let (row_bytes, rows, sy) = (layout.row_bytes, layout.rows, layout.stride[0]);
        let (left, end) = (g.pad[1], (g.pad[1] + g.width).min(row_bytes));
        debug_assert!(codes.len() >= g.height * g.width && dst.len() == layout.buffer_len());
        // Row qy of phase py holds padded row qy · sy + py (nested loops: a division per row
        // cost more than the row).
        let phase_rows = (0..sy).flat_map(|py| (0..rows).map(move |qy| qy * sy + py));
        for (r, padded) in phase_rows.enumerate() {
            let input_row = padded.checked_sub(g.pad[0]).filter(|&y| y < g.height);
            let out = dst.as_mut_ptr().wrapping_add(r * row_bytes);
            for start in (0..row_bytes).step_by(64) {
                let lanes = below(row_bytes - start);
                // SAFETY: lanes of padded columns [left, end) read input columns
                // [0, width) of an input row inside `codes`; the others are never read (the
                // pointer is formed with wrapping arithmetic: it may lie before the row).
                // The store writes this row's bytes, inside `dst`.
                unsafe {
                    let bytes = match input_row {
                        Some(y) => {
                            let inside = below(end.saturating_sub(start))
                                & !below(left.saturating_sub(start));
                            let from = codes.as_ptr().wrapping_add(y * g.width + start);
                            let from = from.wrapping_sub(left);
                            _mm512_mask_loadu_epi8(zero_points, inside, from.cast())
                        }
                        None => zero_points,
                    };
                    _mm512_mask_storeu_epi8(out.add(start).cast(), lanes, bytes);
                }
            }
        }
        let slack = layout.planes_len();
        for start in (slack..dst.len()).step_by(64) {
            // SAFETY: the mask keeps the store inside `dst`.
            unsafe {
                let lanes = below(dst.len() - start);
                _mm512_mask_storeu_epi8(dst.as_mut_ptr().add(start).cast(), lanes, zero_points);
            }
        }
    }

    /// Vectors accumulated together: four independent `vpdpbusd` chains.
    const BLOCK: usize = 4;

    /// The flat sums over the windows at `offsets` with their weight `words`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VBMI/VNNI; `acc.len()` is a multiple of 16 and for
    /// every offset `offset + sx · (acc.len() − 16) + 64 ≤ x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    pub unsafe fn accumulate(
        x: &[u8],
        offsets: &[usize],
        words: &[i32],
        sx: usize,
        acc: &mut [i32],
    ) {
        // Byte 4j + k of the permuted window is column sx · j + k of the loaded one.
        let index: [u8; 64] = std::array::from_fn(|b| (sx * (b / 4) + b % 4) as u8);
        // SAFETY: 64 bytes read from a 64-byte array.
        let index = unsafe { _mm512_loadu_si512(index.as_ptr().cast()) };
        let xp = x.as_ptr();
        let step = sx * super::LANES;
        let whole = acc.len() / (BLOCK * super::LANES) * (BLOCK * super::LANES);
        for start in (0..whole).step_by(BLOCK * super::LANES) {
            let mut sums = [_mm512_setzero_si512(); BLOCK];
            for (&offset, &word) in offsets.iter().zip(words) {
                let w = _mm512_set1_epi32(word);
                for (v, sum) in sums.iter_mut().enumerate() {
                    // SAFETY: inside `x` by the caller's contract.
                    let window = unsafe {
                        _mm512_loadu_si512(xp.add(offset + sx * start + v * step).cast())
                    };
                    *sum = _mm512_dpbusd_epi32(*sum, _mm512_permutexvar_epi8(index, window), w);
                }
            }
            for (v, sum) in sums.iter().enumerate() {
                // SAFETY: `start + 16 · (v + 1) ≤ whole ≤ acc.len()`.
                unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(start + v * 16).cast(), *sum) };
            }
        }
        for start in (whole..acc.len()).step_by(super::LANES) {
            let mut sum = _mm512_setzero_si512();
            for (&offset, &word) in offsets.iter().zip(words) {
                // SAFETY: inside `x` by the caller's contract.
                let window = unsafe { _mm512_loadu_si512(xp.add(offset + sx * start).cast()) };
                let w = _mm512_set1_epi32(word);
                sum = _mm512_dpbusd_epi32(sum, _mm512_permutexvar_epi8(index, window), w);
            }
            // SAFETY: `acc.len()` is a multiple of 16, so `start + 16 ≤ acc.len()`.
            unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(start).cast(), sum) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::depthwise::cases::Case;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// The scalar reference and the SIMD kernel give the centred integer sums of the naive
        /// convolution exactly (raw sums minus zero point · Σ taps), for every stride, padding
        /// and kernel shape the layout takes, including padding that cuts rows and columns off.
        #[test]
        fn sums_equal_the_integer_reference(
            h in 1usize..20, w in 1usize..40, kh in 1usize..8, kw in 1usize..8,
            sy in 1usize..3, sx in 1usize..3,
            pad_top in 0usize..4, pad_left in 0usize..4, cut in 0usize..2,
            zp in any::<u8>(), seed in any::<u64>(), float_input in any::<bool>(),
        ) {
            let case = Case::new([h, w], [kh, kw], [sy, sx], 1, [pad_top, pad_left], cut, seed);
            let Some(case) = case else { return Ok(()) };
            let (g, out, codes) = (case.g, case.g.out, case.codes.as_slice());
            let want = case.centred_sums(zp);
            let layout = BytePlane::for_geometry(&g).expect("a supported geometry");
            let mut words = [0; MAX_TAP_WORDS];
            let tap_sum = tap_words(g.kernel, &case.taps(), &mut words);
            // Scale 1 and the zero point given: quantizing the floats gives back `codes`.
            let input = ActivationQuant { scale: 1.0, zero_point: zp };
            let floats: Vec<f32> = codes.iter().map(|&q| f32::from(q) - f32::from(zp)).collect();
            let (mut scalar, mut scalar_buffer) = (Vec::new(), Vec::new());
            for isa in Isa::reference_first() {
                let mut buffer = vec![0xa5u8; layout.buffer_len()];
                if float_input {
                    layout.fill(isa, &floats, input, &mut buffer);
                } else {
                    layout.fill(isa, codes, input, &mut buffer);
                }
                let mut acc = vec![i32::MIN; layout.flat_len];
                layout.accumulate(isa, &buffer, &words, &mut acc);
                let got: Vec<i32> = (0..out[0])
                    .flat_map(|oy| (0..out[1]).map(move |ox| (oy, ox)))
                    .map(|(oy, ox)| acc[oy * layout.pitch + ox] - i32::from(zp) * tap_sum)
                    .collect();
                prop_assert_eq!(&got, &want, "{:?}", isa);
                // Every accumulator, used or not, and every byte of the padded copy are the
                // same on every ISA.
                if isa == Isa::SCALAR {
                    (scalar, scalar_buffer) = (acc, buffer);
                } else {
                    prop_assert_eq!(&acc, &scalar, "{:?}", isa);
                    prop_assert_eq!(&buffer, &scalar_buffer, "{:?}", isa);
                }
            }
        }
    }

    #[test]
    fn unsupported_geometries_are_refused() {
        let base = ConvGeometry {
            channels: 1,
            height: 14,
            width: 14,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pad: [1, 1],
            out: [14, 14],
        };
        assert!(BytePlane::for_geometry(&base).is_some());
        let dilated = ConvGeometry { dilation: [2, 2], out: [12, 12], ..base };
        assert!(BytePlane::for_geometry(&dilated).is_none());
        let wide = ConvGeometry { kernel: [3, 9], out: [14, 8], ..base };
        assert!(BytePlane::for_geometry(&wide).is_none());
        let strided = ConvGeometry { stride: [1, 3], out: [14, 5], ..base };
        assert!(BytePlane::for_geometry(&strided).is_none());
    }
}
