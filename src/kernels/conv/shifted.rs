//! Stride-1 "same" convolutions that read their C4 input planes in place, without im2col.
//!
//! When a k×k convolution keeps its plane's size, every output pixel reads the input pixel a
//! fixed distance away for a given kernel position: `(ky·d − pad)·width + (kx·d − pad)` words,
//! the same for all pixels. So the GEMM can read each tap's operand row straight from the input
//! plane, shifted. Two things make it exact: each plane lies between guard words holding the
//! fill (taps above the first or below the last row read them), and a tap whose column falls
//! outside the row masks those lanes to the fill (otherwise they would read the neighbouring
//! row's pixel). im2col would copy every input word k² times.

use std::ops::Range;

use ndarray::{s, ArrayView2, ArrayViewMut2, Axis};

#[cfg(target_arch = "x86_64")]
use super::planar::row_stride;
use super::planar::{word_dot, PlanarWeights};
use super::planar_tail::{conv_planar_tail, tail_pixels};
use crate::kernels::store::codes::SimdElement;
use crate::kernels::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use crate::kernels::Tier;
use crate::kernels::{Epilogue, Isa};

/// Most kernel columns a shifted convolution may have (one pair of lane masks each per tile).
pub const MAX_SHIFTED_COLUMNS: usize = 8;

/// Most kernel positions a shifted convolution may have.
pub const MAX_SHIFTED_TAPS: usize = 64;

/// The C4 words of an image laid out for [`conv_shifted`]: each channel group's plane of
/// `pixels` words between `guard` words of the fill on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShiftedPlanes {
    pub groups: usize,
    pub pixels: usize,
    pub guard: usize,
}

impl ShiftedPlanes {
    /// The layout for a convolution that can read its planes in place: stride 1, output as
    /// large as the input, larger than 1×1, at most [`MAX_SHIFTED_COLUMNS`] kernel columns and
    /// [`MAX_SHIFTED_TAPS`] positions. `None` for any other.
    pub fn for_conv(g: &ConvGeometry) -> Option<Self> {
        let same = g.stride == [1, 1] && g.out == [g.height, g.width];
        let [kh, kw] = g.kernel;
        if !same || kh * kw <= 1 || kw > MAX_SHIFTED_COLUMNS || kh * kw > MAX_SHIFTED_TAPS {
            return None;
        }
        // The furthest tap before and after a pixel, in words (padding after = span − before,
        // since the output is as large as the input).
        let span = |axis: usize| (g.kernel[axis] - 1) * g.dilation[axis];
        let before = g.pad[0] * g.width + g.pad[1];
        let after = (span(0).checked_sub(g.pad[0])? * g.width) + span(1).checked_sub(g.pad[1])?;
        let groups = g.channels.div_ceil(4);
        Some(ShiftedPlanes { groups, pixels: g.height * g.width, guard: before.max(after) })
    }

    /// Words from one group's plane to the next.
    pub fn plane_stride(&self) -> usize {
        self.pixels + 2 * self.guard
    }

    /// Words of the whole layout.
    pub fn len(&self) -> usize {
        self.groups * self.plane_stride()
    }

    /// Whether the layout holds no words (only where the kernels are public, as clippy's
    /// `len_without_is_empty` asks of a public type).
    #[cfg(feature = "bench-internals")]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One group's words (`plane_stride` of them): fills its guards with `fill` and returns its
    /// plane, for the caller to quantize into.
    pub fn plane_mut<'a>(&self, group_words: &'a mut [u32], fill: u32) -> &'a mut [u32] {
        let (before, rest) = group_words.split_at_mut(self.guard);
        let (plane, after) = rest.split_at_mut(self.pixels);
        before.fill(fill);
        after[..self.guard].fill(fill);
        plane
    }
}

/// A convolution group's operand for [`conv_shifted`]: its channel groups `groups` of `words`
/// (laid out as `layout`), read as the kernel of `geometry` reads them, `fill` in the padding.
#[derive(Debug, Clone)]
pub struct ShiftedOperand<'a> {
    pub words: &'a [u32],
    pub layout: ShiftedPlanes,
    pub geometry: &'a ConvGeometry,
    pub groups: Range<usize>,
    pub fill: u32,
}

