//! Convolution kernels on planar (channel-major) activations, so NCHW tensors go in and out
//! without transposes.
//!
//! Activations are quantized into "C4" layout: channels in groups of four, each group a plane of
//! pixels holding four bytes (one per channel), the operand shape `vpdpbusd` multiplies. The
//! GEMM keeps 16 pixels of one output channel per vector, so results land directly in that
//! channel's output plane.

use std::ops::Range;

use ndarray::{s, ArrayBase, ArrayView2, ArrayViewMut2, Ix2, RawData};

use crate::kernels::quant::ActivationQuant;
use crate::kernels::store::codes::{Element, SimdElement};
use crate::kernels::Epilogue;
use crate::kernels::{Isa, Tier};

/// The spatial shape of a 2-D convolution over one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before the first row and column.
    pub pad: [usize; 2],
    /// Output height and width.
    pub out: [usize; 2],
}

impl ConvGeometry {
    /// For output pixel `(oy, ox)`: each kernel tap (row-major index) whose input lies inside
    /// the plane, with that input's index — the naive window walk reference kernels test
    /// against.
    #[cfg(test)]
    pub(crate) fn window(&self, oy: usize, ox: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let [kh, kw] = self.kernel;
        (0..kh * kw).filter_map(move |tap| {
            let (ky, kx) = (tap / kw, tap % kw);
            let iy = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pad[0])?;
            let ix = (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(self.pad[1])?;
            (iy < self.height && ix < self.width).then_some((tap, iy * self.width + ix))
        })
    }
}

/// Output channels computed together by the AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
const BLOCK_O: usize = 8;

/// Weights for [`gemm_planar`]: `n` rows of `k4` words, each word 4 i8 weights for 4
/// consecutive k (the kernel's k order is tap-major, channel groups of 4 within a tap).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanarWeights {
    pub n: usize,
    pub k4: usize,
    /// `Σ_k W[o][k]` per output channel, for zero-point correction.
    pub column_sums: Vec<i32>,
    pub(super) words: Vec<i32>,
}

impl PlanarWeights {
    /// Packs `n` rows of `k4 * 4` i8 weights.
    pub fn pack(weights: &[i8], n: usize, k4: usize) -> Self {
        assert_eq!(weights.len(), n * k4 * 4, "weights must be n × 4·k4");
        let words = weights
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]))
            .collect();
        let column_sums = weights
            .chunks_exact(k4 * 4)
            .map(|row| row.iter().map(|&w| i32::from(w)).sum())
            .collect();
        PlanarWeights { n, k4, column_sums, words }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.words.len() * 4 + self.column_sums.len() * 4
    }
}

/// The first `pixels` values of `channels` planes that start `stride` values apart: whole planes
/// (`stride == pixels`) or a band of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planes {
    pub channels: usize,
    pub pixels: usize,
    pub stride: usize,
}

impl Planes {
    /// `channels` whole planes of `pixels` values.
    pub fn whole(channels: usize, pixels: usize) -> Self {
        Planes { channels, pixels, stride: pixels }
    }

    /// Values of `image` these planes need.
    fn extent(&self) -> usize {
        self.channels.checked_sub(1).map_or(0, |c| c * self.stride + self.pixels)
    }
}

/// Quantizes `planes` of values (floats, or codes of `input` already) into C4 layout
/// (`ceil(channels/4)` planes of `pixels` words); missing channels of the last group hold the
/// zero point.
pub fn quantize_c4<E: Element>(
    isa: Isa,
    image: &[E],
    planes: Planes,
    input: ActivationQuant,
    dst: &mut [u32],
) {
    let Planes { channels, pixels, stride } = planes;
    let groups = channels.div_ceil(4);
    let zero_point = input.zero_point;
    assert!(
        image.len() >= planes.extent() && stride >= pixels && dst.len() >= groups * pixels,
        "quantize_c4: image, planes and words disagree"
    );
    crate::kernels::quant::multiversion!(isa, {
        for g in 0..groups {
            let out = &mut dst[g * pixels..(g + 1) * pixels];
            let plane = |j: usize| {
                let c = 4 * g + j;
                (c < channels).then(|| &image[c * stride..c * stride + pixels])
            };
            let planes = [plane(0), plane(1), plane(2), plane(3)];
            // Four channels present (all groups but a ragged last one): one pass that builds
            // each word from its four bytes, rather than four passes over the words.
            if let [Some(a), Some(b), Some(c), Some(d)] = planes {
                let bytes = a.iter().zip(b).zip(c).zip(d);
                for (word, (((&a, &b), &c), &d)) in out.iter_mut().zip(bytes) {
                    let codes = [a, b, c, d].map(|v| v.to_code(input));
                    *word = u32::from_le_bytes(codes);
                }
                continue;
            }
            for (j, plane) in planes.iter().enumerate() {
                match plane {
                    Some(values) => {
                        for (word, &v) in out.iter_mut().zip(values.iter()) {
                            let byte = u32::from(v.to_code(input)) << (8 * j);
                            *word = if j == 0 { byte } else { *word | byte };
                        }
                    }
                    None => {
                        for word in out.iter_mut() {
                            *word |= u32::from(zero_point) << (8 * j);
                        }
                    }
                }
            }
        }
    })
}

