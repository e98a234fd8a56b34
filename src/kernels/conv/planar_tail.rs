//! The last `pixels mod 16` pixels of a planar convolution, as dot products.
//!
//! [`conv_planar`](crate::kernels::conv_planar) keeps 16 pixels of one channel per vector, so a
//! plane of 49 pixels (7×7) takes four vectors, the last with one pixel in it, and ResNet18's last
//! stage and the mobile nets' 7×7 layers would multiply masked-off lanes a quarter of the time.
//! Here each of the few remaining pixels is a column of the operand, transposed once into a
//! contiguous run of `k4` words, and each output channel's weight row (contiguous already) is
//! multiplied with it 16 words at a time, then summed across lanes.

use std::ops::Range;

use ndarray::{ArrayView2, ArrayViewMut2, Axis};

use super::planar::{conv_planar, word_dot, PlanarWeights};
use crate::kernels::store::codes::SimdElement;
use crate::kernels::{Epilogue, Isa, Tier};

/// Most pixels the dot-product path takes (fewer than one vector of them).
pub const MAX_TAIL_PIXELS: usize = 15;

/// Pixels of one channel per vector in the planar kernel.
pub const VECTOR_PIXELS: usize = 16;

/// Shortest weight rows whose last pixels run as dot products: below 64 words, summing lanes
/// and storing each channel's few values cost more than the masked-off lanes they save (960
/// channels reading 160 took 10 % longer).
const MIN_TAIL_WORDS: usize = 64;

/// How many of the last of `pixels` columns [`conv_planar_tail`] should compute for weight rows
/// of `k4` words (the rest in whole vectors by [`conv_planar`]): `pixels
/// mod 16`, or 0 when the vector kernel is as quick.
pub fn tail_pixels(pixels: usize, k4: usize) -> usize {
    if k4 < MIN_TAIL_WORDS {
        return 0;
    }
    pixels % VECTOR_PIXELS
}

/// Words of scratch [`conv_planar_with_tail`] needs for `pixels` columns and weight rows of
/// `k4` words: the tail's columns, transposed.
pub fn tail_scratch_len(pixels: usize, k4: usize) -> usize {
    tail_pixels(pixels, k4) * k4
}

/// The product [`conv_planar`] computes over every column of `x` and `out`: whole vectors of
/// 16 pixels by it, the last [`tail_pixels`] by [`conv_planar_tail`], their operand columns
/// transposed into `scratch` (at least [`tail_scratch_len`] words), on AVX-512; on other
/// instruction sets all of it by [`conv_planar`]. How the runtime runs a planar convolution.
#[allow(clippy::too_many_arguments)]
pub fn conv_planar_with_tail<E: SimdElement>(
    isa: Isa,
    x: ArrayView2<'_, u32>,
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    out: ArrayViewMut2<'_, E>,
    scratch: &mut [u32],
) {
    // 16-pixel vectors only: the 256-bit kernels' 8-lane tiles waste few lanes, and their tail
    // as dot products took a fifth of ResNet18's time with AVX-VNNI.
    let tail = if isa.tier() == Tier::Avx512Vnni { tail_pixels(x.ncols(), w.k4) } else { 0 };
    if tail == 0 {
        return conv_planar(isa, x, w, range, epilogues, store, out);
    }
    let whole = x.ncols() - tail;
    let (x, x_tail) = x.split_at(Axis(1), whole);
    let columns = &mut scratch[..tail * w.k4];
    for (column, t) in columns.chunks_exact_mut(w.k4).zip(0..) {
        column.iter_mut().zip(x_tail.column(t)).for_each(|(word, &x)| *word = x);
    }
    #[cfg(target_arch = "x86_64")]
    if isa.tier() == Tier::Avx512Vnni && whole > 0 {
        // Each block of channels multiplies the tail right after its last tile, while its
        // weight rows are still in cache (alone, the tail read ResNet18's 2.4 MB layer4 weights
        // from memory once more for one pixel).
        return super::planar::conv_planar_then_tail(x, columns, w, range, epilogues, store, out);
    }
    let (out, out_tail) = out.split_at(Axis(1), whole);
    if whole > 0 {
        conv_planar(isa, x, w, range.clone(), epilogues, store, out);
    }
    tail_dots(isa, columns, w, range, epilogues, store, out_tail);
}

