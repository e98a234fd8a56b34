//! Depthwise convolution with 16 channels in the lanes of a vector, exact in f32.
//!
//! The per-channel kernels keep the pixels of one channel in a vector: on the 7×7 and 14×14 planes
//! of the mobile nets' last stages a plane is a few vectors, and per-channel work (gathers, a store
//! per plane) dominates. Here 16 channels' centred codes are transposed into one padded plane of
//! pixels, each pixel a vector of the 16 channels (zeros in the padding: a centred code of the zero
//! point is 0), and every output pixel is one fused multiply-add per tap with that tap's 16
//! weights, eight output pixels at a time. The sums are transposed back into channel rows for the
//! layer's store. Exact for the same reason as [`crate::kernels::PhasedPlane`]: integer products
//! below 2^15, at most [`MAX_DEPTHWISE_TAPS`](crate::kernels::MAX_DEPTHWISE_TAPS) of them.

use super::phased::MAX_DEPTHWISE_TAPS;
use crate::kernels::quant::ActivationQuant;
use crate::kernels::store::codes::Element;
use crate::kernels::{ConvGeometry, Isa, Tier};

/// Channels computed together: the lanes of one vector.
pub const LANE_CHANNELS: usize = 16;

/// Largest padded plane (in pixels) the layout takes (a 28×28 plane with a 5×5 kernel): on
/// larger planes the byte kernels, four taps per `vpdpbusd` and no transposes, are faster.
const MAX_PADDED_PIXELS: usize = 32 * 32;

/// Fewest taps the runtime runs here: a 3×3 kernel is too little work per channel to pay for
/// the two transposes (EfficientNet-Lite0's 14×14 3×3 layers took 0.048 ms against 0.033 with
/// gathers), a 5×5 one is enough (7×7 planes 0.057 against 0.067 ms).
const MIN_TAPS: usize = 16;

/// Most output pixels the runtime runs here (14×14): on 28×28 planes the byte kernels are
/// faster (0.103 against 0.124 ms), and strided layers transpose four inputs per output.
const MAX_OUTPUTS: usize = 14 * 14;

/// Output pixels accumulated together in registers (each tap's weights loaded once for them).
#[cfg(target_arch = "x86_64")]
const RUN: usize = 8;

/// The padded pixel-major plane of a depthwise geometry's blocks of 16 channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanePlanes {
    geometry: ConvGeometry,
    /// Rows and columns of the padded plane.
    padded: [usize; 2],
}

impl LanePlanes {
    /// The layout for `geometry` on this CPU (AVX-512) where it is the fastest kernel: stride 1,
    /// at least [`MIN_TAPS`] taps, at most [`MAX_OUTPUTS`] output pixels; `None` otherwise.
    pub fn new(isa: Isa, geometry: &ConvGeometry) -> Option<Self> {
        let g = geometry;
        let wins = g.stride == [1, 1]
            && g.kernel[0] * g.kernel[1] >= MIN_TAPS
            && g.out[0] * g.out[1] <= MAX_OUTPUTS;
        (isa.tier() == Tier::Avx512Vnni && wins).then(|| Self::for_geometry(geometry))?
    }

    /// The layout whatever the CPU (the scalar reference runs it anywhere).
    fn for_geometry(geometry: &ConvGeometry) -> Option<Self> {
        let g = *geometry;
        let taps = g.kernel[0] * g.kernel[1];
        if taps == 0 || taps > MAX_DEPTHWISE_TAPS || g.out[0] == 0 || g.out[1] == 0 {
            return None;
        }
        // The padded plane reaches as far as the last output's last tap (or the input's end).
        let reach = |axis: usize| {
            let last = (g.out[axis] - 1) * g.stride[axis] + (g.kernel[axis] - 1) * g.dilation[axis];
            (last + 1).max(g.pad[axis] + [g.height, g.width][axis])
        };
        let padded = [reach(0), reach(1)];
        (padded[0] * padded[1] <= MAX_PADDED_PIXELS).then_some(LanePlanes { geometry: g, padded })
    }

