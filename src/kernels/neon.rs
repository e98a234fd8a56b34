//! The aarch64 dot-product instructions the NEON kernels use, written with `asm!`: Rust's
//! intrinsics for them (`vdotq_s32`, `vusdotq_s32`) are still unstable, while the target
//! features that allow them are stable.

use std::arch::aarch64::*;
use std::arch::asm;

/// `acc[i] += Σ_j a[4i + j] · b[4i + j]`, i8 by i8 (`sdot`, FEAT_DotProd).
///
/// # Safety
/// The CPU must have FEAT_DotProd, and the caller must be compiled with `dotprod` enabled.
#[inline(always)]
pub(super) unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction; the caller guarantees the CPU decodes it.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc[i] += Σ_j a[4i + j] · b[4i + j]`, u8 by i8 (`usdot`, FEAT_I8MM).
///
/// # Safety
/// The CPU must have FEAT_I8MM, and the caller must be compiled with `i8mm` enabled.
#[inline(always)]
pub(super) unsafe fn usdot(mut acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction; the caller guarantees the CPU decodes it.
    unsafe {
        asm!(
            "usdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}
