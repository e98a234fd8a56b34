//! [`BytePlane`](crate::kernels::BytePlane)'s padded copy and accumulation on 256-bit vectors: the
//! copy in 32-byte pieces blended with the zero point, then each output's four-tap word gathered
//! from its padded input row by a byte shuffle within 128-bit lanes (AVX2 has no permutation across
//! them), multiplied as the planar GEMM does (`vpdpbusd ymm` with AVX-VNNI, 16-bit products with
//! AVX2 alone).

use std::arch::x86_64::*;

use crate::kernels::conv::planar_avx2::{Dot, Vnni, Widened};
use crate::kernels::store::codes_avx2::store_prefix;
use crate::kernels::{Isa, Tier};

/// Flat outputs per vector.
const LANES: usize = 8;
/// Vectors accumulated together: independent chains.
const BLOCK: usize = 4;

/// The flat sums over the windows at `offsets` with their weight `words` (see the AVX-512
/// kernel): `acc[i] = Σ_(offset, word) word · x[offset + sx · i .. + 4]`.
///
/// # Safety
/// The CPU runs `isa` (one of the AVX2 ones); `acc.len()` is a multiple of 8 and for every
/// offset `offset + sx · (acc.len() − 8) + 4 · sx + 16 ≤ x.len()`.
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
            Tier::AvxVnni => with_vnni(x, offsets, words, sx, acc),
            _ => widened(x, offsets, words, sx, acc),
        }
    }
}

#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn with_vnni(x: &[u8], offsets: &[usize], words: &[i32], sx: usize, acc: &mut [i32]) {
    // SAFETY: as for `accumulate`, AVX-VNNI enabled.
    unsafe { sums::<Vnni>(x, offsets, words, sx, acc) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn widened(x: &[u8], offsets: &[usize], words: &[i32], sx: usize, acc: &mut [i32]) {
    // SAFETY: as for `accumulate`, AVX2 enabled.
    unsafe { sums::<Widened>(x, offsets, words, sx, acc) }
}

/// The words of outputs `i..i + 8` of the window at `at` (= `offset + sx · i`): the low lane
/// loads 16 bytes from `at` for outputs `i..i + 4`, the high lane from `at + 4 · sx` for the
/// next four, and the shuffle puts byte `sx · j + k` of a lane at `4j + k`.
#[inline(always)]
unsafe fn window<D: Dot>(at: *const u8, sx: usize, shuffle: __m256i) -> D::X {
    // SAFETY: the caller keeps both 16-byte loads inside `x`.
    unsafe {
        let low = _mm_loadu_si128(at.cast());
        let high = _mm_loadu_si128(at.add(4 * sx).cast());
        let bytes = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(low), high);
        D::operand(_mm256_shuffle_epi8(bytes, shuffle))
    }
}

#[inline(always)]
unsafe fn sums<D: Dot>(x: &[u8], offsets: &[usize], words: &[i32], sx: usize, acc: &mut [i32]) {
    let pattern: [u8; 16] = std::array::from_fn(|b| (sx * (b / 4) + b % 4) as u8);
    // SAFETY: 16 bytes read from a 16-byte array.
    let shuffle = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(pattern.as_ptr().cast())) };
    let run = Windows { x: x.as_ptr(), offsets, words, sx, shuffle, out: acc.as_mut_ptr() };
    let whole = acc.len() / (BLOCK * LANES) * (BLOCK * LANES);
    // SAFETY: the vectors from each start lie inside `acc` (whole blocks, then single vectors
    // of a length that is a multiple of 8); the windows inside `x` by the caller's contract.
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
    shuffle: __m256i,
    out: *mut i32,
}

impl Windows<'_> {
    /// Flat outputs `start..start + 8 · V`: `V` independent chains, in registers (a chain count
    /// known only at run time kept them in memory, copied at every step).
    #[inline(always)]
    unsafe fn vectors<D: Dot, const V: usize>(&self, start: usize) {
        let (sx, step) = (self.sx, self.sx * LANES);
        let mut chains = [_mm256_setzero_si256(); V];
        for (&offset, &word) in self.offsets.iter().zip(self.words) {
            // SAFETY: the kernel runs with the features `D` needs; the windows lie inside `x`
            // (the caller's contract).
            unsafe {
                let w = D::weight(word);
                let at = self.x.add(offset + sx * start);
                for (v, chain) in chains.iter_mut().enumerate() {
                    *chain = D::dot(*chain, window::<D>(at.add(v * step), sx, self.shuffle), w);
                }
            }
        }
        for (v, chain) in chains.iter().enumerate() {
            // SAFETY: inside `acc` (the caller's contract).
            unsafe { _mm256_storeu_si256(self.out.add(start + v * LANES).cast(), *chain) };
        }
    }
}

