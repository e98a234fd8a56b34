//! The planar GEMM ([`conv_planar`](crate::kernels::conv_planar)) on 256-bit vectors, for CPUs
//! without AVX-512: laptop cores with AVX-VNNI (`vpdpbusd` on ymm registers) and older ones with
//! AVX2 alone, whose u8 × i8 products are widened to 16 bits (`vpmaddwd`) — exact, where AVX2's
//! byte product `vpmaddubsw` would saturate its 16-bit pair sums (255 · 127 · 2 > 32,767).
//!
//! Tiles of 4 output channels × 16 pixels sum in registers. A chunk of up to 64 pixels of each
//! channel is then finished and stored in one [`Element::store_row`] call (codes by
//! `codes_avx2.rs`, floats by the `multiversion!` loop), rather than one call per tile.

use std::arch::x86_64::*;

use crate::kernels::store::codes::Element;
use crate::kernels::store::codes_avx2::lane_mask;
use crate::kernels::{Epilogue, Isa, Tier};

/// Output channels of a tile (4 × 2 accumulators, and for the widened products 4 prepared
/// operand vectors and 2 weights: 14 of the 16 ymm registers).
const TILE_CHANNELS: usize = 4;
/// Pixels of a tile (two vectors of 8 lanes).
const TILE_PIXELS: usize = 16;
/// Pixels of each channel summed before one store call finishes them.
const CHUNK_PIXELS: usize = 4 * TILE_PIXELS;
/// Activation bytes a block of chunks spans while each block of channels runs over all of it:
/// half an L2 of 1 MB, as the AVX-512 kernel's blocks (laptop L2s are 1.25–2 MB).
const CHUNK_BLOCK_BYTES: usize = 512 * 1024;

/// How four u8 codes times four i8 weights add into an i32 lane (the depthwise byte kernel's
/// too).
pub(in crate::kernels) trait Dot {
    /// An operand vector as the products read it (prepared once, used by every channel).
    type X: Copy;
    /// A weight word broadcast as the products read it.
    type W: Copy;
    unsafe fn operand(v: __m256i) -> Self::X;
    unsafe fn weight(word: i32) -> Self::W;
    unsafe fn dot(acc: __m256i, x: Self::X, w: Self::W) -> __m256i;
}

/// AVX-VNNI: one `vpdpbusd` per vector.
pub(in crate::kernels) struct Vnni;

impl Dot for Vnni {
    type X = __m256i;
    type W = __m256i;

    #[inline(always)]
    unsafe fn operand(v: __m256i) -> __m256i {
        v
    }

    #[inline(always)]
    unsafe fn weight(word: i32) -> __m256i {
        _mm256_set1_epi32(word)
    }

    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // SAFETY (of the caller): the kernel runs with AVX-VNNI enabled.
        _mm256_dpbusd_avx_epi32(acc, x, w)
    }
}

/// AVX2: the even and the odd bytes of each word widened to 16 bits (codes zero-extended,
/// weights sign-extended), then one `vpmaddwd` each: `x0·w0 + x2·w2` and `x1·w1 + x3·w3`, at
/// most 65,280 in magnitude, exact in i32.
pub(in crate::kernels) struct Widened;

impl Dot for Widened {
    type X = [__m256i; 2];
    type W = [__m256i; 2];

    #[inline(always)]
    unsafe fn operand(v: __m256i) -> [__m256i; 2] {
        [_mm256_and_si256(v, _mm256_set1_epi16(0xff)), _mm256_srli_epi16::<8>(v)]
    }

    #[inline(always)]
    unsafe fn weight(word: i32) -> [__m256i; 2] {
        let v = _mm256_set1_epi32(word);
        [_mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(v)), _mm256_srai_epi16::<8>(v)]
    }

    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: [__m256i; 2], w: [__m256i; 2]) -> __m256i {
        let even = _mm256_madd_epi16(x[0], w[0]);
        let odd = _mm256_madd_epi16(x[1], w[1]);
        _mm256_add_epi32(acc, _mm256_add_epi32(even, odd))
    }
}