/// `out[o − range.start][t] = finish_o(Σ_k4 Σ_j columns[t][k4].byte(j) · W[o][4·k4 + j])`: the
/// product [`conv_planar`] computes, for up to [`MAX_TAIL_PIXELS`] pixels
/// whose operand columns are the rows of `columns` (`k4` words each).
pub fn conv_planar_tail<E: SimdElement>(
    isa: Isa,
    columns: ArrayView2<'_, u32>,
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    out: ArrayViewMut2<'_, E>,
) {
    assert!(columns.ncols() == w.k4, "conv_planar_tail: columns are not weight rows long");
    let Some(columns) = columns.as_slice() else {
        panic!("conv_planar_tail: columns must be contiguous rows");
    };
    tail_dots(isa, columns, w, range, epilogues, store, out)
}

/// Output channels whose dot products one pass computes together: their weight rows are
/// contiguous, and with one tail pixel (a 7×7 plane) a single accumulator would wait on its own
/// latency at every step.
const CHANNELS_PER_PASS: usize = 8;

/// [`conv_planar_tail`] with the columns as consecutive runs of `k4` words, one per column of
/// `out`.
fn tail_dots<E: SimdElement>(
    isa: Isa,
    columns: &[u32],
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    mut out: ArrayViewMut2<'_, E>,
) {
    let (k4, pixels) = (w.k4, out.ncols());
    assert!(
        pixels <= MAX_TAIL_PIXELS
            && columns.len() == pixels * k4
            && range.end <= w.n
            && epilogues.len() == range.len()
            && out.nrows() == range.len(),
        "conv_planar_tail: columns, weights, epilogues and output disagree"
    );
    let mut planes = out.rows_mut().into_iter().zip(epilogues);
    for first in range.clone().step_by(CHANNELS_PER_PASS) {
        let count = (range.end - first).min(CHANNELS_PER_PASS);
        let rows = &w.words[first * k4..(first + count) * k4];
        let mut sums = [[0i32; MAX_TAIL_PIXELS]; CHANNELS_PER_PASS];
        let sums = &mut sums[..count];
        match isa.tier() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with these features.
            Tier::Avx512Vnni if k4 > 0 => unsafe { avx512::dots(columns, rows, k4, pixels, sums) },
            _ => {
                for (sums, row) in sums.iter_mut().zip(rows.chunks_exact(k4.max(1))) {
                    for (sum, column) in sums.iter_mut().zip(columns.chunks_exact(k4.max(1))) {
                        *sum = column.iter().zip(row).map(|(&x, &w)| word_dot(x, w)).sum();
                    }
                }
            }
        }
        for (sums, (mut dst, e)) in sums.iter().zip(planes.by_ref()) {
            let sums = &sums[..pixels];
            match dst.as_slice_mut() {
                Some(dst) => E::store_row(isa, sums, *e, store, dst),
                None => {
                    // What the plane holds first: a float store may add to it.
                    let mut stored = [E::default(); MAX_TAIL_PIXELS];
                    stored.iter_mut().zip(dst.iter()).for_each(|(s, d)| *s = *d);
                    E::store_row(isa, sums, *e, store, &mut stored[..pixels]);
                    dst.iter_mut().zip(stored).for_each(|(d, s)| *d = s);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::MAX_TAIL_PIXELS;

    /// Accumulators one pass keeps (channels × columns), half the register file.
    const ACCUMULATORS: usize = 16;

    /// `sums[r][t] = dot(columns[t·k4..][..k4], rows[r·k4..][..k4])` for `r < sums.len()` and
    /// `t < pixels`.
    ///
    /// # Safety
    /// AVX-512F/BW/VNNI must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dots(
        columns: &[u32],
        rows: &[i32],
        k4: usize,
        pixels: usize,
        sums: &mut [[i32; MAX_TAIL_PIXELS]],
    ) {
        assert!(k4 > 0 && columns.len() >= pixels * k4 && rows.len() >= sums.len() * k4);
        assert!(pixels <= MAX_TAIL_PIXELS);
        // Channels in blocks of 8, 4, 2, 1; each block's columns in passes of as many as
        // its accumulators allow.
        let mut first_row = 0;
        for block in [8, 4, 2, 1] {
            while sums.len() - first_row >= block {
                let per_pass = (ACCUMULATORS / block).clamp(1, 4);
                let mut t = 0;
                while t < pixels {
                    let c = (pixels - t).min(per_pass);
                    let (x, w) = (&columns[t * k4..], &rows[first_row * k4..]);
                    let out = &mut sums[first_row..first_row + block];
                    macro_rules! by_columns {
                        ($r:literal) => {
                            // SAFETY: `c` columns from `t` and `$r` rows from `first_row` lie
                            // inside `columns` and `rows` (asserted above).
                            unsafe {
                                match c {
                                    4 => pass_of::<$r, 4>(x, w, k4, t, out),
                                    3 => pass_of::<$r, 3>(x, w, k4, t, out),
                                    2 => pass_of::<$r, 2>(x, w, k4, t, out),
                                    _ => pass_of::<$r, 1>(x, w, k4, t, out),
                                }
                            }
                        };
                    }
                    match block {
                        8 => by_columns!(8),
                        4 => by_columns!(4),
                        2 => by_columns!(2),
                        _ => by_columns!(1),
                    }
                    t += c;
                }
                first_row += block;
            }
        }
    }

    /// `R` weight rows from the start of `w` against `C` columns from the start of `x`, each
    /// loaded once per step for all the others; results into `sums[r][t + c]`.
    ///
    /// # Safety
    /// AVX-512F/BW/VNNI must be available; `x` holds `C · k4` words, `w` `R · k4`, `sums` `R`
    /// rows, `t + C ≤ MAX_TAIL_PIXELS`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn pass_of<const R: usize, const C: usize>(
        x: &[u32],
        w: &[i32],
        k4: usize,
        t: usize,
        sums: &mut [[i32; MAX_TAIL_PIXELS]],
    ) {
        debug_assert!(x.len() >= C * k4 && w.len() >= R * k4 && sums.len() >= R);
        let mut acc = [[_mm512_setzero_si512(); C]; R];
        for kk in (0..k4).step_by(16) {
            let lanes = (k4 - kk).min(16);
            let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
            // SAFETY: the mask keeps each load inside its weight row and column.
            unsafe {
                let xs: [__m512i; C] = std::array::from_fn(|c| {
                    _mm512_maskz_loadu_epi32(mask, x.as_ptr().add(c * k4 + kk).cast())
                });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm512_maskz_loadu_epi32(mask, w.as_ptr().add(r * k4 + kk));
                    for (sum, &xv) in acc.iter_mut().zip(&xs) {
                        *sum = _mm512_dpbusd_epi32(*sum, xv, wv);
                    }
                }
            }
        }
        for (row, acc) in sums.iter_mut().zip(acc) {
            for (sum, acc) in row[t..t + C].iter_mut().zip(acc) {
                *sum = _mm512_reduce_add_epi32(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{conv_planar, Activation, ActivationQuant, FloatStore, OutputCodes};
    use ndarray::{s, Array2, Axis};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The tail of a plane as dot products equals the vector kernel's scalar reference
        /// on the same pixels, for exact sums and for codes, on every ISA.
        #[test]
        fn tail_dot_products_match_the_planar_reference(n in 1usize..20, k4 in 1usize..70, pixels in 1usize..16, zp in any::<u8>(), seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 33) as u32 };
            let x = Array2::from_shape_fn((k4, pixels), |_| next());
            let w: Vec<i8> = (0..n * k4 * 4).map(|_| next() as i8).collect();
            let packed = PlanarWeights::pack(&w, n, k4);
            let columns = x.t().as_standard_layout().into_owned();
            let exact = Epilogue { offset: 0, scale: 1.0, bias: 0.0, activation: Activation::Identity };
            let first = n / 3;
            let epilogues: Vec<Epilogue> = (first..n).map(|o| Epilogue {
                offset: i32::from(zp) * packed.column_sums[o],
                scale: 1e-4 * (o + 1) as f32,
                bias: 0.1 * o as f32 - 0.5,
                activation: Activation::Clip(0.0, 6.0),
            }).collect();
            let codes = OutputCodes::from(ActivationQuant { scale: 0.03, zero_point: zp / 2 });
            let mut want = Array2::<f32>::zeros((n, pixels));
            conv_planar(Isa::SCALAR, x.view(), &packed, 0..n, &vec![exact; n], FloatStore::Replace, want.view_mut());
            let mut want_codes = Array2::<u8>::zeros((n - first, pixels));
            conv_planar(Isa::SCALAR, x.view(), &packed, first..n, &epilogues, codes, want_codes.view_mut());
            for isa in Isa::reference_first() {
                let mut sums = Array2::<f32>::zeros((n, pixels));
                conv_planar_tail(isa, columns.view(), &packed, 0..n, &vec![exact; n], FloatStore::Replace, sums.view_mut());
                prop_assert_eq!(&sums, &want, "{:?}", isa);
                // Into a column band of wider planes (rows not contiguous with each other).
                let mut wide = Array2::<u8>::zeros((n - first, pixels + 3));
                let band = wide.slice_mut(s![.., 2..2 + pixels]);
                conv_planar_tail(isa, columns.view(), &packed, first..n, &epilogues, codes, band);
                prop_assert_eq!(wide.slice(s![.., 2..2 + pixels]), want_codes.view(), "{:?}", isa);
                prop_assert!(wide.index_axis(Axis(1), 0).iter().all(|&c| c == 0), "wrote outside the band");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whole vectors and the tail together, as the runtime runs a plane, equal the planar
        /// reference on every column, on either side of the rows long enough for the tail.
        #[test]
        fn planes_with_a_tail_match_the_planar_reference(n in 1usize..12, k4 in 56usize..72, pixels in 1usize..40, seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 33) as u32 };
            let x = Array2::from_shape_fn((k4, pixels), |_| next());
            let w: Vec<i8> = (0..n * k4 * 4).map(|_| next() as i8).collect();
            let packed = PlanarWeights::pack(&w, n, k4);
            let exact = vec![Epilogue { offset: 0, scale: 1.0, bias: 0.0, activation: Activation::Identity }; n];
            let mut want = Array2::<f32>::zeros((n, pixels));
            conv_planar(Isa::SCALAR, x.view(), &packed, 0..n, &exact, FloatStore::Replace, want.view_mut());
            let mut got = Array2::<f32>::zeros((n, pixels));
            let mut scratch = vec![0u32; tail_scratch_len(pixels, k4)];
            conv_planar_with_tail(Isa::detect(), x.view(), &packed, 0..n, &exact, FloatStore::Replace, got.view_mut(), &mut scratch);
            prop_assert_eq!(got, want);
            // Codes, for channels from the middle of the weights, into a column band of wider
            // planes (how threads split a layer).
            let first = n / 2;
            let epilogues: Vec<Epilogue> = (first..n).map(|o| Epilogue {
                offset: 3 * packed.column_sums[o],
                scale: 2e-4 * (o + 1) as f32,
                bias: 0.05 * o as f32 - 0.2,
                activation: Activation::Clip(0.0, 6.0),
            }).collect();
            let codes = OutputCodes::from(ActivationQuant { scale: 0.02, zero_point: 9 });
            let mut want_codes = Array2::<u8>::zeros((n - first, pixels));
            conv_planar(Isa::SCALAR, x.view(), &packed, first..n, &epilogues, codes, want_codes.view_mut());
            let mut wide = Array2::<u8>::zeros((n - first, pixels + 2));
            let band = wide.slice_mut(s![.., 1..1 + pixels]);
            conv_planar_with_tail(Isa::detect(), x.view(), &packed, first..n, &epilogues, codes, band, &mut scratch);
            prop_assert_eq!(wide.slice(s![.., 1..1 + pixels]), want_codes.view());
            prop_assert!(wide.column(0).iter().chain(wide.column(pixels + 1)).all(|&c| c == 0), "wrote outside the band");
            // Floats added to a residual branch, into a column band (the tail's strided store).
            let residual = Array2::from_shape_fn((n - first, pixels + 2), |(o, p)| (o * 7 + p) as f32 * 0.25 - 3.0);
            let mut want_sums = residual.clone();
            conv_planar(Isa::SCALAR, x.view(), &packed, first..n, &epilogues, FloatStore::AddTo, want_sums.slice_mut(s![.., 1..1 + pixels]));
            let mut wide = residual.clone();
            let band = wide.slice_mut(s![.., 1..1 + pixels]);
            conv_planar_with_tail(Isa::detect(), x.view(), &packed, first..n, &epilogues, FloatStore::AddTo, band, &mut scratch);
            prop_assert_eq!(&wide, &want_sums);
        }
    }
}