/// [`quantize_c4`] with each channel's own scale and zero point (an 8-bit input quantized on
/// its per-channel lattice: `planes.channels` of each); missing channels of the last group hold
/// 0 (their weights are 0).
pub fn quantize_c4_channels<E: Element>(
    isa: Isa,
    image: &[E],
    planes: Planes,
    scales: &[f32],
    zero_points: &[u8],
    dst: &mut [u32],
) {
    let Planes { channels, pixels, stride } = planes;
    let groups = channels.div_ceil(4);
    assert!(
        image.len() >= planes.extent()
            && stride >= pixels
            && scales.len() >= channels
            && zero_points.len() >= channels
            && dst.len() >= groups * pixels,
        "quantize_c4_channels: image, planes, lattices and words disagree"
    );
    crate::kernels::quant::multiversion!(isa, {
        for g in 0..groups {
            let out = &mut dst[g * pixels..(g + 1) * pixels];
            out.fill(0);
            for c in 4 * g..(4 * g + 4).min(channels) {
                let (scale, zp, shift) = (scales[c], zero_points[c], 8 * (c - 4 * g));
                let values = &image[c * stride..c * stride + pixels];
                for (word, &v) in out.iter_mut().zip(values) {
                    *word |=
                        u32::from(v.to_code(ActivationQuant { scale, zero_point: zp })) << shift;
                }
            }
        }
    })
}

/// The pixels a GEMM call computes and the distances between the planes it reads and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlaneRun {
    pub pixels: usize,
    pub x_stride: usize,
    pub out_stride: usize,
}

impl PlaneRun {
    /// The run a product of `x` by the weight rows `range` computes into `out`, which holds
    /// `tail` columns more than `x`; panics (naming `what`) when the views, the weights and
    /// the epilogues disagree or a view's rows are not contiguous runs.
    fn checked<E>(
        x: &ArrayView2<'_, u32>,
        w: &PlanarWeights,
        range: &Range<usize>,
        epilogues: &[Epilogue],
        out: &ArrayViewMut2<'_, E>,
        tail: usize,
        what: &str,
    ) -> PlaneRun {
        let pixels = x.ncols();
        assert!(
            x.nrows() >= w.k4
                && range.end <= w.n
                && epilogues.len() == range.len()
                && out.nrows() == range.len()
                && out.ncols() == pixels + tail,
            "{what}: operand, weights, epilogues and output disagree"
        );
        let (Some(x_stride), Some(out_stride)) = (row_stride(x), row_stride(out)) else {
            panic!("{what}: planes must be contiguous rows");
        };
        PlaneRun { pixels, x_stride, out_stride }
    }
}

/// The distance between the rows of a view whose rows are contiguous runs (column stride 1), or
/// `None` for any other layout.
pub(super) fn row_stride<S: RawData>(view: &ArrayBase<S, Ix2>) -> Option<usize> {
    let [rows, columns] = [view.nrows(), view.ncols()];
    let [row, column] = [view.strides()[0], view.strides()[1]];
    let unit_columns = columns <= 1 || column == 1;
    let rows_forward = if rows <= 1 { Some(0) } else { usize::try_from(row).ok() };
    rows_forward.filter(|_| unit_columns)
}

/// `Σ_j x.byte(j) · w.byte(j)`, u8 by i8: one `vpdpbusd` lane, the scalar references' step.
pub(super) fn word_dot(x: u32, w: i32) -> i32 {
    let (xb, wb) = (x.to_le_bytes(), w.to_le_bytes());
    (0..4).map(|j| i32::from(xb[j]) * i32::from(wb[j] as i8)).sum()
}

/// The padding word of each channel group for per-channel zero points (missing channels 0).
pub fn fill_words(zero_points: &[u8]) -> Vec<u32> {
    zero_points
        .chunks(4)
        .map(|z| u32::from_le_bytes([0, 1, 2, 3].map(|j| z.get(j).copied().unwrap_or(0))))
        .collect()
}

