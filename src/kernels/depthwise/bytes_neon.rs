//! [`BytePlane`](crate::kernels::BytePlane)'s accumulation on aarch64 NEON: for 4 outputs, one
//! 16-byte load from the padded row and a table lookup (`tbl`) gather each output's four-tap word
//! (bytes `sx·j .. sx·j + 3`), multiplied by the kernel row's weight word as the planar GEMM does
//! (`usdot`, `sdot` on offset codes, or 16-bit products).

use std::arch::aarch64::*;

use crate::kernels::conv::planar_neon::{Dot, SignedOffset, UnsignedBySigned, Widened};
use crate::kernels::{Isa, Tier};

/// Flat outputs per vector.
const LANES: usize = 4;
/// Vectors accumulated together: independent chains.
const BLOCK: usize = 4;

/// The flat sums over the windows at `offsets` with their weight `words`:
/// `acc[i] = Σ_(offset, word) word · x[offset + sx · i .. + 4]`.
///
/// # Safety
/// The CPU runs `isa` (one of the NEON ones); `acc.len()` is a multiple of 4 and for every
/// offset `offset + sx · (acc.len() − 4) + 16 ≤ x.len()`.
pub unsafe fn accumulate(
    isa: Isa,
    x: &[u8],
    offsets: &[usize],
    words: &[i32],
    sx: usize,
    acc: &mut [i32],
) {
    // SAFETY: as the caller guarantees; each entry enables the features its `Dot` needs.
    unsafe {
        match isa.tier() {
            Tier::NeonI8mm => with_i8mm(x, offsets, words, sx, acc),
            Tier::NeonDot => with_dotprod(x, offsets, words, sx, acc),
            _ => sums::<Widened>(x, offsets, words, sx, acc),
        }
    }
}

#[target_feature(enable = "i8mm")]
unsafe fn with_i8mm(x: &[u8], offsets: &[usize], words: &[i32], sx: usize, acc: &mut [i32]) {
    // SAFETY: as for `accumulate`, FEAT_I8MM enabled.
    unsafe { sums::<UnsignedBySigned>(x, offsets, words, sx, acc) }
}

#[target_feature(enable = "dotprod")]
unsafe fn with_dotprod(x: &[u8], offsets: &[usize], words: &[i32], sx: usize, acc: &mut [i32]) {
    // SAFETY: as for `accumulate`, FEAT_DotProd enabled.
    unsafe { sums::<SignedOffset>(x, offsets, words, sx, acc) }
}

#[inline(always)]
unsafe fn sums<D: Dot>(x: &[u8], offsets: &[usize], words: &[i32], sx: usize, acc: &mut [i32]) {
    let pattern: [u8; 16] = std::array::from_fn(|b| (sx * (b / 4) + b % 4) as u8);
    // The offset tiers' correction: 128 · Σ taps of every word.
    let tap_sum: i32 = words.iter().flat_map(|w| w.to_le_bytes()).map(|b| i32::from(b as i8)).sum();
    // SAFETY: 16 bytes read from a 16-byte array.
    let gather = unsafe { vld1q_u8(pattern.as_ptr()) };
    let run = Windows { x: x.as_ptr(), offsets, words, sx, gather, tap_sum, out: acc.as_mut_ptr() };
    let whole = acc.len() / (BLOCK * LANES) * (BLOCK * LANES);
    // SAFETY: the vectors from each start lie inside `acc` (whole blocks, then single vectors
    // of a length that is a multiple of 4); the windows inside `x` by the caller's contract.
    unsafe {
        for start in (0..whole).step_by(BLOCK * LANES) {
            run.vectors::<D, BLOCK>(start);
        }
        for start in (whole..acc.len()).step_by(LANES) {
            run.vectors::<D, 1>(start);
        }
    }
}

/// One call's windows (see [`accumulate`]).
struct Windows<'a> {
    x: *const u8,
    offsets: &'a [usize],
    words: &'a [i32],
    sx: usize,
    gather: uint8x16_t,
    tap_sum: i32,
    out: *mut i32,
}

impl Windows<'_> {
    /// Flat outputs `start..start + 4 · V`: `V` independent chains, in registers.
    #[inline(always)]
    unsafe fn vectors<D: Dot, const V: usize>(&self, start: usize) {
        let (sx, step) = (self.sx, self.sx * LANES);
        let mut chains = [D::start(self.tap_sum); V];
        for (&offset, &word) in self.offsets.iter().zip(self.words) {
            // SAFETY: the kernel runs with the features `D` needs; each 16-byte load lies
            // inside `x` (the caller's contract).
            unsafe {
                let w = vreinterpretq_s8_s32(vdupq_n_s32(word));
                let at = self.x.add(offset + sx * start);
                for (v, chain) in chains.iter_mut().enumerate() {
                    let window = vqtbl1q_u8(vld1q_u8(at.add(v * step)), self.gather);
                    *chain = D::dot(*chain, D::operand(window), w);
                }
            }
        }
        for (v, chain) in chains.iter().enumerate() {
            // SAFETY: inside `acc` (the caller's contract).
            unsafe { vst1q_s32(self.out.add(start + v * LANES), D::sums(*chain)) };
        }
    }
}