impl ShiftedOperand<'_> {
    /// Operand rows: kernel positions × channel groups.
    fn k4(&self) -> usize {
        self.geometry.kernel[0] * self.geometry.kernel[1] * self.groups.len()
    }

    /// Words from a pixel to the one kernel position `(ky, kx)` reads, and the column shift.
    #[cfg(target_arch = "x86_64")]
    fn shift(&self, ky: usize, kx: usize) -> (isize, isize) {
        let [dy, dx] = self.offsets(ky, kx);
        (dy * self.geometry.width as isize + dx, dx)
    }

    /// Rows and columns from a pixel to the one kernel position `(ky, kx)` reads.
    fn offsets(&self, ky: usize, kx: usize) -> [isize; 2] {
        let g = self.geometry;
        [
            (ky * g.dilation[0]) as isize - g.pad[0] as isize,
            (kx * g.dilation[1]) as isize - g.pad[1] as isize,
        ]
    }

    /// Row `kk` (tap-major, channel groups within a tap) of the operand at pixel `p`: the input
    /// word that output pixel reads, or the fill in the padding. The scalar reference.
    fn word(&self, kk: usize, p: usize) -> u32 {
        let g = self.geometry;
        let (tap, group) = (kk / self.groups.len(), self.groups.start + kk % self.groups.len());
        let (ky, kx) = (tap / g.kernel[1], tap % g.kernel[1]);
        let (y, x) = ((p / g.width) as isize, (p % g.width) as isize);
        let [dy, dx] = self.offsets(ky, kx);
        let (iy, ix) = (y + dy, x + dx);
        if iy < 0 || ix < 0 || iy >= g.height as isize || ix >= g.width as isize {
            return self.fill;
        }
        let plane = group * self.layout.plane_stride() + self.layout.guard;
        self.words[plane + iy as usize * g.width + ix as usize]
    }
}