/// `out[o − range.start][p] = finish_o(Σ_k4 Σ_j x[k4][p].byte(j) · W[o][4·k4 + j])` for `o` in
/// `range` and every column `p` of `x` and `out`, finished by `epilogues[o − range.start]` and
/// stored as floats or codes. Both views may be column bands of larger planes (a block of
/// patches, a thread's share of the pixels): rows must be contiguous runs, any distance apart.
/// The SIMD path finishes each tile in registers, so no plane of i32 sums is written and read
/// back.
pub fn conv_planar<E: SimdElement>(
    isa: Isa,
    x: ArrayView2<'_, u32>,
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    mut out: ArrayViewMut2<'_, E>,
) {
    let shape = PlaneRun::checked(&x, w, &range, epilogues, &out, 0, "conv_planar");
    let pixels = shape.pixels;
    match isa.tier() {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512Vnni if pixels > 0 && !range.is_empty() => {
            let words = &w.words[range.start * w.k4..];
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with these features; the views
            // hold every row and column the kernel touches (rows `stride` apart, columns
            // contiguous, checked above), and the assert bounds the weight rows.
            unsafe {
                let x = avx512::Operand::dense(x.as_ptr(), shape.x_stride, w.k4);
                avx512::channels(&x, shape, words, w.k4, epilogues, store, out.as_mut_ptr(), None)
            };
        }
        #[cfg(target_arch = "x86_64")]
        Tier::AvxVnni | Tier::Avx2 if pixels > 0 && !range.is_empty() => {
            let words = &w.words[range.start * w.k4..];
            // SAFETY: the AVX2 instruction sets are only chosen on CPUs that run them; the
            // views hold every row and column the kernel touches (checked above), and the
            // assert bounds the weight rows.
            unsafe {
                super::planar_avx2::channels(
                    isa,
                    x.as_ptr(),
                    shape.x_stride,
                    pixels,
                    words,
                    w.k4,
                    epilogues,
                    store,
                    out.as_mut_ptr(),
                    shape.out_stride,
                )
            };
        }
        #[cfg(target_arch = "aarch64")]
        Tier::NeonI8mm | Tier::NeonDot | Tier::Neon if pixels > 0 && !range.is_empty() => {
            let words = &w.words[range.start * w.k4..];
            // SAFETY: the NEON instruction sets are only chosen on CPUs that run them; the
            // views hold every row and column the kernel touches (checked above), and the
            // kernel bounds the weight rows and their sums.
            unsafe {
                super::planar_neon::channels(
                    isa,
                    x.as_ptr(),
                    shape.x_stride,
                    pixels,
                    words,
                    &w.column_sums[range.start..],
                    w.k4,
                    epilogues,
                    store,
                    out.as_mut_ptr(),
                    shape.out_stride,
                )
            };
        }
        _ => {
            for (o, (mut plane, e)) in range.zip(out.rows_mut().into_iter().zip(epilogues)) {
                let row = &w.words[o * w.k4..(o + 1) * w.k4];
                for start in (0..pixels).step_by(64) {
                    let len = (pixels - start).min(64);
                    let mut sums = [0i32; 64];
                    for (k4, &word) in row.iter().enumerate() {
                        let xs = x.slice(s![k4, start..start + len]);
                        for (sum, &xw) in sums.iter_mut().zip(xs) {
                            *sum += word_dot(xw, word);
                        }
                    }
                    let mut chunk = plane.slice_mut(s![start..start + len]);
                    let sums = &sums[..len];
                    match chunk.as_slice_mut() {
                        Some(chunk) => E::store_row(Isa::SCALAR, sums, *e, store, chunk),
                        None => unreachable!("rows of `out` are contiguous (checked above)"),
                    }
                }
            }
        }
    }
}

