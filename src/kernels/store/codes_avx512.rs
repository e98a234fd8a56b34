//! The AVX-512 stores of `codes`: finishing i32 sums into floats or u8 codes from registers.

use std::arch::x86_64::*;

use super::codes::{CodeFinish, Element, Epilogue, FloatStore, OutputCodes, Sum};

/// Elements a SIMD kernel stores straight from registers.
pub trait SimdElement: Element {
    /// What finishes one channel's sums, prepared once for many tiles.
    type Finish: Copy;
    /// The finisher of sums finished by `e` and stored with `store`.
    fn finisher(e: &Epilogue, store: Self::Store) -> Self::Finish;
    /// Finishes 32 i32 sums (`sums[0]` first) with `f` and stores the lanes `masks`
    /// select at `dst` (adding to them first, for [`FloatStore::AddTo`]).
    ///
    /// # Safety
    /// AVX-512F/BW must be available and the selected elements at `dst` readable and
    /// writable.
    unsafe fn finish32(sums: [__m512i; 2], f: &Self::Finish, masks: [__mmask16; 2], dst: *mut Self);
    /// [`Self::finish32`] of 16 sums: the lanes `mask` selects stored at `dst`.
    ///
    /// # Safety
    /// As for [`Self::finish32`].
    unsafe fn finish16(sums: __m512i, f: &Self::Finish, mask: __mmask16, dst: *mut Self);
}

impl SimdElement for f32 {
    type Finish = (Epilogue, FloatStore);
    fn finisher(e: &Epilogue, store: FloatStore) -> (Epilogue, FloatStore) {
        (*e, store)
    }
    #[inline(always)]
    unsafe fn finish32(
        sums: [__m512i; 2],
        (e, store): &(Epilogue, FloatStore),
        masks: [__mmask16; 2],
        dst: *mut f32,
    ) {
        let add = *store == FloatStore::AddTo;
        // SAFETY: as the caller guarantees; masked-off lanes are never read or written.
        unsafe {
            let high_half = dst.wrapping_add(16);
            let low = finish16(sums[0], e, add, masks[0], dst);
            _mm512_mask_storeu_ps(dst, masks[0], low);
            let high = finish16(sums[1], e, add, masks[1], high_half);
            _mm512_mask_storeu_ps(high_half, masks[1], high);
        }
    }
    #[inline(always)]
    unsafe fn finish16(
        sums: __m512i,
        (e, store): &(Epilogue, FloatStore),
        mask: __mmask16,
        dst: *mut f32,
    ) {
        let add = *store == FloatStore::AddTo;
        // SAFETY: as the caller guarantees; masked-off lanes are never read or written.
        unsafe { _mm512_mask_storeu_ps(dst, mask, finish16(sums, e, add, mask, dst)) }
    }
}

/// 16 sums finished as floats by `e`, added to the lanes `mask` selects at `dst` first when
/// `add` ([`FloatStore::AddTo`]). A function rather than a closure: always inlined into the
/// kernel, so the intrinsics are too (a closure compiled apart called each one).
///
/// # Safety
/// AVX-512F must be available and, when `add`, the selected lanes at `dst` readable.
#[inline(always)]
unsafe fn finish16(
    sums: __m512i,
    e: &Epilogue,
    add: bool,
    mask: __mmask16,
    dst: *const f32,
) -> __m512 {
    let (low, high) = e.activation.bounds();
    let centred = _mm512_sub_epi32(sums, _mm512_set1_epi32(e.offset));
    // Separate multiply and add, as the scalar reference rounds them.
    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(centred), _mm512_set1_ps(e.scale));
    let mut v = _mm512_add_ps(v, _mm512_set1_ps(e.bias));
    if add {
        // SAFETY: the selected lanes are readable (the caller's contract).
        v = _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, dst) });
    }
    _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(low)), _mm512_set1_ps(high))
}

impl SimdElement for u8 {
    type Finish = CodeFinish;
    fn finisher(e: &Epilogue, codes: OutputCodes) -> CodeFinish {
        codes.finish(e)
    }
    #[inline(always)]
    unsafe fn finish32(
        sums: [__m512i; 2],
        finish: &CodeFinish,
        masks: [__mmask16; 2],
        dst: *mut u8,
    ) {
        let offset = _mm512_set1_epi32(finish.offset);
        let code = |sums: __m512i| {
            // SAFETY: AVX-512F is available (the caller's contract).
            unsafe { code16(_mm512_cvtepi32_ps(_mm512_sub_epi32(sums, offset)), finish) }
        };
        // SAFETY: as the caller guarantees; masked-off bytes are never written.
        unsafe {
            let words = _mm512_packs_epi32(code(sums[0]), code(sums[1]));
            let bytes = _mm512_packus_epi16(words, words);
            // Dword 4k holds values 4k..4k+3, dword 4k + 1 values 16 + 4k..: in order.
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
            let bytes = _mm512_permutexvar_epi32(order, bytes);
            let mask = u64::from(masks[0]) | (u64::from(masks[1]) << 16);
            _mm512_mask_storeu_epi8(dst.cast(), mask, bytes);
        }
    }
    #[inline(always)]
    unsafe fn finish16(sums: __m512i, finish: &CodeFinish, mask: __mmask16, dst: *mut u8) {
        // SAFETY: as the caller guarantees; masked-off bytes are never written.
        unsafe {
            let centred =
                _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, _mm512_set1_epi32(finish.offset)));
            // Codes are in [0, 255] already: the narrowing only drops zero bytes.
            let bytes = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(code16(centred, finish)));
            // The 512-bit store: its 128-bit form needs AVX-512VL besides.
            _mm512_mask_storeu_epi8(dst.cast(), u64::from(mask), bytes);
        }
    }
}