/// `out[o − range.start][p − pixels.start] = finish_o(Σ_kk Σ_j operand(kk, p).byte(j) · W[o][4·kk +
/// j])` for `o` in `range` and `p` in `pixels`: the product
/// [`conv_planar_with_tail`](crate::kernels::conv_planar_with_tail) computes over im2col patches,
/// read from the planes in place. A plane's last `pixels mod 16` pixels run as dot products over
/// their gathered columns (`scratch`: at least
/// [`tail_scratch_len`](crate::kernels::tail_scratch_len) words).
#[allow(clippy::too_many_arguments)]
pub fn conv_shifted<E: SimdElement>(
    isa: Isa,
    operand: &ShiftedOperand<'_>,
    pixels: Range<usize>,
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    mut out: ArrayViewMut2<'_, E>,
    scratch: &mut [u32],
) {
    let (layout, g, k4) = (operand.layout, operand.geometry, operand.k4());
    assert!(
        ShiftedPlanes::for_conv(g)
            .is_some_and(|l| l.guard == layout.guard && l.pixels == layout.pixels)
            && operand.groups.end <= layout.groups
            && operand.words.len() >= layout.len()
            && pixels.end <= layout.pixels
            && w.k4 == k4
            && range.end <= w.n
            && epilogues.len() == range.len()
            && out.dim() == (range.len(), pixels.len()),
        "conv_shifted: operand, pixels, weights, epilogues and output disagree"
    );
    let tail = tail_pixels(pixels.len(), k4);
    let whole = pixels.len() - tail;
    if tail > 0 {
        let columns = &mut scratch[..tail * k4];
        for (column, p) in columns.chunks_exact_mut(k4).zip(pixels.start + whole..) {
            column.iter_mut().enumerate().for_each(|(kk, word)| *word = operand.word(kk, p));
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa.tier() == Tier::Avx512Vnni && whole > 0 && !range.is_empty() {
        let Some(out_stride) = row_stride(&out) else {
            panic!("conv_shifted: output planes must be contiguous rows");
        };
        return simd(
            operand,
            pixels.start,
            whole,
            w,
            range,
            epilogues,
            store,
            out,
            out_stride,
            &scratch[..tail * k4],
        );
    }
    let (mut main, out_tail) = out.view_mut().split_at(Axis(1), whole);
    for (o, (mut plane, e)) in range.clone().zip(main.rows_mut().into_iter().zip(epilogues)) {
        let row = &w.words[o * k4..(o + 1) * k4];
        for start in (0..whole).step_by(64) {
            let len = (whole - start).min(64);
            let mut sums = [0i32; 64];
            for (kk, &weight) in row.iter().enumerate() {
                for (t, sum) in sums[..len].iter_mut().enumerate() {
                    *sum += word_dot(operand.word(kk, pixels.start + start + t), weight);
                }
            }
            let mut chunk = plane.slice_mut(s![start..start + len]);
            match chunk.as_slice_mut() {
                Some(chunk) => E::store_row(Isa::SCALAR, &sums[..len], *e, store, chunk),
                None => panic!("conv_shifted: output planes must be contiguous rows"),
            }
        }
    }
    if tail > 0 {
        let columns = ArrayView2::from_shape((tail, k4), &scratch[..tail * k4])
            .unwrap_or_else(|_| unreachable!("the scratch holds tail × k4 words"));
        conv_planar_tail(isa, columns, w, range, epilogues, store, out_tail);
    }
}

/// The AVX-512 path of [`conv_shifted`]: the planar kernel over an operand of one tap per kernel
/// position, each reading the planes from its own offset.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn simd<E: SimdElement>(
    operand: &ShiftedOperand<'_>,
    first: usize,
    whole: usize,
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    mut out: ArrayViewMut2<'_, E>,
    out_stride: usize,
    tail_columns: &[u32],
) {
    use super::planar::PlaneRun;
    use super::planar_avx512::{channels, Operand, RowColumns, TailColumns, Tap};

    let (layout, g) = (operand.layout, operand.geometry);
    let [kh, kw] = g.kernel;
    let mut taps = [Tap::default(); MAX_SHIFTED_TAPS];
    let mut shifts = [0isize; MAX_SHIFTED_COLUMNS];
    for (tap, slot) in taps.iter_mut().enumerate().take(kh * kw) {
        let (ky, kx) = (tap / kw, tap % kw);
        let (offset, shift) = operand.shift(ky, kx);
        *slot = Tap { offset, column: kx };
        shifts[kx] = shift;
    }
    let origin = operand.groups.start * layout.plane_stride() + layout.guard + first;
    let x = Operand {
        x: operand.words[origin..].as_ptr(),
        x_stride: layout.plane_stride(),
        groups: operand.groups.len(),
        taps: &taps[..kh * kw],
        fill: operand.fill,
        columns: Some(RowColumns { width: g.width, first, shifts: &shifts[..kw] }),
    };
    let shape = PlaneRun { pixels: whole, x_stride: layout.plane_stride(), out_stride };
    let tail = tail_columns.len() / w.k4.max(1);
    let tail = (tail > 0).then_some(TailColumns { columns: tail_columns, pixels: tail });
    let words = &w.words[range.start * w.k4..];
    // SAFETY: `conv_shifted` chose this path on a CPU with AVX-512-VNNI and checked the operand:
    // each tap of each group reads at most `guard` words before or after its plane, inside the
    // group's words (the layout's guard covers the kernel's reach); lanes whose column leaves
    // the row are masked. `out` has `range.len()` rows of `whole + tail` contiguous elements
    // `out_stride` apart; the weights hold `range.len()` rows of `k4` words.
    unsafe { channels(&x, shape, words, w.k4, epilogues, store, out.as_mut_ptr(), tail) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::ActivationQuant;
    use crate::kernels::{
        conv_planar_with_tail, im2col_c4, tail_scratch_len, Activation, FloatStore, OutputCodes,
    };
    use proptest::prelude::*;

    fn geometry(
        channels: usize,
        h: usize,
        w: usize,
        k: [usize; 2],
        d: [usize; 2],
        pad: [usize; 2],
    ) -> ConvGeometry {
        ConvGeometry {
            channels,
            height: h,
            width: w,
            kernel: k,
            stride: [1, 1],
            dilation: d,
            pad,
            out: [h, w],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// In place equals im2col then the planar product, to the byte and the float bit: every
        /// kernel shape, dilation and (asymmetric) padding, bands of pixels, tails included.
        #[test]
        fn shifted_conv_equals_im2col_then_gemm(
            channels in 1usize..40, h in 1usize..12, width in 1usize..40,
            kh in 1usize..4, kw in 1usize..4, dy in 1usize..3, dx in 1usize..3,
            pad_y in 0usize..5, pad_x in 0usize..5, n in 1usize..12, band in 0usize..4,
            zp in any::<u8>(), seed in any::<u64>(),
        ) {
            prop_assume!(kh * kw > 1);
            let (pad_y, pad_x) = (pad_y.min((kh - 1) * dy), pad_x.min((kw - 1) * dx));
            let g = geometry(channels, h, width, [kh, kw], [dy, dx], [pad_y, pad_x]);
            let layout = ShiftedPlanes::for_conv(&g).unwrap();
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 33) as u32 };
            let pixels = h * width;
            let dense: Vec<u32> = (0..layout.groups * pixels).map(|_| next()).collect();
            let fill = u32::from_le_bytes([zp; 4]);
            // Guards start as garbage: plane_mut must overwrite them.
            let mut words: Vec<u32> = (0..layout.len()).map(|_| next()).collect();
            for (group, chunk) in words.chunks_exact_mut(layout.plane_stride()).enumerate() {
                layout.plane_mut(chunk, fill).copy_from_slice(&dense[group * pixels..][..pixels]);
            }
            let k4 = kh * kw * layout.groups;
            let weights: Vec<i8> = (0..n * k4 * 4).map(|_| next() as i8).collect();
            let w = PlanarWeights::pack(&weights, n, k4);
            let mut patches = vec![0u32; k4 * pixels];
            im2col_c4(&g, &dense, 0..layout.groups, zp, &mut patches);
            let patches = ArrayView2::from_shape((k4, pixels), &patches[..]).unwrap();
            let operand = ShiftedOperand { words: &words, layout, geometry: &g, groups: 0..layout.groups, fill };
            // Exact sums, then a real epilogue into codes and into floats added to a residual.
            let exact = vec![Epilogue { offset: 0, scale: 1.0, bias: 0.0, activation: Activation::Identity }; n];
            let real: Vec<Epilogue> = (0..n).map(|o| Epilogue { offset: i32::from(zp) * w.column_sums[o], scale: 1e-4 * (o + 1) as f32, bias: 0.1 * o as f32 - 0.5, activation: Activation::Clip(0.0, 6.0) }).collect();
            let codes = OutputCodes::from(ActivationQuant { scale: 0.03, zero_point: zp / 2 });
            // One band (band = 0) or up to four, as threads split the pixels.
            let size = pixels.div_ceil(band + 1).max(1);
            let bands: Vec<Range<usize>> = (0..pixels).step_by(size).map(|s| s..(s + size).min(pixels)).collect();
            let mut scratch = vec![0u32; tail_scratch_len(pixels, k4)];
            for isa in Isa::reference_first() {
                let mut want = vec![0f32; n * pixels];
                conv_planar_with_tail(Isa::SCALAR, patches, &w, 0..n, &exact, FloatStore::Replace, ArrayViewMut2::from_shape((n, pixels), &mut want[..]).unwrap(), &mut scratch);
                let mut want_codes = vec![0u8; n * pixels];
                conv_planar_with_tail(Isa::SCALAR, patches, &w, 0..n, &real, codes, ArrayViewMut2::from_shape((n, pixels), &mut want_codes[..]).unwrap(), &mut scratch);
                let residual: Vec<f32> = (0..n * pixels).map(|i| (i % 11) as f32 * 0.3 - 1.0).collect();
                let mut want_added = residual.clone();
                conv_planar_with_tail(Isa::SCALAR, patches, &w, 0..n, &real, FloatStore::AddTo, ArrayViewMut2::from_shape((n, pixels), &mut want_added[..]).unwrap(), &mut scratch);
                let (mut got, mut got_codes, mut got_added) = (vec![0f32; n * pixels], vec![0u8; n * pixels], residual.clone());
                for band in &bands {
                    let mut scratch = vec![0u32; tail_scratch_len(band.len(), k4)];
                    let mut all = ArrayViewMut2::from_shape((n, pixels), &mut got[..]).unwrap();
                    conv_shifted(isa, &operand, band.clone(), &w, 0..n, &exact, FloatStore::Replace, all.slice_mut(s![.., band.clone()]), &mut scratch);
                    let mut all = ArrayViewMut2::from_shape((n, pixels), &mut got_codes[..]).unwrap();
                    conv_shifted(isa, &operand, band.clone(), &w, 0..n, &real, codes, all.slice_mut(s![.., band.clone()]), &mut scratch);
                    // A channel range that does not start at 0.
                    let first = n / 3;
                    let mut all = ArrayViewMut2::from_shape((n, pixels), &mut got_added[..]).unwrap();
                    let (_, rest) = all.view_mut().split_at(Axis(0), first);
                    conv_shifted(isa, &operand, band.clone(), &w, first..n, &real[first..], FloatStore::AddTo, rest.slice_move(s![.., band.clone()]), &mut scratch);
                    let mut all = ArrayViewMut2::from_shape((n, pixels), &mut got_added[..]).unwrap();
                    let (head, _) = all.view_mut().split_at(Axis(0), first);
                    conv_shifted(isa, &operand, band.clone(), &w, 0..first, &real[..first], FloatStore::AddTo, head.slice_move(s![.., band.clone()]), &mut scratch);
                }
                prop_assert_eq!(&got, &want, "{:?}", isa);
                prop_assert_eq!(&got_codes, &want_codes, "{:?}", isa);
                prop_assert_eq!(&got_added, &want_added, "{:?}", isa);
            }
        }
    }

    #[test]
    fn only_same_size_stride_one_kernels_read_in_place() {
        let g = geometry(8, 7, 7, [3, 3], [1, 1], [1, 1]);
        assert_eq!(
            ShiftedPlanes::for_conv(&g),
            Some(ShiftedPlanes { groups: 2, pixels: 49, guard: 8 })
        );
        assert_eq!(ShiftedPlanes::for_conv(&geometry(8, 7, 7, [1, 1], [1, 1], [0, 0])), None);
        let strided = ConvGeometry { stride: [2, 2], out: [4, 4], ..g };
        assert_eq!(ShiftedPlanes::for_conv(&strided), None);
        let valid = ConvGeometry { pad: [0, 0], out: [5, 5], ..g };
        assert_eq!(ShiftedPlanes::for_conv(&valid), None);
    }
}
