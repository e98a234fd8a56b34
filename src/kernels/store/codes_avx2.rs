//! The u8 code store ([`Element::store_row`](crate::kernels::Element::store_row) for codes) on
//! 256-bit vectors: what the AVX2 kernels finish their sums with, in nine instructions per 8 values
//! (the compiler's vectorised loop of the scalar reference rounds with the 2^23 trick, then
//! shuffles bytes per 8 values).

use std::arch::x86_64::*;

use super::codes::{CodeFinish, Sum};
use crate::kernels::{Epilogue, OutputCodes};

/// Values finished and packed together (four vectors into one of bytes).
const CHUNK: usize = 32;

/// Sums the AVX2 code store loads 8 at a time.
pub trait SimdSum8: Sum {
    /// `sum − offset` as f32 ([`Sum::centred`](crate::kernels::Sum::centred)) of the first `lanes`
    /// (≤ 8) sums at `ptr` (others 0).
    ///
    /// # Safety
    /// AVX2 must be available and `lanes` sums readable at `ptr`.
    unsafe fn centred8(ptr: *const Self, lanes: usize, offset: i32) -> __m256;
}

/// Lanes `0..lanes` set (for masked loads).
#[inline(always)]
pub(in crate::kernels) unsafe fn lane_mask(lanes: usize) -> __m256i {
    let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes.min(8) as i32), index)
}

impl SimdSum8 for i32 {
    #[inline(always)]
    unsafe fn centred8(ptr: *const i32, lanes: usize, offset: i32) -> __m256 {
        // SAFETY: as the caller guarantees; masked-off lanes are never read.
        let sums = unsafe {
            if lanes >= 8 {
                _mm256_loadu_si256(ptr.cast())
            } else {
                _mm256_maskload_epi32(ptr, lane_mask(lanes))
            }
        };
        _mm256_cvtepi32_ps(_mm256_sub_epi32(sums, _mm256_set1_epi32(offset)))
    }
}

impl SimdSum8 for f32 {
    #[inline(always)]
    unsafe fn centred8(ptr: *const f32, lanes: usize, _: i32) -> __m256 {
        // SAFETY: as the caller guarantees; masked-off lanes are never read.
        unsafe {
            if lanes >= 8 {
                _mm256_loadu_ps(ptr)
            } else {
                _mm256_maskload_ps(ptr, lane_mask(lanes))
            }
        }
    }
}

/// Codes of 8 centred sums: scaled and shifted, clamped to the activation's code bounds (NaN
/// becomes the low bound, as in [`CodeFinish::code`]), rounded half to even.
#[inline(always)]
unsafe fn code8(centred: __m256, f: &CodeFinish) -> __m256i {
    let v = _mm256_fmadd_ps(centred, _mm256_set1_ps(f.scale), _mm256_set1_ps(f.shift));
    // `max(v, low)` returns `low` for a NaN `v`.
    let v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(f.low)), _mm256_set1_ps(f.high));
    _mm256_cvttps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v))
}

/// `dst[i]` = the code of `sums[i]` finished by `e`, 32 at a time: four vectors finished, then
/// packed with signed (i32 → i16) and unsigned (i16 → u8) saturation and put back in order.
///
/// # Safety
/// AVX2 and FMA must be available; `dst.len() ≥ sums.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn codes<S: SimdSum8>(sums: &[S], e: &Epilogue, codes: OutputCodes, dst: &mut [u8]) {
    // SAFETY: as the caller guarantees; one row of all the sums.
    unsafe { codes_rows(sums, [1, sums.len()], sums.len(), e, codes, dst) }
}

/// [`codes`] of `rows` rows of `width` sums, `pitch` apart in `sums`, into consecutive rows of
/// `dst` (a depthwise kernel's flat sums), the finish prepared once for all of them.
///
/// # Safety
/// AVX2 and FMA must be available; the rows fit `sums` and `dst` (`Element::store_rows`'s
/// check).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn codes_rows<S: SimdSum8>(
    sums: &[S],
    [rows, width]: [usize; 2],
    pitch: usize,
    e: &Epilogue,
    codes: OutputCodes,
    dst: &mut [u8],
) {
    let finish = codes.finish(e);
    // The packs interleave 128-bit lanes: dword 4j + k holds values 8k + 4j .. + 3.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let lines = sums.chunks(pitch.max(1)).zip(dst.chunks_exact_mut(width.max(1)));
    for (sums, dst) in lines.take(rows) {
        let sums = &sums[..width.min(sums.len())];
        for (start, chunk) in (0..sums.len()).step_by(CHUNK).zip(sums.chunks(CHUNK)) {
            let code = |i: usize| {
                let lanes = chunk.len().saturating_sub(8 * i);
                if lanes == 0 {
                    return _mm256_setzero_si256();
                }
                // SAFETY: `lanes` sums from `8 · i` are inside `chunk`; AVX2 is enabled.
                unsafe { code8(S::centred8(chunk.as_ptr().add(8 * i), lanes, e.offset), &finish) }
            };
            let words =
                [_mm256_packs_epi32(code(0), code(1)), _mm256_packs_epi32(code(2), code(3))];
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words[0], words[1]), order);
            // SAFETY: `dst` holds the row's `sums.len()` bytes, so the chunk's.
            unsafe {
                let at = dst.as_mut_ptr().add(start);
                if chunk.len() == CHUNK {
                    _mm256_storeu_si256(at.cast(), bytes);
                } else {
                    store_prefix(at, bytes, chunk.len());
                }
            }
        }
    }
}

/// Stores the first `len` (< 32) bytes of `bytes` at `dst` without a loop or a call (a
/// `memcpy` call per row cost more than the row on 7×7 and 14×14 planes).
///
/// # Safety
/// AVX2 must be available and `len` bytes writable at `dst`.
#[inline(always)]
pub(in crate::kernels) unsafe fn store_prefix(dst: *mut u8, bytes: __m256i, len: usize) {
    debug_assert!(len < 32);
    let mut half = _mm256_castsi256_si128(bytes);
    let mut at = 0;
    // SAFETY: every store below ends at or before `dst + len`.
    unsafe {
        if len >= 16 {
            _mm_storeu_si128(dst.cast(), half);
            half = _mm256_extracti128_si256::<1>(bytes);
            at = 16;
        }
        let mut word = _mm_cvtsi128_si64(half) as u64;
        if len - at >= 8 {
            dst.add(at).cast::<u64>().write_unaligned(word);
            word = _mm_extract_epi64::<1>(half) as u64;
            at += 8;
        }
        if len - at >= 4 {
            dst.add(at).cast::<u32>().write_unaligned(word as u32);
            word >>= 32;
            at += 4;
        }
        if len - at >= 2 {
            dst.add(at).cast::<u16>().write_unaligned(word as u16);
            word >>= 16;
            at += 2;
        }
        if len > at {
            dst.add(at).write(word as u8);
        }
    }
}