    /// Floats of the padded plane ([`Self::fill`]'s `dst`).
    pub fn plane_len(&self) -> usize {
        self.padded[0] * self.padded[1] * LANE_CHANNELS
    }

    /// Floats of the channel rows (input or output planes of 16 channels, whichever is larger).
    pub fn rows_len(&self) -> usize {
        let g = &self.geometry;
        LANE_CHANNELS * (g.height * g.width).max(g.out[0] * g.out[1])
    }

    /// Floats of the pixel-major sums ([`Self::accumulate`]'s `sums`).
    pub fn sums_len(&self) -> usize {
        self.geometry.out[0] * self.geometry.out[1] * LANE_CHANNELS
    }

    /// Output pixels of one channel.
    pub fn out_pixels(&self) -> usize {
        self.geometry.out[0] * self.geometry.out[1]
    }

    /// Zeroes the padding of the padded plane: [`Self::fill`] writes only its inside, so the
    /// padding stays 0 for every block of channels after this.
    pub fn clear(&self, dst: &mut [f32]) {
        let g = &self.geometry;
        let [rows, columns] = self.padded;
        let row = columns * LANE_CHANNELS;
        let plane = &mut dst[..rows * row];
        let inside = g.pad[0]..g.pad[0] + g.height;
        let (top, rest) = plane.split_at_mut(inside.start * row);
        let (middle, bottom) = rest.split_at_mut(g.height * row);
        top.fill(0.0);
        bottom.fill(0.0);
        for line in middle.chunks_exact_mut(row.max(1)) {
            let (left, rest) = line.split_at_mut(g.pad[1] * LANE_CHANNELS);
            left.fill(0.0);
            rest[g.width * LANE_CHANNELS..].fill(0.0);
        }
    }

    /// Transposes the centred codes of `planes` (up to 16 input planes, one after the other;
    /// floats are quantized with `input`, codes read as they are) into the inside of the padded
    /// plane `dst`, one vector of 16 channels per pixel (missing channels 0). `rows` is scratch
    /// of [`Self::rows_len`] floats.
    pub fn fill<E: Element>(
        &self,
        isa: Isa,
        planes: &[E],
        input: ActivationQuant,
        rows: &mut [f32],
        dst: &mut [f32],
    ) {
        let g = &self.geometry;
        let pixels = g.height * g.width;
        let count = planes.len() / pixels.max(1);
        assert!(
            count <= LANE_CHANNELS
                && planes.len() == count * pixels
                && rows.len() >= LANE_CHANNELS * pixels
                && dst.len() >= self.plane_len(),
            "LanePlanes::fill: planes, rows and plane disagree"
        );
        #[cfg(target_arch = "x86_64")]
        if isa.tier() == Tier::Avx512Vnni {
            // Codes are converted in registers on their way into the transpose; floats are
            // quantized into centred rows first.
            let source = match E::as_codes(planes) {
                Some(codes) => avx512::Source::Codes { codes, zero_point: input.zero_point },
                None => {
                    self.centred_rows(isa, planes, input, rows);
                    avx512::Source::Rows(&rows[..LANE_CHANNELS * pixels])
                }
            };
            // SAFETY: the CPU has AVX-512F; the source holds `count` (codes) or 16 (rows) planes
            // of `pixels`, and every pixel's position lies inside `dst` (asserted above).
            return unsafe { avx512::fill(self, source, count, dst) };
        }
        self.centred_rows(isa, planes, input, rows);
        for p in 0..pixels {
            let out = &mut dst[self.position(p) * LANE_CHANNELS..][..LANE_CHANNELS];
            for (j, o) in out.iter_mut().enumerate() {
                *o = rows[j * pixels + p];
            }
        }
    }

