//! The planar GEMM ([`conv_planar`](crate::kernels::conv_planar)) on 512-bit vectors: tiles of 8
//! output channels × 16 pixels summed by `vpdpbusd`, over dense, im2col or shifted operands.

use std::arch::x86_64::*;

use super::planar_tail::avx512::dots as tail_dots;
use super::planar_tail::MAX_TAIL_PIXELS;
use crate::kernels::store::codes::SimdElement;
use crate::kernels::Epilogue;

use super::shifted::MAX_SHIFTED_COLUMNS as MAX_KERNEL_COLUMNS;

/// Output channels computed together.
const BLOCK_O: usize = 8;

/// Activation bytes a block of tiles spans while each block of 8 output channels runs over
/// all of it: half a core's L2 (1 MB on Zen 5), the channels' weights staying in L1 (blocks
/// sized for L1 make the 8 channel blocks take turns re-reading all the weights).
const TILE_BLOCK_BYTES: usize = 512 * 1024;

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
    shape: super::planar::PlaneRun,
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
    let super::planar::PlaneRun { pixels, out_stride, .. } = shape;
    // Blocks of tiles whose activations fit L2 (every pixel of most layers): each block of
    // output channels runs over the whole block, so it writes whole cache lines of its
    // planes in one pass and prepares its channels' finishers once for all the block's
    // tiles, its weights read from L1 while the activations stream from L2.
    let block = (TILE_BLOCK_BYTES / (k4 * 4 * 32).max(1)).max(1) * 32;
    for first in (0..pixels).step_by(block) {
        let end = (first + block).min(pixels);
        let mut o = 0;
        while o < count {
            let rows = (count - o).min(BLOCK_O);
            let w = &w[o * k4..];
            // SAFETY: row `o` of `out` exists (one per epilogue).
            let out = unsafe { out.add(o * out_stride) };
            // Rows past `rows` repeat the last channel's (never used).
            let finishers: [E::Finish; BLOCK_O] =
                std::array::from_fn(|r| E::finisher(&epilogues[o + r.min(rows - 1)], store));
            let mut p = first;
            while p < end {
                let lanes = (end - p).min(32);
                let masks = [mask(lanes), mask(lanes.saturating_sub(16))];
                // SAFETY: AVX-512 is available.
                let columns = unsafe { x.column_masks(p, masks) };
                let tile = Tile { x, out_stride, w, k4, p, masks, columns, finishers: &finishers };
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
                let mut sums = [[0i32; MAX_TAIL_PIXELS]; BLOCK_O];
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
