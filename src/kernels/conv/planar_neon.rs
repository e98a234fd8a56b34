//! The planar GEMM ([`conv_planar`](crate::kernels::conv_planar)) on aarch64 NEON, in three tiers:
//!
//! - FEAT_I8MM: `usdot` multiplies the u8 codes by the i8 weights as they are.
//! - FEAT_DotProd: `sdot` is i8 by i8 only, so each code is offset by −128 (a bit flip) and the
//!   accumulators start at `128 · Σ W[o]`, which puts the offset back exactly.
//! - NEON alone: the offset codes times the weights in 16 bits (`smull`, |product| ≤ 2^14),
//!   pairs of products added into i32 lanes (`sadalp`), the two halves of each pixel's sum
//!   added once at the end (`addp`).
//!
//! Tiles of 4 output channels × 16 pixels (8 for the widened tier) sum in registers; a chunk
//! of up to 64 pixels of each channel is then finished and stored in one
//! [`Element::store_row`] call, as the AVX2 kernel does.

use std::arch::aarch64::*;

use crate::kernels::neon::{sdot, usdot};
use crate::kernels::store::codes::Element;
use crate::kernels::{Epilogue, Isa, Tier};

/// Output channels of a tile.
const TILE_CHANNELS: usize = 4;
/// Pixels of each channel summed before one store call finishes them.
const CHUNK_PIXELS: usize = 64;
/// Activation bytes a block of chunks spans while each block of channels runs over all of it:
/// half of a Cortex-A76's 512 KB L2 (Apple's are several MB).
const CHUNK_BLOCK_BYTES: usize = 256 * 1024;

/// How four u8 codes times four i8 weights add into the sums of one vector of 4 pixels (or 4
/// depthwise outputs: `depthwise_bytes_neon.rs`).
pub(in crate::kernels) trait Dot {
    /// An operand vector as the products read it (prepared once, used by every channel).
    type X: Copy;
    /// The running sums of 4 pixels.
    type Acc: Copy;
    /// Sums before the first product, for a weight row summing to `row_sum`.
    fn start(row_sum: i32) -> Self::Acc;
    fn operand(v: uint8x16_t) -> Self::X;
    /// # Safety
    /// The CPU has the tier's dot-product instructions (callers enable their feature).
    unsafe fn dot(acc: Self::Acc, x: Self::X, w: int8x16_t) -> Self::Acc;
    /// The 4 pixels' sums.
    fn sums(acc: Self::Acc) -> int32x4_t;
}

/// FEAT_I8MM: `usdot`, u8 by i8.
pub(in crate::kernels) struct UnsignedBySigned;

impl Dot for UnsignedBySigned {
    type X = uint8x16_t;
    type Acc = int32x4_t;

    #[inline(always)]
    fn start(_: i32) -> int32x4_t {
        // SAFETY: NEON is part of every aarch64 target.
        unsafe { vdupq_n_s32(0) }
    }

    #[inline(always)]
    fn operand(v: uint8x16_t) -> uint8x16_t {
        v
    }

    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, x: uint8x16_t, w: int8x16_t) -> int32x4_t {
        // SAFETY: the caller runs with FEAT_I8MM.
        unsafe { usdot(acc, x, w) }
    }

    #[inline(always)]
    fn sums(acc: int32x4_t) -> int32x4_t {
        acc
    }
}

/// `x − 128` as i8: the code with its top bit flipped.
#[inline(always)]
fn offset_codes(v: uint8x16_t) -> int8x16_t {
    // SAFETY: NEON is part of every aarch64 target.
    unsafe { vreinterpretq_s8_u8(veorq_u8(v, vdupq_n_u8(0x80))) }
}

/// FEAT_DotProd: `sdot` on the offset codes; `Σ (x − 128)·w + 128·Σ w = Σ x·w` (in wrapping
/// i32, as the reference's sums).
pub(in crate::kernels) struct SignedOffset;

impl Dot for SignedOffset {
    type X = int8x16_t;
    type Acc = int32x4_t;

    #[inline(always)]
    fn start(row_sum: i32) -> int32x4_t {
        // SAFETY: NEON is part of every aarch64 target.
        unsafe { vdupq_n_s32(row_sum.wrapping_mul(128)) }
    }

    #[inline(always)]
    fn operand(v: uint8x16_t) -> int8x16_t {
        offset_codes(v)
    }

    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
        // SAFETY: the caller runs with FEAT_DotProd.
        unsafe { sdot(acc, x, w) }
    }

    #[inline(always)]
    fn sums(acc: int32x4_t) -> int32x4_t {
        acc
    }
}

