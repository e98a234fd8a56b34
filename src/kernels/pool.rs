//! 2-D max pooling of one channel plane (ONNX `MaxPool`: padding never wins, NCHW).
//!
//! Each output row takes the running maximum of its input rows into one padded row, then the
//! horizontal windows over that row. Stride 2 (ResNet's stem pool) splits the row into its
//! even and odd columns first so the horizontal pass reads contiguous runs and vectorises;
//! tract's generic pool walks every window element by element.

use super::quant::multiversion;
use super::{ConvGeometry, Isa};

/// What a max pool compares: floats, or u8 codes of one quantization (quantizing is monotonic,
/// so the max of codes is the code of the max).
pub trait PoolValue: Copy + PartialOrd + Send + Sync {
    /// Below every value a window can hold: what padding holds, so it never wins.
    const LOWEST: Self;
}

impl PoolValue for f32 {
    const LOWEST: f32 = f32::NEG_INFINITY;
}

impl PoolValue for u8 {
    const LOWEST: u8 = 0;
}

/// Length of the padded row: every column a window reads, and the whole input row.
fn padded_row_len(g: &ConvGeometry) -> usize {
    let [sx, dx] = [g.stride[1].max(1), g.dilation[1].max(1)];
    let span = (g.out[1].saturating_sub(1)) * sx + (g.kernel[1] - 1) * dx + 1;
    span.max(g.pad[1] + g.width)
}

/// Length of the row buffer [`max_pool_plane`] needs for `g`: the padded row, then (stride 2)
/// its even and odd halves.
pub fn max_pool_row_len(g: &ConvGeometry) -> usize {
    let row = padded_row_len(g);
    row + 2 * row.div_ceil(2)
}

/// `out[oy][ox] = max` of the plane's values under window `(oy, ox)` of `g` (one channel:
/// `g.channels` is ignored); `row` holds [`max_pool_row_len`] values of scratch. A window that
/// covers only padding gives [`PoolValue::LOWEST`] (−∞, or code 0).
pub fn max_pool_plane<T: PoolValue>(
    isa: Isa,
    g: &ConvGeometry,
    plane: &[T],
    row: &mut [T],
    out: &mut [T],
) {
    let [out_h, out_w] = g.out;
    let [sy, sx] = [g.stride[0].max(1), g.stride[1].max(1)];
    let [dy, dx] = [g.dilation[0].max(1), g.dilation[1].max(1)];
    let row_len = padded_row_len(g);
    assert!(
        plane.len() >= g.height * g.width
            && out.len() >= out_h * out_w
            && row.len() >= max_pool_row_len(g)
    );
    let (padded, halves) = row.split_at_mut(row_len);
    let (even, odd) = halves.split_at_mut(row_len.div_ceil(2));
    multiversion!(isa, {
        for (oy, line) in out[..out_h * out_w].chunks_exact_mut(out_w).enumerate() {
            padded.fill(T::LOWEST);
            let inside = &mut padded[g.pad[1]..g.pad[1] + g.width];
            for ky in 0..g.kernel[0] {
                let Some(iy) = (oy * sy + ky * dy).checked_sub(g.pad[0]) else { continue };
                if iy >= g.height {
                    continue;
                }
                for (m, &v) in inside.iter_mut().zip(&plane[iy * g.width..(iy + 1) * g.width]) {
                    *m = if v > *m { v } else { *m };
                }
            }
            if sx == 2 && dx == 1 {
                // Window ox covers padded columns 2·ox + kx: even[ox + kx/2] or odd[ox + kx/2],
                // all inside the padded row, so every half element read is written below.
                // Whole pairs zipped (this form vectorises), then a last unpaired column.
                let pairs = padded.chunks_exact(2);
                let last = pairs.remainder().first().copied();
                let whole = row_len / 2;
                for ((e, o), pair) in even[..whole].iter_mut().zip(&mut odd[..whole]).zip(pairs) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if let Some(v) = last {
                    even[whole] = v;
                }
                line.fill(T::LOWEST);
                for kx in 0..g.kernel[1] {
                    let source = if kx % 2 == 0 { &even[kx / 2..] } else { &odd[kx / 2..] };
                    for (o, &v) in line.iter_mut().zip(source) {
                        *o = if v > *o { v } else { *o };
                    }
                }
            } else {
                for (ox, o) in line.iter_mut().enumerate() {
                    let mut best = T::LOWEST;
                    for kx in 0..g.kernel[1] {
                        let v = padded[ox * sx + kx * dx];
                        best = if v > best { v } else { best };
                    }
                    *o = best;
                }
            }
        }
    })
}

