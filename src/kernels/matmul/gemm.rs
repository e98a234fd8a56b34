//! u8 × i8 → i32 matrix product with weights packed once per weight version.
//!
//! `C[m][o] = Σ_k X[m][k] · W[o][k]`, X the activations (u8, one row per output pixel or batch
//! row), W the weights (i8, one row per output channel). Weights are packed in blocks of
//! [`BLOCK_N`] channels × 4 consecutive k, the operand shape of `vpdpbusd`.

/// Output channels per packed block (one 512-bit vector of i32).
pub const BLOCK_N: usize = 16;
/// Rows of X processed together by the SIMD kernel (accumulators kept in registers).
#[cfg(target_arch = "x86_64")]
const BLOCK_M: usize = 8;

/// Weights of one layer, packed for the kernels, with what the epilogue needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeights {
    /// Output channels.
    pub n: usize,
    /// Reduction length (before padding).
    pub k: usize,
    /// `k` rounded up to a multiple of 4; X rows must be at least this long.
    pub k_padded: usize,
    /// `Σ_k W[o][k]` per output channel, for zero-point correction.
    pub column_sums: Vec<i32>,
    data: Vec<i8>,
}

impl PackedWeights {
    /// Packs row-major `weights` (`n` rows of `k`).
    pub fn pack(weights: &[i8], n: usize, k: usize) -> Self {
        assert_eq!(weights.len(), n * k, "weights must be n × k");
        let k_padded = k.div_ceil(4) * 4;
        let block_len = BLOCK_N * k_padded;
        let mut data = vec![0i8; n.div_ceil(BLOCK_N) * block_len];
        // Row by row into its block (which stays in L1), each group of 4 codes to its lane of
        // a 64-byte group: few bounds checks and no index arithmetic per code (live updates
        // re-pack whole layers).
        if k > 0 {
            for (o, row) in weights.chunks_exact(k).enumerate() {
                let block = &mut data[(o / BLOCK_N) * block_len..][..block_len];
                let lane = (o % BLOCK_N) * 4;
                let mut groups = block.chunks_exact_mut(BLOCK_N * 4);
                // Whole groups as fixed 4-byte copies (a variable length would call memcpy).
                let fours = row.chunks_exact(4);
                let rest = fours.remainder();
                // `fours` first: `zip` stops on it without taking another group.
                for (four, group) in fours.zip(groups.by_ref()) {
                    group[lane..lane + 4].copy_from_slice(four);
                }
                if let Some(group) = groups.next().filter(|_| !rest.is_empty()) {
                    group[lane..lane + rest.len()].copy_from_slice(rest);
                }
            }
        }
        let column_sums = (0..n)
            .map(|o| weights[o * k..(o + 1) * k].iter().map(|&w| i32::from(w)).sum())
            .collect();
        PackedWeights { n, k, k_padded, column_sums, data }
    }

    /// Width of an accumulator row: `n` rounded up to whole blocks.
    pub fn n_padded(&self) -> usize {
        self.n.div_ceil(BLOCK_N) * BLOCK_N
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.data.len() + self.column_sums.len() * 4
    }

    fn block(&self, b: usize) -> &[i8] {
        let len = BLOCK_N * self.k_padded;
        &self.data[b * len..(b + 1) * len]
    }
}

/// Straightforward triple loop: the reference the SIMD path is tested against.
/// `x` is `m` rows of `k` (stride `x_stride`), `w` is `n` rows of `k`; returns `m × n`.
#[cfg(test)]
pub fn gemm_u8i8_reference(
    x: &[u8],
    x_stride: usize,
    m: usize,
    w: &[i8],
    n: usize,
    k: usize,
) -> Vec<i32> {
    let mut out = vec![0i32; m * n];
    for r in 0..m {
        for o in 0..n {
            out[r * n + o] =
                (0..k).map(|kk| i32::from(x[r * x_stride + kk]) * i32::from(w[o * k + kk])).sum();
        }
    }
    out
}