/// NEON alone: `smull`/`smull2` of the offset codes by the weights, `sadalp` into two
/// accumulators of half sums (lanes: pixel 2i's first and second pair, then pixel 2i + 1's).
pub(in crate::kernels) struct Widened;

impl Dot for Widened {
    type X = int8x16_t;
    type Acc = [int32x4_t; 2];

    #[inline(always)]
    fn start(row_sum: i32) -> [int32x4_t; 2] {
        // One half of each pixel carries the correction, so `addp` adds it once.
        let c = row_sum.wrapping_mul(128);
        // SAFETY: NEON is part of every aarch64 target; the array has 4 lanes.
        let v = unsafe { vld1q_s32([c, 0, c, 0].as_ptr()) };
        [v, v]
    }

    #[inline(always)]
    fn operand(v: uint8x16_t) -> int8x16_t {
        offset_codes(v)
    }

    #[inline(always)]
    unsafe fn dot(acc: [int32x4_t; 2], x: int8x16_t, w: int8x16_t) -> [int32x4_t; 2] {
        // SAFETY: NEON is part of every aarch64 target. |(x − 128) · w| ≤ 2^14 fits i16.
        unsafe {
            let low = vmull_s8(vget_low_s8(x), vget_low_s8(w));
            let high = vmull_high_s8(x, w);
            [vpadalq_s16(acc[0], low), vpadalq_s16(acc[1], high)]
        }
    }

    #[inline(always)]
    fn sums(acc: [int32x4_t; 2]) -> int32x4_t {
        // SAFETY: NEON is part of every aarch64 target.
        unsafe { vpaddq_s32(acc[0], acc[1]) }
    }
}

/// The product [`conv_planar`](crate::kernels::conv_planar) computes, on `isa` (one of the NEON
/// ones).
///
/// # Safety
/// The CPU runs `isa` ([`Isa::runs_here`]); `x` points at `k4` rows of `pixels` words,
/// `x_stride` apart; `w` holds one row of `k4` words and `row_sums` its sum per epilogue;
/// `out` points at one run of `pixels` elements per epilogue, `out_stride` apart, none of them
/// aliased.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn channels<E: Element>(
    isa: Isa,
    x: *const u32,
    x_stride: usize,
    pixels: usize,
    w: &[i32],
    row_sums: &[i32],
    k4: usize,
    epilogues: &[Epilogue],
    store: E::Store,
    out: *mut E,
    out_stride: usize,
) {
    assert!(w.len() >= epilogues.len() * k4 && row_sums.len() >= epilogues.len());
    let run = Run { isa, x, x_stride, pixels, w, row_sums, k4, epilogues, store, out, out_stride };
    // SAFETY: the caller's contract; the CPU runs `isa`, whose features each entry enables.
    unsafe {
        match isa.tier() {
            Tier::NeonI8mm => run.with_i8mm(),
            Tier::NeonDot => run.with_dotprod(),
            _ => run.blocks::<Widened, 2>(),
        }
    }
}

/// One call's operands (see [`channels`]).
struct Run<'a, E: Element> {
    isa: Isa,
    x: *const u32,
    x_stride: usize,
    pixels: usize,
    w: &'a [i32],
    row_sums: &'a [i32],
    k4: usize,
    epilogues: &'a [Epilogue],
    store: E::Store,
    out: *mut E,
    out_stride: usize,
}