/// [`BytePlane::fill`](crate::kernels::BytePlane::fill) from codes: each padded row in 32-byte
/// pieces, loaded from the input row (only up to the plane's end) and blended with the zero point
/// outside its columns; only a piece that would start before the plane (the left padding of its
/// first row) is gathered byte by byte.
///
/// # Safety
/// AVX2 must be available; `codes` holds the `height × width` plane and `dst` is
/// `layout.buffer_len()` bytes.
#[target_feature(enable = "avx2")]
pub unsafe fn fill(
    layout: &crate::kernels::BytePlane,
    codes: &[u8],
    zero_point: u8,
    dst: &mut [u8],
) {
    let g = &layout.geometry;
    let (row_bytes, rows, sy) = (layout.row_bytes, layout.rows, layout.stride[0]);
    let (left, end) = (g.pad[1], (g.pad[1] + g.width).min(row_bytes));
    let zero_points = _mm256_set1_epi8(zero_point as i8);
    let index = _mm256_setr_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31,
    );
    // Row qy of phase py holds padded row qy · sy + py.
    let phase_rows = (0..sy).flat_map(|py| (0..rows).map(move |qy| qy * sy + py));
    for (r, padded) in phase_rows.enumerate() {
        let input_row = padded.checked_sub(g.pad[0]).filter(|&y| y < g.height);
        let row = r * row_bytes;
        for start in (0..row_bytes).step_by(32) {
            let piece = match input_row {
                // Padded columns [left, end) hold input columns [0, width).
                Some(y) if start < end && start + 32 > left => {
                    let from = (y * g.width + start) as isize - left as isize;
                    let loaded = match usize::try_from(from) {
                        // SAFETY: the bytes loaded lie inside `codes` (at most up to its end);
                        // lanes past it read 0, and their columns lie past the row's end.
                        Ok(from) => unsafe {
                            load_prefix(codes.as_ptr().add(from), (codes.len() - from).min(32))
                        },
                        // Before the plane: the left padding of its first row.
                        Err(_) => {
                            let mut bytes = [zero_point; 32];
                            for (c, b) in bytes.iter_mut().enumerate().take(end - start) {
                                if let Some(column) = (start + c).checked_sub(left) {
                                    *b = codes[y * g.width + column];
                                }
                            }
                            // SAFETY: 32 bytes read from a 32-byte array.
                            unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
                        }
                    };
                    // Lanes whose padded column is in [left, end) keep the loaded code.
                    let first = left.saturating_sub(start).min(32) as i8;
                    let last = end.saturating_sub(start).min(32) as i8;
                    let below = _mm256_cmpgt_epi8(_mm256_set1_epi8(first), index);
                    let beyond = _mm256_cmpgt_epi8(index, _mm256_set1_epi8(last - 1));
                    let outside = _mm256_or_si256(below, beyond);
                    _mm256_blendv_epi8(loaded, zero_points, outside)
                }
                _ => zero_points,
            };
            let len = (row_bytes - start).min(32);
            // SAFETY: the row's bytes from `start` lie inside `dst` (rows of `row_bytes` each).
            unsafe {
                let at = dst.as_mut_ptr().add(row + start);
                if len == 32 {
                    _mm256_storeu_si256(at.cast(), piece);
                } else {
                    store_prefix(at, piece, len);
                }
            }
        }
    }
    let slack = layout.planes_len();
    for start in (slack..dst.len()).step_by(32) {
        let len = (dst.len() - start).min(32);
        // SAFETY: `len` bytes from `start` lie inside `dst`.
        unsafe {
            let at = dst.as_mut_ptr().add(start);
            if len == 32 {
                _mm256_storeu_si256(at.cast(), zero_points);
            } else {
                store_prefix(at, zero_points, len);
            }
        }
    }
}

/// The `len` (≤ 32) bytes at `p` in the low lanes of a vector, the others 0, reading nothing
/// past `p + len` (a plane's last row ends where its allocation may).
///
/// # Safety
/// AVX2 must be available and `len` bytes readable at `p`.
#[inline(always)]
unsafe fn load_prefix(p: *const u8, len: usize) -> __m256i {
    // SAFETY: every read below ends at or before `p + len`.
    unsafe {
        if len >= 32 {
            return _mm256_loadu_si256(p.cast());
        }
        let (low, high) = if len >= 16 {
            (_mm_loadu_si128(p.cast()), load_prefix16(p.add(16), len - 16))
        } else {
            (load_prefix16(p, len), _mm_setzero_si128())
        };
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(low), high)
    }
}

/// [`load_prefix`] of fewer than 16 bytes, into 128 bits.
#[inline(always)]
unsafe fn load_prefix16(p: *const u8, len: usize) -> __m128i {
    // SAFETY: every read below ends at or before `p + len`.
    unsafe {
        let (mut words, mut at) = ([0u64; 2], 0);
        if len >= 8 {
            words[0] = p.cast::<u64>().read_unaligned();
            at = 8;
        }
        let word = &mut words[at / 8];
        let mut shift = 0;
        if len - at >= 4 {
            *word = u64::from(p.add(at).cast::<u32>().read_unaligned());
            (at, shift) = (at + 4, 32);
        }
        if len - at >= 2 {
            *word |= u64::from(p.add(at).cast::<u16>().read_unaligned()) << shift;
            (at, shift) = (at + 2, shift + 16);
        }
        if len > at {
            *word |= u64::from(p.add(at).read()) << shift;
        }
        _mm_set_epi64x(words[1] as i64, words[0] as i64)
    }
}