/// `out[r][o]` (row stride `weights.n_padded()`) = Σ_k x[r][k] · W[o][k] for `m` rows of `x`
/// (stride `x_stride` ≥ `k_padded`; bytes past `k` may hold anything).
pub fn gemm_u8i8(
    isa: crate::kernels::Isa,
    x: &[u8],
    x_stride: usize,
    m: usize,
    weights: &PackedWeights,
    out: &mut [i32],
) {
    let n_padded = weights.n_padded();
    assert!(out.len() >= m * n_padded, "out too short");
    for b in 0..n_padded / BLOCK_N {
        gemm_u8i8_block(isa, x, x_stride, m, weights, b, &mut out[b * BLOCK_N..], n_padded);
    }
}

/// One block of [`BLOCK_N`] output channels (`block`): `out[r][0..16]` at row stride
/// `out_stride` = Σ_k x[r][k] · W[block·16 + lane][k].
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8_block(
    isa: crate::kernels::Isa,
    x: &[u8],
    x_stride: usize,
    m: usize,
    weights: &PackedWeights,
    block: usize,
    out: &mut [i32],
    out_stride: usize,
) {
    assert!(x_stride >= weights.k_padded, "x rows shorter than k_padded");
    assert!(m == 0 || x.len() >= (m - 1) * x_stride + weights.k_padded, "x too short");
    assert!(m == 0 || out.len() >= (m - 1) * out_stride + BLOCK_N, "out too short");
    assert!(out_stride >= BLOCK_N && block < weights.n_padded() / BLOCK_N, "bad block");
    let w = weights.block(block);
    let k4s = weights.k_padded / 4;
    match isa.tier() {
        #[cfg(target_arch = "x86_64")]
        crate::kernels::Tier::Avx512Vnni => {
            let mut r = 0;
            while r < m {
                let rows = BLOCK_M.min(m - r);
                // SAFETY: Isa of tier Avx512Vnni is only chosen when the CPU has these features; the
                // asserts above bound every row and column the kernel touches.
                unsafe {
                    avx512::block(
                        w,
                        k4s,
                        &x[r * x_stride..],
                        x_stride,
                        rows,
                        &mut out[r * out_stride..],
                        out_stride,
                    )
                };
                r += rows;
            }
        }
        #[cfg(target_arch = "aarch64")]
        tier @ (crate::kernels::Tier::NeonI8mm
        | crate::kernels::Tier::NeonDot
        | crate::kernels::Tier::Neon) => {
            let mut column_sums = [0i32; BLOCK_N];
            let channels = &weights.column_sums[block * BLOCK_N..];
            for (sum, &channel) in column_sums.iter_mut().zip(channels) {
                *sum = channel;
            }
            // SAFETY: Isa of a NEON tier is only chosen when the CPU has its features; the
            // asserts above bound every row and column the kernel touches.
            unsafe {
                super::gemm_neon::block(tier, w, &column_sums, k4s, x, x_stride, m, out, out_stride)
            };
        }
        _ => crate::kernels::quant::multiversion!(isa, {
            scalar_block(w, k4s, x, x_stride, m, out, out_stride)
        }),
    }
}