impl<E: Element> Run<'_, E> {
    #[target_feature(enable = "i8mm")]
    unsafe fn with_i8mm(&self) {
        // SAFETY: as for `channels`, with FEAT_I8MM enabled here.
        unsafe { self.blocks::<UnsignedBySigned, 4>() }
    }

    #[target_feature(enable = "dotprod")]
    unsafe fn with_dotprod(&self) {
        // SAFETY: as for `channels`, with FEAT_DotProd enabled here.
        unsafe { self.blocks::<SignedOffset, 4>() }
    }

    /// Blocks of chunks whose activations fit half of L2; in each, blocks of 4 channels over
    /// every chunk (their weights stay in L1 while the activations stream from L2). `V`:
    /// vectors of 4 pixels per tile.
    #[inline(always)]
    unsafe fn blocks<D: Dot, const V: usize>(&self) {
        let count = self.epilogues.len();
        let block = (CHUNK_BLOCK_BYTES / (self.k4 * 4 * CHUNK_PIXELS).max(1)).max(1) * CHUNK_PIXELS;
        for first in (0..self.pixels).step_by(block) {
            let end = (first + block).min(self.pixels);
            for o in (0..count).step_by(TILE_CHANNELS) {
                for p in (first..end).step_by(CHUNK_PIXELS) {
                    let lanes = (end - p).min(CHUNK_PIXELS);
                    // SAFETY: channels `o..` and pixels `p..p + lanes` are inside the run.
                    unsafe {
                        match count - o {
                            1 => self.chunk::<D, 1, V>(o, p, lanes),
                            2 => self.chunk::<D, 2, V>(o, p, lanes),
                            3 => self.chunk::<D, 3, V>(o, p, lanes),
                            _ => self.chunk::<D, TILE_CHANNELS, V>(o, p, lanes),
                        }
                    }
                }
            }
        }
    }

    /// Channels `o..o + O` over pixels `p..p + lanes` (at most a chunk): tiles into a buffer of
    /// sums, then one store per channel.
    #[inline(always)]
    unsafe fn chunk<D: Dot, const O: usize, const V: usize>(
        &self,
        o: usize,
        p: usize,
        lanes: usize,
    ) {
        let mut sums = [[0i32; CHUNK_PIXELS]; O];
        for tile in (0..lanes).step_by(4 * V) {
            let tile_lanes = (lanes - tile).min(4 * V);
            // SAFETY: the tile's pixels are inside the run; `sums` has room for them.
            unsafe {
                if tile_lanes <= 4 {
                    self.tile::<D, O, 1>(o, p + tile, tile_lanes, &mut sums, tile);
                } else {
                    self.tile::<D, O, V>(o, p + tile, tile_lanes, &mut sums, tile);
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            // SAFETY: run `o + r` of `out` has the chunk's pixels, and nothing else refers to
            // them while this slice lives.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.out.add((o + r) * self.out_stride + p), lanes)
            };
            E::store_row(self.isa, &sums[..lanes], self.epilogues[o + r], self.store, dst);
        }
    }

    /// `O` channels × `lanes` (≤ 4 · `V`) pixels from `p`, summed into `sums[..][at..]`.
    #[inline(always)]
    unsafe fn tile<D: Dot, const O: usize, const V: usize>(
        &self,
        o: usize,
        p: usize,
        lanes: usize,
        sums: &mut [[i32; CHUNK_PIXELS]; O],
        at: usize,
    ) {
        let mut acc: [[D::Acc; V]; O] =
            std::array::from_fn(|c| [D::start(self.row_sums[o + c]); V]);
        let w = self.w[o * self.k4..].as_ptr();
        for k in 0..self.k4 {
            let row = self.x.wrapping_add(k * self.x_stride + p);
            let operands: [D::X; V] = std::array::from_fn(|v| {
                // SAFETY: row `k` of `x` has the tile's `lanes` words; a vector past them
                // is built from the words inside only.
                let words =
                    unsafe { load_words(row.wrapping_add(4 * v), lanes.saturating_sub(4 * v)) };
                D::operand(words)
            });
            for (c, acc) in acc.iter_mut().enumerate() {
                // SAFETY: weight row `o + c` has `k4` words (asserted in `channels`).
                let weight = unsafe { vreinterpretq_s8_s32(vld1q_dup_s32(w.add(c * self.k4 + k))) };
                for (acc, &x) in acc.iter_mut().zip(&operands) {
                    // SAFETY: the kernel runs with the features `D` needs.
                    *acc = unsafe { D::dot(*acc, x, weight) };
                }
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: `at + 4 · v + 4 ≤ CHUNK_PIXELS` (tiles start at multiples of 4 · V
                // and chunks hold a whole number of tiles).
                unsafe { vst1q_s32(sums.as_mut_ptr().add(at + 4 * v), D::sums(acc)) };
            }
        }
    }
}

/// The 4 words at `at` as bytes, or the first `lanes` of them (< 4) and zeros: NEON has no
/// masked load.
///
/// # Safety
/// `min(lanes, 4)` words must be readable at `at`.
#[inline(always)]
unsafe fn load_words(at: *const u32, lanes: usize) -> uint8x16_t {
    // SAFETY: as the caller guarantees.
    unsafe {
        if lanes >= 4 {
            return vld1q_u8(at.cast());
        }
        let mut words = [0u32; 4];
        std::ptr::copy_nonoverlapping(at, words.as_mut_ptr(), lanes);
        vld1q_u8(words.as_ptr().cast())
    }
}