    /// Each of `planes`' centred codes into a row of `rows` (16 rows of the plane's pixels,
    /// missing channels 0).
    fn centred_rows<E: Element>(
        &self,
        isa: Isa,
        planes: &[E],
        input: ActivationQuant,
        rows: &mut [f32],
    ) {
        let pixels = self.geometry.height * self.geometry.width;
        let rows = &mut rows[..LANE_CHANNELS * pixels];
        for (j, row) in rows.chunks_exact_mut(pixels.max(1)).enumerate() {
            match planes.get(j * pixels..(j + 1) * pixels) {
                Some(plane) => E::centred_row(isa, plane, input, row),
                None => row.fill(0.0),
            }
        }
    }

    /// Where input pixel `p` (row-major) lies in the padded plane.
    fn position(&self, p: usize) -> usize {
        let g = &self.geometry;
        let width = g.width.max(1);
        (p / width + g.pad[0]) * self.padded[1] + p % width + g.pad[1]
    }

    /// `sums[p · 16 + j] = Σ_taps plane(tap of p)[j] · weights[tap · 16 + j]`: every output pixel
    /// `p` (row-major) of the 16 channels, `weights` holding each tap's 16 channel weights.
    pub fn accumulate(&self, isa: Isa, plane: &[f32], weights: &[f32], sums: &mut [f32]) {
        let g = &self.geometry;
        let taps = g.kernel[0] * g.kernel[1];
        assert!(
            plane.len() >= self.plane_len()
                && weights.len() >= taps * LANE_CHANNELS
                && sums.len() >= self.sums_len(),
            "LanePlanes::accumulate: plane, weights and sums disagree"
        );
        #[cfg(target_arch = "x86_64")]
        if isa.tier() == Tier::Avx512Vnni {
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with AVX-512F; every pixel a tap
            // reads lies inside the padded plane (its size reaches the last output's last tap),
            // and the slices hold the lengths asserted.
            return unsafe { avx512::accumulate(self, plane, weights, sums) };
        }
        let _ = isa;
        let [kh, kw] = g.kernel;
        for oy in 0..g.out[0] {
            for ox in 0..g.out[1] {
                let out = &mut sums[(oy * g.out[1] + ox) * LANE_CHANNELS..][..LANE_CHANNELS];
                out.fill(0.0);
                for (ky, kx) in (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx))) {
                    let pixel = self.read_pixel(oy, ox, ky, kx);
                    let x = &plane[pixel * LANE_CHANNELS..][..LANE_CHANNELS];
                    let w = &weights[(ky * kw + kx) * LANE_CHANNELS..][..LANE_CHANNELS];
                    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
                        *o += x * w;
                    }
                }
            }
        }
    }

    /// The padded pixel kernel position `(ky, kx)` of output `(oy, ox)` reads.
    fn read_pixel(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> usize {
        let g = &self.geometry;
        let row = oy * g.stride[0] + ky * g.dilation[0];
        row * self.padded[1] + ox * g.stride[1] + kx * g.dilation[1]
    }

    /// Transposes pixel-major `sums` back into 16 channel rows of [`Self::out_pixels`] floats
    /// each, one after the other in `rows`.
    pub fn channel_rows(&self, isa: Isa, sums: &[f32], rows: &mut [f32]) {
        let pixels = self.out_pixels();
        assert!(
            sums.len() >= self.sums_len() && rows.len() >= LANE_CHANNELS * pixels,
            "LanePlanes::channel_rows: sums and rows disagree"
        );
        // Each pixel's vector of 16 is a "row" of the pixel-major sums: transposing the 16 ×
        // pixels channel-major view is the same shuffle read the other way.
        transpose_columns(
            isa,
            &sums[..self.sums_len()],
            pixels,
            &mut rows[..LANE_CHANNELS * pixels],
        );
    }
}