/// Portable version of one block: all rows × BLOCK_N channels (inlined into each
/// `multiversion!` instance).
#[inline(always)]
fn scalar_block(
    w: &[i8],
    k4s: usize,
    x: &[u8],
    x_stride: usize,
    m: usize,
    out: &mut [i32],
    out_stride: usize,
) {
    for r in 0..m {
        let mut acc = [0i32; BLOCK_N];
        let row = &x[r * x_stride..];
        for kk in 0..k4s {
            let wk = &w[kk * BLOCK_N * 4..(kk + 1) * BLOCK_N * 4];
            for (lane, a) in acc.iter_mut().enumerate() {
                for j in 0..4 {
                    *a += i32::from(row[kk * 4 + j]) * i32::from(wk[lane * 4 + j]);
                }
            }
        }
        out[r * out_stride..r * out_stride + BLOCK_N].copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::BLOCK_N;

    /// One block of up to 8 rows × 16 channels.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VNNI; `w` holds `k4s` groups of 64 bytes, each of the
    /// `rows` rows of `x` (stride `x_stride`) has `4 * k4s` bytes, and `out` has `rows` rows of
    /// at least 16 i32 at stride `out_stride`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn block(
        w: &[i8],
        k4s: usize,
        x: &[u8],
        x_stride: usize,
        rows: usize,
        out: &mut [i32],
        out_stride: usize,
    ) {
        // SAFETY: the caller's contract, for the `rows` rows each arm handles.
        unsafe {
            match rows {
                8 => rows_n::<8>(w, k4s, x, x_stride, out, out_stride),
                7 => rows_n::<7>(w, k4s, x, x_stride, out, out_stride),
                6 => rows_n::<6>(w, k4s, x, x_stride, out, out_stride),
                5 => rows_n::<5>(w, k4s, x, x_stride, out, out_stride),
                4 => rows_n::<4>(w, k4s, x, x_stride, out, out_stride),
                3 => rows_n::<3>(w, k4s, x, x_stride, out, out_stride),
                2 => rows_n::<2>(w, k4s, x, x_stride, out, out_stride),
                _ => rows_n::<1>(w, k4s, x, x_stride, out, out_stride),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn rows_n<const R: usize>(
        w: &[i8],
        k4s: usize,
        x: &[u8],
        x_stride: usize,
        out: &mut [i32],
        out_stride: usize,
    ) {
        debug_assert!(w.len() >= k4s * 64 && out.len() >= (R - 1) * out_stride + BLOCK_N);
        let mut acc = [_mm512_setzero_si512(); R];
        let wp = w.as_ptr();
        let xp = x.as_ptr();
        for kk in 0..k4s {
            // SAFETY: bounds are the caller's contract (see `block`).
            unsafe {
                let wv = _mm512_loadu_si512(wp.add(kk * 64).cast());
                for (r, a) in acc.iter_mut().enumerate() {
                    let four = xp.add(r * x_stride + kk * 4).cast::<i32>().read_unaligned();
                    *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(four), wv);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: `out` holds R rows of 16 i32 at `out_stride` (caller's contract).
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(r * out_stride).cast(), *a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use proptest::prelude::*;

    fn check(isa: Isa, m: usize, n: usize, k: usize, seed: u64) {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let x_stride = k.div_ceil(4) * 4 + 4;
        let x: Vec<u8> = (0..m * x_stride).map(|_| next() as u8).collect();
        let w: Vec<i8> = (0..n * k).map(|_| next() as i8).collect();
        let packed = PackedWeights::pack(&w, n, k);
        let mut out = vec![0i32; m * packed.n_padded()];
        gemm_u8i8(isa, &x, x_stride, m, &packed, &mut out);
        let want = gemm_u8i8_reference(&x, x_stride, m, &w, n, k);
        for r in 0..m {
            assert_eq!(
                &out[r * packed.n_padded()..r * packed.n_padded() + n],
                &want[r * n..(r + 1) * n],
                "row {r}"
            );
        }
    }

    #[test]
    fn every_isa_holds_the_extremes() {
        // 255 × -128 summed over a long k: the accumulator range the kernels must hold exactly.
        let (m, n, k) = (3, 5, 1000);
        let x = vec![255u8; m * k];
        let w = vec![-128i8; n * k];
        let packed = PackedWeights::pack(&w, n, k);
        assert_eq!(packed.column_sums, vec![-128 * 1000; n]);
        for isa in Isa::reference_first() {
            let mut out = vec![0; m * packed.n_padded()];
            gemm_u8i8(isa, &x, k, m, &packed, &mut out);
            for r in 0..m {
                assert_eq!(out[r * packed.n_padded()..][..n], [255 * -128 * 1000; 5], "{isa:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_isa_matches_the_reference(m in 1usize..20, n in 1usize..40, k in 1usize..70, seed in any::<u64>()) {
            for isa in Isa::reference_first() {
                check(isa, m, n, k, seed);
            }
        }
    }
}
