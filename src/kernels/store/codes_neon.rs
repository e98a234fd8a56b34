//! The u8 code store ([`Element::store_row`](crate::kernels::Element::store_row) for codes) on
//! aarch64 NEON: 16 sums finished per step (one fused multiply-add, a clamp and a rounding convert
//! per 4), narrowed to bytes in registers and stored at once. The compiler's loop of the scalar
//! reference rounds with the 2^23 trick and stores byte by byte.

use std::arch::aarch64::*;

use super::codes::{CodeFinish, Sum};
use crate::kernels::{Epilogue, OutputCodes};

/// Values finished and narrowed together (four vectors into one of bytes).
const CHUNK: usize = 16;

/// Sums the NEON code store loads 4 at a time.
pub trait SimdSum: Sum {
    /// `sum − offset` as f32 ([`Sum::centred`]) of the 4 sums at `ptr`.
    ///
    /// # Safety
    /// 4 sums must be readable at `ptr`.
    unsafe fn centred4(ptr: *const Self, offset: i32) -> float32x4_t;
}

impl SimdSum for i32 {
    #[inline(always)]
    unsafe fn centred4(ptr: *const i32, offset: i32) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable sums. The subtraction wraps as the
        // reference's `i32` subtraction does in release builds; the conversion rounds to
        // nearest even, as `as f32` does.
        unsafe { vcvtq_f32_s32(vsubq_s32(vld1q_s32(ptr), vdupq_n_s32(offset))) }
    }
}

impl SimdSum for f32 {
    #[inline(always)]
    unsafe fn centred4(ptr: *const f32, _: i32) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable sums.
        unsafe { vld1q_f32(ptr) }
    }
}

/// Codes of 4 centred sums as u32 lanes: `centred · scale + shift` fused (as `mul_add` in
/// [`CodeFinish::code`]), clamped to the code bounds — `fmaxnm` turns NaN into the low bound
/// as the reference does — and rounded half to even by the convert.
#[inline(always)]
fn code4(centred: float32x4_t, f: &CodeFinish) -> uint32x4_t {
    // SAFETY: NEON is part of every aarch64 target; these are register-only operations.
    unsafe {
        let v = vfmaq_f32(vdupq_n_f32(f.shift), centred, vdupq_n_f32(f.scale));
        let v = vminq_f32(vmaxnmq_f32(v, vdupq_n_f32(f.low)), vdupq_n_f32(f.high));
        vcvtnq_u32_f32(v)
    }
}

/// `dst[i]` = the code of `sums[i]` finished by `e`; the last `len mod 16` by the scalar
/// reference itself.
pub fn codes<S: SimdSum>(sums: &[S], e: &Epilogue, codes: OutputCodes, dst: &mut [u8]) {
    assert!(dst.len() >= sums.len(), "codes: fewer codes than sums");
    let finish = codes.finish(e);
    let whole = sums.len() / CHUNK * CHUNK;
    for (chunk, out) in sums[..whole].chunks_exact(CHUNK).zip(dst.chunks_exact_mut(CHUNK)) {
        let at = chunk.as_ptr();
        // SAFETY: `chunk` holds 16 sums (4 per load) and `out` 16 bytes; the codes are in
        // [0, 255], so the narrowing moves keep them whole.
        unsafe {
            let code = |i: usize| code4(S::centred4(at.add(4 * i), finish.offset), &finish);
            let low = vcombine_u16(vmovn_u32(code(0)), vmovn_u32(code(1)));
            let high = vcombine_u16(vmovn_u32(code(2)), vmovn_u32(code(3)));
            vst1q_u8(out.as_mut_ptr(), vcombine_u8(vmovn_u16(low), vmovn_u16(high)));
        }
    }
    for (d, &s) in dst[whole..].iter_mut().zip(&sums[whole..]) {
        *d = finish.code(s.centred(finish.offset));
    }
}