/// Codes of 16 centred sums as i32 lanes in [0, 255], before the packs: one multiply-add,
/// clamped to the activation's code bounds, rounded half to even ([`CodeFinish::code`]).
///
/// # Safety
/// AVX-512F must be available.
#[inline(always)]
unsafe fn code16(centred: __m512, f: &CodeFinish) -> __m512i {
    let v = _mm512_fmadd_ps(centred, _mm512_set1_ps(f.scale), _mm512_set1_ps(f.shift));
    let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(f.low)), _mm512_set1_ps(f.high));
    _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
}

/// Sums the AVX-512 store loads 16 at a time.
pub trait SimdSum: Sum + super::codes_avx2::SimdSum8 {
    /// `sum − offset` as f32 ([`Sum::centred`]) of the lanes `mask` selects (others 0).
    ///
    /// # Safety
    /// AVX-512F must be available and the selected lanes readable.
    unsafe fn centred16(ptr: *const Self, mask: __mmask16, offset: i32) -> __m512;
}

impl SimdSum for i32 {
    #[inline(always)]
    unsafe fn centred16(ptr: *const i32, mask: __mmask16, offset: i32) -> __m512 {
        // SAFETY: as the caller guarantees; masked-off lanes are never read.
        let sums = unsafe { _mm512_maskz_loadu_epi32(mask, ptr.cast()) };
        _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, _mm512_set1_epi32(offset)))
    }
}

impl SimdSum for f32 {
    #[inline(always)]
    unsafe fn centred16(ptr: *const f32, mask: __mmask16, _: i32) -> __m512 {
        // SAFETY: as the caller guarantees; masked-off lanes are never read.
        unsafe { _mm512_maskz_loadu_ps(mask, ptr) }
    }
}

/// `dst[i] = src[i] − zero_point` as f32, 16 at a time with masked tails (rows of depthwise
/// inputs are often 7 to 28 wide, where the compiler's loop ran mostly its scalar tail).
///
/// # Safety
/// AVX-512F/BW must be available; `dst.len() ≥ src.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn centred(src: &[u8], zero_point: u8, dst: &mut [f32]) {
    let zero_point = _mm512_set1_ps(f32::from(zero_point));
    for (start, chunk) in (0..src.len()).step_by(16).zip(src.chunks(16)) {
        let lanes = chunk.len();
        let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
        // SAFETY: the mask reads and writes only the chunk's lanes, which both slices hold.
        unsafe {
            let bytes = _mm_maskz_loadu_epi8(mask, chunk.as_ptr().cast());
            let values = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
            let centred = _mm512_sub_ps(values, zero_point);
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(start), mask, centred);
        }
    }
}

/// Codes of finished sums, 64 at a time: four vectors finished, scaled, rounded half to
/// even, offset, then packed with signed (i32 → i16) and unsigned (i16 → u8) saturation,
/// which is the [0, 255] clamp. Masked loads and store for the tail. (The compiler's
/// vectorised byte store, `vpmovdb` to memory, was half of the store's time.)
///
/// # Safety
/// AVX-512F/BW must be available; `dst.len() ≥ sums.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn codes<S: SimdSum>(sums: &[S], e: &Epilogue, codes: OutputCodes, dst: &mut [u8]) {
    // SAFETY: as the caller guarantees; one row of all the sums.
    unsafe { codes_rows(sums, [1, sums.len()], sums.len(), e, codes, dst) }
}

/// [`codes`] of `rows` rows of `width` sums, `pitch` apart in `sums`, into consecutive
/// rows of `dst`; vectors past a row's end are skipped (7-wide rows take one).
///
/// # Safety
/// AVX-512F/BW must be available.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn codes_rows<S: SimdSum>(
    sums: &[S],
    [rows, width]: [usize; 2],
    pitch: usize,
    e: &Epilogue,
    codes: OutputCodes,
    dst: &mut [u8],
) {
    let finish = codes.finish(e);
    // The packs interleave 128-bit lanes: dword 4k + j holds values 16j + 4k .. + 3.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let lines = sums.chunks(pitch.max(1)).zip(dst.chunks_exact_mut(width.max(1)));
    for (sums, dst) in lines.take(rows) {
        let sums = &sums[..width.min(sums.len())];
        for (start, chunk) in (0..sums.len()).step_by(64).zip(sums.chunks(64)) {
            let code = |i: usize| {
                let lanes = chunk.len().saturating_sub(16 * i).min(16);
                if lanes == 0 {
                    return _mm512_setzero_si512();
                }
                let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
                // SAFETY: the mask selects only lanes inside `chunk`; AVX-512F is enabled.
                unsafe {
                    let first = chunk.as_ptr().wrapping_add(16 * i);
                    code16(S::centred16(first, mask, e.offset), &finish)
                }
            };
            let words =
                [_mm512_packs_epi32(code(0), code(1)), _mm512_packs_epi32(code(2), code(3))];
            let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(words[0], words[1]));
            let len = chunk.len();
            let mask: __mmask64 = if len == 64 { u64::MAX } else { (1u64 << len) - 1 };
            // SAFETY: the mask writes only the chunk's `len` bytes, which `dst` holds.
            unsafe { _mm512_mask_storeu_epi8(dst.as_mut_ptr().add(start).cast(), mask, bytes) };
        }
    }
}