/// The product [`conv_planar`](crate::kernels::conv_planar) computes, on `isa` (one of the AVX2
/// ones).
///
/// # Safety
/// The CPU runs `isa` ([`Isa::runs_here`]); `x` points at `k4` rows of `pixels` words,
/// `x_stride` apart; `w` holds one row of `k4` words per epilogue; `out` points at one run of
/// `pixels` elements per epilogue, `out_stride` apart, none of them aliased.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn channels<E: Element>(
    isa: Isa,
    x: *const u32,
    x_stride: usize,
    pixels: usize,
    w: &[i32],
    k4: usize,
    epilogues: &[Epilogue],
    store: E::Store,
    out: *mut E,
    out_stride: usize,
) {
    let run = Run { isa, x, x_stride, pixels, w, k4, epilogues, store, out, out_stride };
    // SAFETY: the caller's contract; the CPU runs `isa`, whose features each entry enables.
    unsafe {
        match isa.tier() {
            Tier::AvxVnni => run.with_vnni(),
            _ => run.widened(),
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
    k4: usize,
    epilogues: &'a [Epilogue],
    store: E::Store,
    out: *mut E,
    out_stride: usize,
}

impl<E: Element> Run<'_, E> {
    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn with_vnni(&self) {
        // SAFETY: as for `channels`, with AVX-VNNI enabled here.
        unsafe { self.blocks::<Vnni>() }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn widened(&self) {
        // SAFETY: as for `channels`, with AVX2 enabled here.
        unsafe { self.blocks::<Widened>() }
    }

    /// Blocks of chunks whose activations fit half of L2; in each, blocks of 4 channels over
    /// every chunk (their weights stay in L1 while the activations stream from L2).
    #[inline(always)]
    unsafe fn blocks<D: Dot>(&self) {
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
                            1 => self.chunk::<D, 1>(o, p, lanes),
                            2 => self.chunk::<D, 2>(o, p, lanes),
                            3 => self.chunk::<D, 3>(o, p, lanes),
                            _ => self.chunk::<D, TILE_CHANNELS>(o, p, lanes),
                        }
                    }
                }
            }
        }
    }

    /// Channels `o..o + O` over pixels `p..p + lanes` (at most a chunk): tiles into a buffer of
    /// sums, then one store per channel.
    #[inline(always)]
    unsafe fn chunk<D: Dot, const O: usize>(&self, o: usize, p: usize, lanes: usize) {
        let mut sums = [[0i32; CHUNK_PIXELS]; O];
        for tile in (0..lanes).step_by(TILE_PIXELS) {
            let tile_lanes = (lanes - tile).min(TILE_PIXELS);
            // SAFETY: the tile's pixels are inside the run; `sums` has room for them.
            unsafe {
                if tile_lanes > 8 {
                    self.tile::<D, O, 2>(o, p + tile, tile_lanes, &mut sums, tile);
                } else {
                    self.tile::<D, O, 1>(o, p + tile, tile_lanes, &mut sums, tile);
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

    /// `O` channels × `lanes` (≤ 8 · `V`) pixels from `p`, summed into `sums[..][at..]`.
    #[inline(always)]
    unsafe fn tile<D: Dot, const O: usize, const V: usize>(
        &self,
        o: usize,
        p: usize,
        lanes: usize,
        sums: &mut [[i32; CHUNK_PIXELS]; O],
        at: usize,
    ) {
        let masks = [lane_mask(lanes), lane_mask(lanes.saturating_sub(8))];
        let whole = lanes == 8 * V;
        let mut acc = [[_mm256_setzero_si256(); V]; O];
        let w = self.w.as_ptr().wrapping_add(o * self.k4);
        for k in 0..self.k4 {
            let row = self.x.wrapping_add(k * self.x_stride + p);
            let operands: [D::X; V] = std::array::from_fn(|v| {
                let at = row.wrapping_add(8 * v).cast::<__m256i>();
                // SAFETY: row `k` of `x` has the tile's `lanes` words; a partial tile loads
                // only the lanes inside it (masked-off lanes are not read).
                unsafe {
                    let loaded = if whole {
                        _mm256_loadu_si256(at)
                    } else {
                        _mm256_maskload_epi32(at.cast(), masks[v])
                    };
                    D::operand(loaded)
                }
            });
            for (c, acc) in acc.iter_mut().enumerate() {
                // SAFETY: weight row `o + c` has `k4` words.
                let weight = unsafe { D::weight(*w.add(c * self.k4 + k)) };
                for (acc, &x) in acc.iter_mut().zip(&operands) {
                    // SAFETY: the kernel runs with the features `D` needs.
                    *acc = unsafe { D::dot(*acc, x, weight) };
                }
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: `at + 8 · v + 8 ≤ CHUNK_PIXELS` (tiles start at multiples of 16).
                unsafe { _mm256_storeu_si256(sums.as_mut_ptr().add(at + 8 * v).cast(), acc) };
            }
        }
    }
}