/// Most kernel columns [`CodePool`] takes.
pub(super) const MAX_POOL_COLUMNS: usize = 4;

/// Max pooling of u8 codes with byte permutations (AVX-512 VBMI, NEON `tbl`): each output row is
/// the byte-wise maximum of its input rows (two 64-byte vectors hold a row up to 127 codes wide),
/// then of one permutation of them per kernel column, which picks the window's column for every
/// output at once. ResNet's stem pool (3×3, stride 2, 112 → 56) is a few instructions per row
/// instead of a pass per window column over a padded copy. Code 0 is the lowest, so padding reads
/// 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePool {
    pub(super) geometry: ConvGeometry,
    /// Per kernel column, the byte of the row maxima each output reads (127, a zero byte past
    /// the row, for padding).
    pub(super) index: [[u8; 64]; MAX_POOL_COLUMNS],
}

impl CodePool {
    /// The permutations for `g` when this CPU has VBMI or NEON and the geometry fits: no dilation,
    /// rows up to 127 codes, up to 64 outputs per row and up to four kernel columns.
    pub fn new(isa: Isa, g: &ConvGeometry) -> Option<Self> {
        let fits = (super::depthwise::bytes::has_byte_permutes(isa) || isa.is_neon())
            && g.dilation == [1, 1]
            && (1..=MAX_POOL_COLUMNS).contains(&g.kernel[1])
            && g.kernel[0] >= 1
            && (1..128).contains(&g.width)
            && (1..=64).contains(&g.out[1]);
        if !fits {
            return None;
        }
        let mut index = [[127u8; 64]; MAX_POOL_COLUMNS];
        for (kx, columns) in index.iter_mut().enumerate().take(g.kernel[1]) {
            for (ox, byte) in columns.iter_mut().enumerate().take(g.out[1]) {
                let column = (ox * g.stride[1] + kx).checked_sub(g.pad[1]);
                if let Some(c) = column.filter(|&c| c < g.width) {
                    *byte = c as u8;
                }
            }
        }
        Some(CodePool { geometry: *g, index })
    }