/// `rows[j · pixels + p] = sums[p · 16 + j]`: one vector of 16 per pixel into 16 rows.
fn transpose_columns(isa: Isa, sums: &[f32], pixels: usize, rows: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa.tier() == Tier::Avx512Vnni {
        for first in (0..pixels).step_by(LANE_CHANNELS) {
            let count = (pixels - first).min(LANE_CHANNELS);
            // SAFETY: the CPU has AVX-512F; `sums` holds `count` vectors of 16 from `first`,
            // each row of `rows` `count` floats from `first`.
            unsafe { avx512::transpose_out(sums, pixels, first, count, rows) };
        }
        return;
    }
    let _ = isa;
    for p in 0..pixels {
        for j in 0..LANE_CHANNELS {
            rows[j * pixels + p] = sums[p * LANE_CHANNELS + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LanePlanes, LANE_CHANNELS, RUN};

    /// Masks of the first `count` lanes.
    fn lanes(count: usize) -> __mmask16 {
        if count >= 16 {
            0xffff
        } else {
            (1u16 << count) - 1
        }
    }

    /// The 16 × 16 transpose: vector `i` of the result holds lane `i` of every input vector.
    /// Inlined into its AVX-512 callers (a call passed the 16 vectors through memory: 12 % of
    /// a model's time).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[inline(always)]
    unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved by lane, then by lane pairs (as doubles), then 128-bit
        // quarters exchanged twice.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let pd = _mm512_castps_pd;
        let mut u = [_mm512_setzero_ps(); 16];
        for b in (0..16).step_by(4) {
            u[b] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[b]), pd(t[b + 2])));
            u[b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[b]), pd(t[b + 2])));
            u[b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[b + 1]), pd(t[b + 3])));
            u[b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[b + 1]), pd(t[b + 3])));
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for half in [0, 8] {
            for i in 0..4 {
                let (a, b) = (u[half + i], u[half + i + 4]);
                v[half + i] = _mm512_shuffle_f32x4::<0x88>(a, b);
                v[half + i + 4] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            out[i] = _mm512_shuffle_f32x4::<0x88>(v[i], v[i + 8]);
            out[i + 8] = _mm512_shuffle_f32x4::<0xdd>(v[i], v[i + 8]);
        }
        out
    }

    /// What [`fill`] transposes: u8 codes of `count` planes, centred on the way, or 16 rows of
    /// centred codes.
    pub enum Source<'a> {
        Codes { codes: &'a [u8], zero_point: u8 },
        Rows(&'a [f32]),
    }

    /// [`LanePlanes::fill`]: 16 pixels at a time, one vector per channel transposed into one
    /// per pixel, stored at the pixels' padded positions.
    ///
    /// # Safety
    /// AVX-512F/BW must be available; `source` holds `count` planes (codes) or 16 (rows) of the
    /// layout's input pixels; `dst` holds the padded plane.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn fill(layout: &LanePlanes, source: Source<'_>, count: usize, dst: &mut [f32]) {
        let g = &layout.geometry;
        let (width, pixels) = (g.width.max(1), g.height * g.width);
        assert!(dst.len() >= layout.plane_len() && count <= LANE_CHANNELS);
        let rows = match source {
            Source::Codes { codes, .. } => codes.len() >= count * pixels,
            Source::Rows(rows) => rows.len() >= LANE_CHANNELS * pixels,
        };
        assert!(rows, "lane fill: the source is shorter than its planes");
        for first in (0..pixels).step_by(LANE_CHANNELS) {
            let valid = (pixels - first).min(LANE_CHANNELS);
            let mask = lanes(valid);
            let mut r = [_mm512_setzero_ps(); 16];
            for (j, v) in r.iter_mut().enumerate() {
                // SAFETY: the masks keep each load inside plane `j` (asserted above).
                *v = unsafe {
                    match source {
                        Source::Codes { codes, zero_point } if j < count => {
                            let bytes = _mm_maskz_loadu_epi8(
                                mask,
                                codes.as_ptr().add(j * pixels + first).cast(),
                            );
                            let wide = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
                            _mm512_maskz_sub_ps(mask, wide, _mm512_set1_ps(f32::from(zero_point)))
                        }
                        Source::Codes { .. } => _mm512_setzero_ps(),
                        Source::Rows(rows) => {
                            _mm512_maskz_loadu_ps(mask, rows.as_ptr().add(j * pixels + first))
                        }
                    }
                };
            }
            // SAFETY: AVX-512F is available.
            let columns = unsafe { transpose(r) };
            let (mut y, mut x) = (first / width, first % width);
            for column in columns.iter().take(valid) {
                let at = ((y + g.pad[0]) * layout.padded[1] + x + g.pad[1]) * LANE_CHANNELS;
                // SAFETY: an input pixel's padded position lies inside the plane (its size
                // covers the padding before plus the input), 16 floats from `at`.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(at), *column) };
                x += 1;
                if x == width {
                    (y, x) = (y + 1, 0);
                }
            }
        }
    }

    /// `rows[j · pixels + first + i] = sums[(first + i) · 16 + j]` for `i < count`.
    ///
    /// # Safety
    /// AVX-512F must be available; `sums` holds `first + count` vectors of 16 and `rows` 16 rows
    /// of `pixels`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_out(
        sums: &[f32],
        pixels: usize,
        first: usize,
        count: usize,
        rows: &mut [f32],
    ) {
        assert!(
            first + count <= pixels
                && sums.len() >= (first + count) * LANE_CHANNELS
                && rows.len() >= LANE_CHANNELS * pixels
        );
        let r = std::array::from_fn(|i| {
            if i < count {
                // SAFETY: vectors `first..first + count` of `sums` exist; missing ones are zeros.
                unsafe { _mm512_loadu_ps(sums.as_ptr().add((first + i) * LANE_CHANNELS)) }
            } else {
                _mm512_setzero_ps()
            }
        });
        let mask = lanes(count);
        for (j, v) in transpose(r).into_iter().enumerate() {
            // SAFETY: the mask keeps the store inside row `j` (asserted above).
            unsafe { _mm512_mask_storeu_ps(rows.as_mut_ptr().add(j * pixels + first), mask, v) };
        }
    }

    /// [`LanePlanes::accumulate`], runs of up to eight output pixels of a row at a time.
    ///
    /// # Safety
    /// AVX-512F must be available; `plane` holds the layout's padded plane, `weights` 16 per
    /// tap, `sums` 16 per output pixel.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn accumulate(
        layout: &LanePlanes,
        plane: &[f32],
        weights: &[f32],
        sums: &mut [f32],
    ) {
        let g = &layout.geometry;
        let out_width = g.out[1];
        for oy in 0..g.out[0] {
            let mut ox = 0;
            while ox < out_width {
                let count = (out_width - ox).min(RUN);
                // SAFETY: as for this function.
                unsafe {
                    match count {
                        8 => run::<8>(layout, plane, weights, sums, oy, ox),
                        7 => run::<7>(layout, plane, weights, sums, oy, ox),
                        6 => run::<6>(layout, plane, weights, sums, oy, ox),
                        5 => run::<5>(layout, plane, weights, sums, oy, ox),
                        4 => run::<4>(layout, plane, weights, sums, oy, ox),
                        3 => run::<3>(layout, plane, weights, sums, oy, ox),
                        2 => run::<2>(layout, plane, weights, sums, oy, ox),
                        _ => run::<1>(layout, plane, weights, sums, oy, ox),
                    }
                }
                ox += count;
            }
        }
    }

    /// Outputs `(oy, ox..ox + N)`: N sums of 16 channels in registers over every tap.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const N: usize>(
        layout: &LanePlanes,
        plane: &[f32],
        weights: &[f32],
        sums: &mut [f32],
        oy: usize,
        ox: usize,
    ) {
        let g = &layout.geometry;
        let [kh, kw] = g.kernel;
        let step = g.stride[1] * LANE_CHANNELS;
        let mut acc = [_mm512_setzero_ps(); N];
        for ky in 0..kh {
            for kx in 0..kw {
                let at = layout.read_pixel(oy, ox, ky, kx) * LANE_CHANNELS;
                // SAFETY: the taps' pixels of these outputs lie inside the padded plane (its
                // size reaches the last output's last tap), 16 floats each; `weights` holds the
                // tap's 16.
                unsafe {
                    let w = _mm512_loadu_ps(weights.as_ptr().add((ky * kw + kx) * LANE_CHANNELS));
                    let x = plane.as_ptr().add(at);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(i * step)), w, *a);
                    }
                }
            }
        }
        let out = (oy * g.out[1] + ox) * LANE_CHANNELS;
        for (i, a) in acc.into_iter().enumerate() {
            // SAFETY: `sums` holds 16 floats per output pixel.
            unsafe { _mm512_storeu_ps(sums.as_mut_ptr().add(out + i * LANE_CHANNELS), a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::depthwise::cases::{square_plane, Case};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// 16 channels (or fewer: a ragged last block) through fill, accumulate and the
        /// transpose back give each channel's naive centred sums exactly, on both paths.
        #[test]
        fn lanes_equal_the_integer_reference(
            h in 1usize..16, w in 1usize..30, kh in 1usize..6, kw in 1usize..6,
            sy in 1usize..3, sx in 1usize..3, d in 1usize..3,
            pad_top in 0usize..4, pad_left in 0usize..4, cut in 0usize..2,
            count in 1usize..=16, zp in any::<u8>(), seed in any::<u64>(),
        ) {
            let cases: Vec<Case> = (0..count as u64)
                .filter_map(|j| Case::new([h, w], [kh, kw], [sy, sx], d, [pad_top, pad_left], cut, seed ^ j))
                .collect();
            prop_assume!(cases.len() == count);
            let g = cases[0].g;
            let layout = LanePlanes::for_geometry(&g).unwrap();
            let codes: Vec<u8> = cases.iter().flat_map(|c| c.codes.clone()).collect();
            let taps = kh * kw;
            let mut weights = vec![0f32; taps * LANE_CHANNELS];
            for (j, case) in cases.iter().enumerate() {
                for (t, &v) in case.taps().iter().enumerate() {
                    weights[t * LANE_CHANNELS + j] = v;
                }
            }
            let input = ActivationQuant { scale: 0.1, zero_point: zp };
            let pixels = layout.out_pixels();
            for isa in Isa::reference_first() {
                // Stale values everywhere: clear and fill must leave none that matter.
                let mut plane = vec![f32::NAN; layout.plane_len()];
                let mut rows = vec![f32::NAN; layout.rows_len()];
                let mut sums = vec![f32::NAN; layout.sums_len()];
                layout.clear(&mut plane);
                layout.fill(isa, &codes, input, &mut rows, &mut plane);
                layout.accumulate(isa, &plane, &weights, &mut sums);
                layout.channel_rows(isa, &sums, &mut rows);
                for (j, case) in cases.iter().enumerate() {
                    let want: Vec<f32> = case.centred_sums(zp).iter().map(|&s| s as f32).collect();
                    prop_assert_eq!(&rows[j * pixels..(j + 1) * pixels], &want[..], "{:?} channel {}", isa, j);
                }
            }
        }
    }

    #[test]
    fn the_models_planes_fit_and_wide_ones_do_not() {
        let plane = square_plane;
        for (side, k, s) in [(7, 3, 1), (7, 5, 1), (14, 5, 1), (14, 5, 2), (28, 3, 2), (28, 5, 1)] {
            assert!(LanePlanes::for_geometry(&plane(side, k, s)).is_some(), "{side} {k} {s}");
        }
        assert!(LanePlanes::for_geometry(&plane(56, 3, 1)).is_none());
    }
}
