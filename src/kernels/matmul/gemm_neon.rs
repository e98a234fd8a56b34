//! The row-major GEMM ([`gemm_u8i8`](crate::kernels::gemm_u8i8)) on aarch64 NEON, in the
//! planar GEMM's three tiers (`conv/planar_neon.rs`): `usdot` with FEAT_I8MM, `sdot` on codes
//! offset by −128 with FEAT_DotProd, `smull` + `sadalp` on NEON alone.
//!
//! A packed block holds, per group of 4 k, 16 channels × 4 weights: four vectors of 4 channels.
//! Each row's 4 codes of the group are broadcast to all lanes, so one dot product adds them
//! times 4 channels' weights; up to 4 rows (2 for the widened tier) share each weight load.
//! The offset tiers add `128 · Σ_k W[o][k]` per channel at the end.

use std::arch::aarch64::*;

use super::gemm::BLOCK_N;
use crate::kernels::conv::planar_neon::{Dot, SignedOffset, UnsignedBySigned, Widened};
use crate::kernels::Tier;

/// One block of 16 channels for `rows` rows: `out[r][0..16]` (stride `out_stride`) =
/// `Σ_k x[r][k] · W[lane][k]`.
///
/// # Safety
/// The CPU runs `tier` (a NEON one); `w` holds `k4s` groups of 64 bytes and `column_sums` the
/// block's 16 weight sums; each of the `rows` rows of `x` (stride `x_stride`) has `4 · k4s`
/// bytes, and `out` has `rows` rows of at least 16 i32 at stride `out_stride`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
    tier: Tier,
    w: &[i8],
    column_sums: &[i32; BLOCK_N],
    k4s: usize,
    x: &[u8],
    x_stride: usize,
    rows: usize,
    out: &mut [i32],
    out_stride: usize,
) {
    let mut run = Run { w, column_sums, k4s, x, x_stride, out, out_stride };
    // SAFETY: the caller's contract; the CPU runs `tier`, whose features each entry enables.
    unsafe {
        match tier {
            Tier::NeonI8mm => run.with_i8mm(rows),
            Tier::NeonDot => run.with_dotprod(rows),
            _ => run.rows::<Widened, 2>(rows),
        }
    }
}

/// One call's operands (see [`block`]).
struct Run<'a> {
    w: &'a [i8],
    column_sums: &'a [i32; BLOCK_N],
    k4s: usize,
    x: &'a [u8],
    x_stride: usize,
    out: &'a mut [i32],
    out_stride: usize,
}

impl Run<'_> {
    #[target_feature(enable = "i8mm")]
    unsafe fn with_i8mm(mut self, rows: usize) {
        // SAFETY: as for `block`, with FEAT_I8MM enabled here.
        unsafe { self.rows::<UnsignedBySigned, 4>(rows) }
    }

    #[target_feature(enable = "dotprod")]
    unsafe fn with_dotprod(mut self, rows: usize) {
        // SAFETY: as for `block`, with FEAT_DotProd enabled here.
        unsafe { self.rows::<SignedOffset, 4>(rows) }
    }

    /// All `rows`, `R` at a time.
    #[inline(always)]
    unsafe fn rows<D: Dot, const R: usize>(&mut self, rows: usize) {
        let mut r = 0;
        while r < rows {
            // SAFETY: rows `r..` are inside the caller's `rows`.
            unsafe {
                match rows - r {
                    1 => self.tile::<D, 1>(r),
                    2 if R > 2 => self.tile::<D, 2>(r),
                    3 if R > 3 => self.tile::<D, 3>(r),
                    _ => self.tile::<D, R>(r),
                }
            }
            r += R.min(rows - r);
        }
    }

    /// Rows `r..r + N` × the block's 16 channels.
    #[inline(always)]
    unsafe fn tile<D: Dot, const N: usize>(&mut self, r: usize) {
        let mut acc: [[D::Acc; 4]; N] = [[D::start(0); 4]; N];
        let wp = self.w.as_ptr();
        let xp = self.x.as_ptr().wrapping_add(r * self.x_stride);
        for kk in 0..self.k4s {
            // SAFETY: group `kk` of `w` has 64 bytes and each row `k4s` words (the caller's
            // contract).
            unsafe {
                let weights: [int8x16_t; 4] =
                    std::array::from_fn(|q| vld1q_s8(wp.add(kk * 64 + q * 16)));
                for (row, acc) in acc.iter_mut().enumerate() {
                    let four = xp.add(row * self.x_stride + kk * 4).cast::<u32>().read_unaligned();
                    let x = D::operand(vreinterpretq_u8_u32(vdupq_n_u32(four)));
                    for (acc, &weights) in acc.iter_mut().zip(&weights) {
                        *acc = D::dot(*acc, x, weights);
                    }
                }
            }
        }
        // The offset tiers' sums lack `offset · Σ_k W[o][k]` (`offset` 128, or 0 for `usdot`).
        let offset = vgetq_lane_s32::<0>(D::sums(D::start(1)));
        for (row, acc) in acc.iter().enumerate() {
            for (q, &acc) in acc.iter().enumerate() {
                // SAFETY: row `r + row` of `out` has 16 i32 (the caller's contract);
                // `column_sums` has 16.
                unsafe {
                    let sums = vld1q_s32(self.column_sums.as_ptr().add(4 * q));
                    let sums = vmlaq_n_s32(D::sums(acc), sums, offset);
                    vst1q_s32(self.out.as_mut_ptr().add((r + row) * self.out_stride + 4 * q), sums);
                }
            }
        }
    }
}