    /// Pools one plane of codes into `out`.
    pub fn run(&self, plane: &[u8], out: &mut [u8]) {
        let g = &self.geometry;
        assert!(
            plane.len() >= g.height * g.width && out.len() >= g.out[0] * g.out[1],
            "CodePool::run: plane or output too short"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` checked the CPU has the features; lengths asserted above.
        unsafe {
            pool_codes(self, plane, out)
        }
        #[cfg(target_arch = "aarch64")]
        super::pool_neon::pool_codes(self, plane, out);
    }
}

/// [`CodePool::run`].
///
/// # Safety
/// AVX-512F/BW/VBMI must be available; `plane` and `out` hold the pool's planes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn pool_codes(pool: &CodePool, plane: &[u8], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let g = &pool.geometry;
    let [kh, kw] = g.kernel;
    let width = g.width;
    let mask = |bytes: usize| -> u64 {
        if bytes >= 64 {
            u64::MAX
        } else {
            (1u64 << bytes) - 1
        }
    };
    let (low_mask, high_mask) = (mask(width), mask(width.saturating_sub(64)));
    let out_mask = mask(g.out[1]);
    // SAFETY: each index row is 64 bytes.
    let index: [__m512i; MAX_POOL_COLUMNS] =
        std::array::from_fn(|kx| unsafe { _mm512_loadu_si512(pool.index[kx].as_ptr().cast()) });
    for oy in 0..g.out[0] {
        let (mut low, mut high) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for ky in 0..kh {
            let Some(iy) = (oy * g.stride[0] + ky).checked_sub(g.pad[0]) else { continue };
            if iy >= g.height {
                continue;
            }
            // SAFETY: the masks read only the row's `width` codes.
            unsafe {
                let row = plane.as_ptr().add(iy * width);
                low = _mm512_max_epu8(low, _mm512_maskz_loadu_epi8(low_mask, row.cast()));
                let rest = row.wrapping_add(64);
                high = _mm512_max_epu8(high, _mm512_maskz_loadu_epi8(high_mask, rest.cast()));
            }
        }
        let mut best = _mm512_setzero_si512();
        for columns in &index[..kw] {
            best = _mm512_max_epu8(best, _mm512_permutex2var_epi8(low, *columns, high));
        }
        // SAFETY: the mask writes only the row's outputs.
        unsafe {
            _mm512_mask_storeu_epi8(out.as_mut_ptr().add(oy * g.out[1]).cast(), out_mask, best)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(g: &ConvGeometry, plane: &[f32]) -> Vec<f32> {
        let pixels = (0..g.out[0]).flat_map(|oy| (0..g.out[1]).map(move |ox| (oy, ox)));
        let window_max =
            |(oy, ox)| g.window(oy, ox).fold(f32::NEG_INFINITY, |m, (_, i)| m.max(plane[i]));
        pixels.map(window_max).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Every ISA gives the window maxima exactly, for strides 1–3 (the stride-2 even/odd
        /// path included), dilation, and padding that cuts the last window short.
        #[test]
        fn equals_the_window_maxima(
            h in 1usize..20, w in 1usize..20, kh in 1usize..4, kw in 1usize..5,
            sy in 1usize..4, sx in 1usize..4, d in 1usize..3,
            pad_top in 0usize..2, pad_left in 0usize..2, extra in 0usize..2, seed in any::<u64>(),
        ) {
            let span = [(kh - 1) * d + 1, (kw - 1) * d + 1];
            let padded = [h + pad_top + extra, w + pad_left + extra];
            prop_assume!(padded[0] >= span[0] && padded[1] >= span[1]);
            prop_assume!(pad_top < span[0] && pad_left < span[1]);
            let out = [(padded[0] - span[0]) / sy + 1, (padded[1] - span[1]) / sx + 1];
            let g = ConvGeometry {
                channels: 1, height: h, width: w, kernel: [kh, kw], stride: [sy, sx],
                dilation: [d, d], pad: [pad_top, pad_left], out,
            };
            let mut state = seed;
            let plane: Vec<f32> = (0..h * w).map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 40) as f32 / 65536.0 - 128.0
            }).collect();
            let want = naive(&g, &plane);
            // The same planes as codes (a monotonic map): the codes of the same maxima.
            let code = |v: f32| (v + 128.0).clamp(0.0, 255.0) as u8;
            let codes: Vec<u8> = plane.iter().map(|&v| code(v)).collect();
            let padding_only = |v: f32| v == f32::NEG_INFINITY;
            let want_codes: Vec<u8> =
                want.iter().map(|&v| if padding_only(v) { 0 } else { code(v) }).collect();
            for isa in Isa::reference_first() {
                let mut row = vec![f32::NAN; max_pool_row_len(&g)];
                let mut got = vec![f32::NAN; out[0] * out[1]];
                max_pool_plane(isa, &g, &plane, &mut row, &mut got);
                prop_assert_eq!(&got, &want, "{:?} {:?}", isa, g);
                let mut row = vec![77u8; max_pool_row_len(&g)];
                let mut got = vec![77u8; out[0] * out[1]];
                max_pool_plane(isa, &g, &codes, &mut row, &mut got);
                prop_assert_eq!(&got, &want_codes, "{:?} {:?}", isa, g);
            }
            for pool in Isa::supported().filter_map(|isa| CodePool::new(isa, &g)) {
                let mut got = vec![77u8; out[0] * out[1]];
                pool.run(&codes, &mut got);
                prop_assert_eq!(&got, &want_codes, "permutations {:?}", g);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The permutation pool equals the naive window maxima of codes on rows up to 127
        /// codes wide (two vectors) and up to 64 outputs.
        #[test]
        fn code_pool_equals_the_window_maxima(
            h in 1usize..12, w in 1usize..128, kh in 1usize..4, kw in 1usize..5,
            sy in 1usize..3, sx in 1usize..3, pad_top in 0usize..2, pad_left in 0usize..2,
            seed in any::<u64>(),
        ) {
            prop_assume!(pad_top < kh && pad_left < kw && h + pad_top >= kh && w + pad_left >= kw);
            let out = [(h + pad_top - kh) / sy + 1, (w + pad_left - kw) / sx + 1];
            prop_assume!(out[1] <= 64);
            let g = ConvGeometry {
                channels: 1, height: h, width: w, kernel: [kh, kw], stride: [sy, sx],
                dilation: [1, 1], pad: [pad_top, pad_left], out,
            };
            let pools: Vec<CodePool> =
                Isa::supported().filter_map(|isa| CodePool::new(isa, &g)).collect();
            let mut state = seed;
            let codes: Vec<u8> = (0..h * w).map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            }).collect();
            let values: Vec<f32> = codes.iter().map(|&c| f32::from(c)).collect();
            let want: Vec<u8> = naive(&g, &values).iter().map(|&v| if v < 0.0 { 0 } else { v as u8 }).collect();
            for pool in &pools {
                let mut got = vec![77u8; out[0] * out[1]];
                pool.run(&codes, &mut got);
                prop_assert_eq!(&got, &want, "{:?}", g);
            }
        }
    }
}