/// [`conv_planar`] over the columns of `x`, then the next `columns.len() / k4` columns of `out`
/// as dot products with `columns` (their operand columns, transposed), each block of output
/// channels right after its tiles: the AVX-512 path of
/// [`conv_planar_with_tail`](crate::kernels::conv_planar_with_tail).
#[cfg(target_arch = "x86_64")]
pub(super) fn conv_planar_then_tail<E: SimdElement>(
    x: ArrayView2<'_, u32>,
    columns: &[u32],
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    mut out: ArrayViewMut2<'_, E>,
) {
    let k4 = w.k4;
    let tail = columns.len() / k4.max(1);
    assert!(
        Isa::detect().tier() == Tier::Avx512Vnni
            && k4 > 0
            && columns.len() == tail * k4
            && (1..=crate::kernels::MAX_TAIL_PIXELS).contains(&tail)
            && x.ncols() > 0,
        "conv_planar_then_tail: operand, columns, weights, epilogues and output disagree"
    );
    let shape = PlaneRun::checked(&x, w, &range, epilogues, &out, tail, "conv_planar_then_tail");
    if range.is_empty() {
        return;
    }
    let words = &w.words[range.start * k4..];
    let tail = avx512::TailColumns { columns, pixels: tail };
    // SAFETY: the CPU has AVX-512-VNNI (asserted); the views hold every row and column the
    // kernel touches (rows `stride` apart, columns contiguous, `out` `tail` columns wider than
    // `x`), and the assert bounds the weight rows and the tail's columns.
    unsafe {
        let x = avx512::Operand::dense(x.as_ptr(), shape.x_stride, k4);
        avx512::channels(&x, shape, words, k4, epilogues, store, out.as_mut_ptr(), Some(tail))
    };
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::super::planar_tail::avx512::dots as tail_dots;
    use super::super::planar_tail::MAX_TAIL_PIXELS;
    use crate::kernels::store::codes::SimdElement;
    use crate::kernels::Epilogue;

    /// Activation bytes a block of tiles spans while each block of 8 output channels runs over
    /// all of it: half a core's L2 (1 MB on Zen 5), the channels' weights staying in L1. Blocks
    /// sized for L1 instead (16 KB: one tile of a 3×3 layer, whose 8 channel blocks then took
    /// turns re-reading all the weights) were 2–4 % slower on ResNet18 and EfficientNet-Lite0.
    const TILE_BLOCK_BYTES: usize = 512 * 1024;

    use super::super::shifted::MAX_SHIFTED_COLUMNS as MAX_KERNEL_COLUMNS;

    /// One tap of an operand: its rows start `offset` words from the operand's origin, and for a
    /// shifted operand it reads kernel column `column` (whose lanes outside the row read the fill).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Tap {
        pub offset: isize,
        pub column: usize,
    }

    /// Where a shifted operand's taps fall in the rows of the plane: a plane `width` pixels wide,
    /// the run's first pixel at column `first`, kernel column `c` reading `shifts[c]` columns
    /// away.
    #[derive(Debug, Clone, Copy)]
    pub struct RowColumns<'a> {
        pub width: usize,
        pub first: usize,
        pub shifts: &'a [isize],
    }

    /// The operand a GEMM multiplies: `taps.len() · groups` rows of words (k4 = that product,
    /// tap-major), row `(tap, group)` of run pixel `p` at `x + taps[tap].offset + group · x_stride
    /// + p`. A dense operand (C4 words, im2col patches) is one tap at offset 0; a shifted one is
    /// an input plane read in place by each kernel position of a stride-1 convolution (see
    /// `shifted.rs`), lanes whose input column lies outside the row reading `fill`.
    #[derive(Debug, Clone, Copy)]
    pub struct Operand<'a> {
        pub x: *const u32,
        pub x_stride: usize,
        pub groups: usize,
        pub taps: &'a [Tap],
        pub fill: u32,
        pub columns: Option<RowColumns<'a>>,
    }

    const DENSE: [Tap; 1] = [Tap { offset: 0, column: 0 }];

    impl Operand<'static> {
        /// `k4` rows of words `x_stride` apart from `x`.
        pub fn dense(x: *const u32, x_stride: usize, k4: usize) -> Self {
            Operand { x, x_stride, groups: k4, taps: &DENSE, fill: 0, columns: None }
        }
    }

    impl Operand<'_> {
        /// Per kernel column, the lanes of the tile of `masks` from run pixel `p` whose input
        /// column lies inside the row (all of them for a dense operand).
        #[inline(always)]
        unsafe fn column_masks(
            &self,
            p: usize,
            masks: [__mmask16; 2],
        ) -> [[__mmask16; 2]; MAX_KERNEL_COLUMNS] {
            let mut out = [masks; MAX_KERNEL_COLUMNS];
            let Some(RowColumns { width, first, shifts }) = self.columns else { return out };
            let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
            let w = _mm512_set1_epi32(width as i32);
            let start = ((first + p) % width) as i32;
            // Each lane's column: its offset from the tile's first column, wrapped into the row
            // (a 7-wide plane wraps a 16-lane vector twice).
            let column = |from: i32| {
                let mut c = _mm512_add_epi32(lanes, _mm512_set1_epi32(from));
                loop {
                    let over = _mm512_cmpge_epi32_mask(c, w);
                    if over == 0 {
                        return c;
                    }
                    c = _mm512_mask_sub_epi32(c, over, c, w);
                }
            };
            let columns = [column(start), column(start + 16)];
            for (masks, &shift) in out.iter_mut().zip(shifts) {
                let shift = _mm512_set1_epi32(shift as i32);
                for (mask, c) in masks.iter_mut().zip(columns) {
                    // Unsigned: a column shifted left of the row wraps to a huge value.
                    *mask &= _mm512_cmplt_epu32_mask(_mm512_add_epi32(c, shift), w);
                }
            }
            out
        }
    }

    /// `epilogues.len()` output channels over all pixels: blocks of tiles of 32 pixels (two
    /// vectors) outside, channel blocks of 8 inside them, then the block's tiles, so the
    /// block's activations stay in L1 while every channel multiplies them (each weight
    /// broadcast feeds two `vpdpbusd`).
    ///
    /// With `tail`, each block of channels then computes its `tail.pixels` further output
    /// columns as dot products, after its tiles of the last block of pixels.
    ///
    /// # Safety
    /// AVX-512F/BW/VNNI must be available; `x` describes `k4` rows that hold the run's
    /// `shape.pixels` words (for a shifted operand, every word each tap reads from them, lanes
    /// outside the row excepted), `w` holds one row of `k4` words per epilogue, `out` points at
    /// one run of `shape.pixels` (plus `tail.pixels`) elements per epilogue, `shape.out_stride`
    /// apart, none of them aliased; `tail.columns` holds `tail.pixels · k4` words.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn channels<E: SimdElement>(
        x: &Operand<'_>,
        shape: super::PlaneRun,
        w: &[i32],
        k4: usize,
        epilogues: &[Epilogue],
        store: E::Store,
        out: *mut E,
        tail: Option<TailColumns<'_>>,
    ) {
        let mask = |lanes: usize| -> __mmask16 {
            if lanes >= 16 {
                0xffff
            } else {
                (1u16 << lanes) - 1
            }
        };
        let count = epilogues.len();
        let super::PlaneRun { pixels, out_stride, .. } = shape;
        // Blocks of tiles whose activations fit L2 (every pixel of most layers): each block of
        // output channels runs over the whole block, so it writes whole cache lines of its
        // planes in one pass and prepares its channels' finishers once for all the block's
        // tiles, its weights read from L1 while the activations stream from L2.
        let block = (TILE_BLOCK_BYTES / (k4 * 4 * 32).max(1)).max(1) * 32;
        for first in (0..pixels).step_by(block) {
            let end = (first + block).min(pixels);
            let mut o = 0;
            while o < count {
                let rows = (count - o).min(super::BLOCK_O);
                let w = &w[o * k4..];
                // SAFETY: row `o` of `out` exists (one per epilogue).
                let out = unsafe { out.add(o * out_stride) };
                // Rows past `rows` repeat the last channel's (never used).
                let finishers: [E::Finish; super::BLOCK_O] =
                    std::array::from_fn(|r| E::finisher(&epilogues[o + r.min(rows - 1)], store));
                let mut p = first;
                while p < end {
                    let lanes = (end - p).min(32);
                    let masks = [mask(lanes), mask(lanes.saturating_sub(16))];
                    // SAFETY: AVX-512 is available.
                    let columns = unsafe { x.column_masks(p, masks) };
                    let tile =
                        Tile { x, out_stride, w, k4, p, masks, columns, finishers: &finishers };
                    // SAFETY: as for this function; rows `o..o + rows` exist in `w`, `out` and
                    // `epilogues`.
                    unsafe {
                        // A tile of at most 16 pixels (the last of a 14×14 or 28×28 plane)
                        // runs on one vector: the second would multiply masked-off zeros.
                        macro_rules! by_rows {
                            ($vectors:literal) => {
                                match rows {
                                    8 => tile.run::<8, $vectors, E>(out),
                                    7 => tile.run::<7, $vectors, E>(out),
                                    6 => tile.run::<6, $vectors, E>(out),
                                    5 => tile.run::<5, $vectors, E>(out),
                                    4 => tile.run::<4, $vectors, E>(out),
                                    3 => tile.run::<3, $vectors, E>(out),
                                    2 => tile.run::<2, $vectors, E>(out),
                                    _ => tile.run::<1, $vectors, E>(out),
                                }
                            };
                        }
                        if lanes > 16 {
                            by_rows!(2)
                        } else {
                            by_rows!(1)
                        }
                    }
                    p += lanes;
                }
                if let Some(tail) = tail.filter(|_| end == pixels) {
                    let mut sums = [[0i32; MAX_TAIL_PIXELS]; super::BLOCK_O];
                    let sums = &mut sums[..rows];
                    // SAFETY: AVX-512 is available; `w` holds `rows` rows of `k4` words.
                    unsafe { tail_dots(tail.columns, w, k4, tail.pixels, sums) };
                    for (r, sums) in sums.iter().enumerate() {
                        // SAFETY: run `r` of `out` has `pixels + tail.pixels` elements, and
                        // nothing else refers to its last `tail.pixels` while this slice lives.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out.add(r * out_stride + pixels),
                                tail.pixels,
                            )
                        };
                        let (e, sums) = (epilogues[o + r], &sums[..tail.pixels]);
                        E::store_row(crate::kernels::Isa::detect(), sums, e, store, dst);
                    }
                }
                o += rows;
            }
        }
    }

    /// The last few pixels of a plane as dot products: their operand columns, transposed.
    #[derive(Debug, Clone, Copy)]
    pub struct TailColumns<'a> {
        pub columns: &'a [u32],
        pub pixels: usize,
    }

    /// The (up to) 32 pixels from `p` the two masks select, for channels from the first row
    /// of `w`, `out` and `epilogues`.
    struct Tile<'a, F> {
        x: &'a Operand<'a>,
        out_stride: usize,
        w: &'a [i32],
        k4: usize,
        p: usize,
        masks: [__mmask16; 2],
        /// Per kernel column, the lanes of the tile each tap of it reads (see
        /// [`Operand::column_masks`]).
        columns: [[__mmask16; 2]; MAX_KERNEL_COLUMNS],
        /// Per channel, what finishes its sums (prepared once per block of tiles).
        finishers: &'a [F],
    }

    impl<F> Tile<'_, F> {
        /// `O` channels: sums in registers, then finished and stored.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn run<const O: usize, const VECTORS: usize, E: SimdElement<Finish = F>>(
            &self,
            out: *mut E,
        ) {
            let (wp, op, k4, masks) = (self.w.as_ptr(), out, self.k4, self.masks);
            let Operand { x, x_stride, groups, taps, fill, .. } = *self.x;
            let fill = _mm512_set1_epi32(fill as i32);
            let mut low = [_mm512_setzero_si512(); O];
            let mut high = [_mm512_setzero_si512(); O];
            let mut kk = 0;
            for tap in taps {
                let [m0, m1] = self.columns[tap.column];
                // The tap's rows may start before the operand's origin (a shifted plane's
                // guard words), hence wrapping arithmetic; every lane read is inside the rows.
                let origin = x.wrapping_offset(tap.offset).wrapping_add(self.p);
                for g in 0..groups {
                    // SAFETY: row `kk` of `x` has the tile's pixels; the masks keep the loads
                    // inside it (a masked-off lane is never read).
                    unsafe {
                        let plane = origin.wrapping_add(g * x_stride);
                        let x0 = _mm512_mask_loadu_epi32(fill, m0, plane.cast());
                        if VECTORS == 1 {
                            for (o, sum) in low.iter_mut().enumerate() {
                                let wv = _mm512_set1_epi32(*wp.add(o * k4 + kk));
                                *sum = _mm512_dpbusd_epi32(*sum, x0, wv);
                            }
                            kk += 1;
                            continue;
                        }
                        let x1 = _mm512_mask_loadu_epi32(fill, m1, plane.wrapping_add(16).cast());
                        for o in 0..O {
                            let wv = _mm512_set1_epi32(*wp.add(o * k4 + kk));
                            low[o] = _mm512_dpbusd_epi32(low[o], x0, wv);
                            high[o] = _mm512_dpbusd_epi32(high[o], x1, wv);
                        }
                    }
                    kk += 1;
                }
            }
            for o in 0..O {
                // SAFETY: run `o` of `out` (at `o · out_stride`) has `pixels` elements; the
                // masks keep the stores inside.
                unsafe {
                    let plane = op.add(o * self.out_stride + self.p);
                    E::finish32([low[o], high[o]], &self.finishers[o], masks, plane);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{quantize_value, Activation, FloatStore, OutputCodes};
    use proptest::prelude::*;

    /// `data` as planes of `columns`.
    fn view<T>(data: &[T], columns: usize) -> ArrayView2<'_, T> {
        ArrayView2::from_shape((data.len() / columns, columns), data).unwrap()
    }

    fn view_mut<T>(data: &mut [T], columns: usize) -> ArrayViewMut2<'_, T> {
        ArrayViewMut2::from_shape((data.len() / columns, columns), data).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn planar_conv_matches_the_scalar_reference(n in 1usize..20, k4 in 1usize..12, pixels in 1usize..80, zp in any::<u8>(), seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 33) as u32 };
            let x: Vec<u32> = (0..k4 * pixels).map(|_| next()).collect();
            let w: Vec<i8> = (0..n * k4 * 4).map(|_| next() as i8).collect();
            let packed = PlanarWeights::pack(&w, n, k4);
            // Every SIMD instruction set this CPU runs against the scalar reference.
            for simd_isa in Isa::supported().filter(|&isa| isa != Isa::SCALAR) {
                // Exact sums first (scale 1, no offset, bias or clamp: integers below 2^24 as f32).
                let exact = Epilogue { offset: 0, scale: 1.0, bias: 0.0, activation: Activation::Identity };
                let mut simd = vec![0f32; n * pixels];
                conv_planar(simd_isa, view(&x, pixels), &packed, 0..n, &vec![exact; n], FloatStore::Replace, view_mut(&mut simd, pixels));
                let mut scalar = vec![0f32; n * pixels];
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, 0..n, &vec![exact; n], FloatStore::Replace, view_mut(&mut scalar, pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                let (o, p) = (n - 1, pixels - 1);
                let want: i32 = (0..k4 * 4).map(|k| i32::from(x[(k / 4) * pixels + p].to_le_bytes()[k % 4]) * i32::from(w[o * k4 * 4 + k])).sum();
                prop_assert_eq!(scalar[o * pixels + p], want as f32);
                // Then real epilogues (per-channel offset, scale, bias, ReLU6), floats and codes,
                // on a channel range that does not start at 0.
                let first = n / 3;
                let epilogues: Vec<Epilogue> = (first..n).map(|o| Epilogue {
                    offset: i32::from(zp) * packed.column_sums[o],
                    scale: 1e-4 * (o + 1) as f32,
                    bias: 0.1 * o as f32 - 0.5,
                    activation: Activation::Clip(0.0, 6.0),
                }).collect();
                let codes = OutputCodes::from(ActivationQuant { scale: 0.03, zero_point: zp / 2 });
                let count = n - first;
                let (mut simd, mut scalar) = (vec![0f32; count * pixels], vec![0f32; count * pixels]);
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::Replace, view_mut(&mut simd[..count * pixels], pixels));
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::Replace, view_mut(&mut scalar[..count * pixels], pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                // Added to a residual branch before the ReLU6: the same on every path, and without
                // the clip exactly the replaced results plus the branch.
                let residual: Vec<f32> = (0..count * pixels).map(|i| (i % 13) as f32 * 0.37 - 2.0).collect();
                let replaced = scalar;
                let (mut simd, mut scalar) = (residual.clone(), residual.clone());
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::AddTo, view_mut(&mut simd, pixels));
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::AddTo, view_mut(&mut scalar, pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                let unclipped: Vec<Epilogue> = epilogues.iter().map(|e| Epilogue { activation: Activation::Identity, ..*e }).collect();
                let mut plain = vec![0f32; count * pixels];
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &unclipped, FloatStore::Replace, view_mut(&mut plain, pixels));
                let mut added = residual.clone();
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &unclipped, FloatStore::AddTo, view_mut(&mut added, pixels));
                let want: Vec<f32> = plain.iter().zip(&residual).map(|(p, r)| p + r).collect();
                prop_assert_eq!(&added, &want);
                prop_assert!(replaced.iter().zip(&simd).all(|(r, s)| (0.0..=6.0).contains(r) && (0.0..=6.0).contains(s)));
                let (mut simd, mut scalar) = (vec![0u8; count * pixels + 1], vec![0u8; count * pixels + 1]);
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &epilogues, codes, view_mut(&mut simd[..count * pixels], pixels));
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &epilogues, codes, view_mut(&mut scalar[..count * pixels], pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                prop_assert_eq!(simd[count * pixels], 0, "wrote past the planes");
                // In two blocks of pixels, as blocked im2col runs it (each block its own patch
                // columns) and as threads split the pixels (column bands of the same planes): the
                // same codes.
                let split = pixels / 2;
                for isa in [Isa::SCALAR, simd_isa] {
                    let mut blocked = vec![0u8; count * pixels + 1];
                    let mut banded = vec![0u8; count * pixels + 1];
                    for block in [0..split, split..pixels].into_iter().filter(|b| !b.is_empty()) {
                        let columns: Vec<u32> = (0..k4).flat_map(|kk| x[kk * pixels..][block.clone()].to_vec()).collect();
                        let mut out = view_mut(&mut blocked[..count * pixels], pixels);
                        let out = out.slice_mut(s![.., block.clone()]);
                        conv_planar(isa, view(&columns, block.len()), &packed, first..n, &epilogues, codes, out);
                        let x = view(&x, pixels);
                        let mut out = view_mut(&mut banded[..count * pixels], pixels);
                        let out = out.slice_mut(s![.., block.clone()]);
                        conv_planar(isa, x.slice(s![.., block.clone()]), &packed, first..n, &epilogues, codes, out);
                    }
                    prop_assert_eq!(&banded, &simd, "{:?}", isa);
                    prop_assert_eq!(&blocked, &simd, "{:?}", isa);
                }
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Codes read as they are give the same C4 words as the floats they stand for.
        #[test]
        fn c4_from_codes_equals_c4_from_floats(channels in 1usize..10, pixels in 1usize..40, zp in any::<u8>(), seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 33) as u8 };
            let codes: Vec<u8> = (0..channels * pixels).map(|_| next()).collect();
            let input = ActivationQuant { scale: 0.05, zero_point: zp };
            let floats: Vec<f32> = codes.iter().map(|&q| (f32::from(q) - f32::from(zp)) * 0.05).collect();
            let groups = channels.div_ceil(4) * pixels;
            let (mut from_codes, mut from_floats) = (vec![0u32; groups], vec![0u32; groups]);
            quantize_c4(Isa::detect(), &codes, Planes::whole(channels, pixels), input, &mut from_codes);
            quantize_c4(Isa::detect(), &floats, Planes::whole(channels, pixels), input, &mut from_floats);
            prop_assert_eq!(from_codes, from_floats);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn per_channel_c4_matches_the_definition(channels in 1usize..11, pixels in 1usize..40, seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 40) as f32 / 16777216.0 };
            let image: Vec<f32> = (0..channels * pixels).map(|_| next() * 8.0 - 4.0).collect();
            let scales: Vec<f32> = (0..channels).map(|_| 0.005 + next() * 0.05).collect();
            let zps: Vec<u8> = (0..channels).map(|_| (next() * 255.0) as u8).collect();
            let groups = channels.div_ceil(4);
            let mut dst = vec![0xdead_beef_u32; groups * pixels];
            quantize_c4_channels(Isa::detect(), &image, Planes::whole(channels, pixels), &scales, &zps, &mut dst);
            let mut scalar = vec![0u32; groups * pixels];
            quantize_c4_channels(Isa::SCALAR, &image, Planes::whole(channels, pixels), &scales, &zps, &mut scalar);
            prop_assert_eq!(&dst, &scalar);
            for c in 0..4 * groups {
                for p in 0..pixels {
                    let want = if c < channels { quantize_value(image[c * pixels + p], scales[c], zps[c]) } else { 0 };
                    prop_assert_eq!(dst[(c / 4) * pixels + p].to_le_bytes()[c % 4], want);
                }
            }
            // In two bands of pixels (planes read `pixels` apart), per channel and per tensor:
            // each band's words are those of the whole planes.
            let split = pixels / 2;
            let tensor_q = ActivationQuant { scale: scales[0], zero_point: zps[0] };
            let mut whole = vec![0u32; groups * pixels];
            quantize_c4(Isa::detect(), &image, Planes::whole(channels, pixels), tensor_q, &mut whole);
            for band in [0..split, split..pixels] {
                let planes = Planes { channels, pixels: band.len(), stride: pixels };
                let mut per_channel = vec![0u32; groups * band.len()];
                quantize_c4_channels(Isa::detect(), &image[band.start..], planes, &scales, &zps, &mut per_channel);
                let mut per_tensor = vec![0u32; groups * band.len()];
                quantize_c4(Isa::detect(), &image[band.start..], planes, tensor_q, &mut per_tensor);
                for g in 0..groups {
                    let words = g * pixels + band.start..g * pixels + band.end;
                    prop_assert_eq!(&per_channel[g * band.len()..][..band.len()], &dst[words.clone()]);
                    prop_assert_eq!(&per_tensor[g * band.len()..][..band.len()], &whole[words]);
                }
            }
            // With one scale and zero point everywhere it is the per-tensor quantization.
            if channels % 4 == 0 {
                let mut same = vec![0u32; groups * pixels];
                quantize_c4_channels(Isa::detect(), &image, Planes::whole(channels, pixels), &vec![scales[0]; channels], &vec![zps[0]; channels], &mut same);
                let mut tensor = vec![0u32; groups * pixels];
                quantize_c4(Isa::detect(), &image, Planes::whole(channels, pixels), ActivationQuant { scale: scales[0], zero_point: zps[0] }, &mut tensor);
                prop_assert_eq!(same, tensor);
            }
        }
    }

    #[test]
    fn c4_quantization_interleaves_and_pads() {
        let image: Vec<f32> = (0..5 * 3).map(|i| i as f32).collect(); // 5 channels × 3 pixels
        let mut dst = vec![0u32; 2 * 3];
        let input = ActivationQuant { scale: 1.0, zero_point: 7 };
        quantize_c4(Isa::detect(), &image, Planes::whole(5, 3), input, &mut dst);
        assert_eq!(dst[1].to_le_bytes(), [8, 11, 14, 17]); // channels 0..4 at pixel 1, + zp 7
        assert_eq!(dst[3 + 2].to_le_bytes(), [21, 7, 7, 7]); // channel 4, then padding
    }
}
