//! Convolution kernels on planar (channel-major) activations, so NCHW tensors go in and out
//! without transposes.
//!
//! Activations are quantized into "C4" layout: channels in groups of four, each group a plane of
//! pixels holding four bytes (one per channel), the operand shape `vpdpbusd` multiplies. The
//! GEMM keeps 16 pixels of one output channel per vector, so results land directly in that
//! channel's output plane.

use std::ops::Range;

use ndarray::{s, ArrayBase, ArrayView2, ArrayViewMut2, Ix2, RawData};

#[cfg(target_arch = "x86_64")]
use super::planar_avx512;
use crate::kernels::quant::ActivationQuant;
use crate::kernels::store::codes::{Element, SimdElement};
use crate::kernels::{Epilogue, Isa, Tier};

/// Weights for [`gemm_planar`]: `n` rows of `k4` words, each word 4 i8 weights for 4
/// consecutive k (the kernel's k order is tap-major, channel groups of 4 within a tap).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanarWeights {
    pub n: usize,
    pub k4: usize,
    /// `Σ_k W[o][k]` per output channel, for zero-point correction.
    pub column_sums: Vec<i32>,
    pub(super) words: Vec<i32>,
}

impl PlanarWeights {
    /// Packs `n` rows of `k4 * 4` i8 weights.
    pub fn pack(weights: &[i8], n: usize, k4: usize) -> Self {
        assert_eq!(weights.len(), n * k4 * 4, "weights must be n × 4·k4");
        let words = weights
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]))
            .collect();
        let column_sums = weights
            .chunks_exact(k4 * 4)
            .map(|row| row.iter().map(|&w| i32::from(w)).sum())
            .collect();
        PlanarWeights { n, k4, column_sums, words }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.words.len() * 4 + self.column_sums.len() * 4
    }
}

/// The first `pixels` values of `channels` planes that start `stride` values apart: whole planes
/// (`stride == pixels`) or a band of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planes {
    pub channels: usize,
    pub pixels: usize,
    pub stride: usize,
}

impl Planes {
    /// `channels` whole planes of `pixels` values.
    pub fn whole(channels: usize, pixels: usize) -> Self {
        Planes { channels, pixels, stride: pixels }
    }

    /// Values of `image` these planes need.
    fn extent(&self) -> usize {
        self.channels.checked_sub(1).map_or(0, |c| c * self.stride + self.pixels)
    }
}

/// Quantizes `planes` of values (floats, or codes of `input` already) into C4 layout
/// (`ceil(channels/4)` planes of `pixels` words); missing channels of the last group hold the
/// zero point.
pub fn quantize_c4<E: Element>(
    isa: Isa,
    image: &[E],
    planes: Planes,
    input: ActivationQuant,
    dst: &mut [u32],
) {
    let Planes { channels, pixels, stride } = planes;
    let groups = channels.div_ceil(4);
    let zero_point = input.zero_point;
    assert!(
        image.len() >= planes.extent() && stride >= pixels && dst.len() >= groups * pixels,
        "quantize_c4: image, planes and words disagree"
    );
    crate::kernels::quant::multiversion!(isa, {
        for g in 0..groups {
            let out = &mut dst[g * pixels..(g + 1) * pixels];
            let plane = |j: usize| {
                let c = 4 * g + j;
                (c < channels).then(|| &image[c * stride..c * stride + pixels])
            };
            let planes = [plane(0), plane(1), plane(2), plane(3)];
            // Four channels present (all groups but a ragged last one): one pass that builds
            // each word from its four bytes, rather than four passes over the words.
            if let [Some(a), Some(b), Some(c), Some(d)] = planes {
                let bytes = a.iter().zip(b).zip(c).zip(d);
                for (word, (((&a, &b), &c), &d)) in out.iter_mut().zip(bytes) {
                    let codes = [a, b, c, d].map(|v| v.to_code(input));
                    *word = u32::from_le_bytes(codes);
                }
                continue;
            }
            for (j, plane) in planes.iter().enumerate() {
                match plane {
                    Some(values) => {
                        for (word, &v) in out.iter_mut().zip(values.iter()) {
                            let byte = u32::from(v.to_code(input)) << (8 * j);
                            *word = if j == 0 { byte } else { *word | byte };
                        }
                    }
                    None => {
                        for word in out.iter_mut() {
                            *word |= u32::from(zero_point) << (8 * j);
                        }
                    }
                }
            }
        }
    })
}

/// [`quantize_c4`] with each channel's own scale and zero point (an 8-bit input quantized on
/// its per-channel lattice: `planes.channels` of each); missing channels of the last group hold
/// 0 (their weights are 0).
pub fn quantize_c4_channels<E: Element>(
    isa: Isa,
    image: &[E],
    planes: Planes,
    scales: &[f32],
    zero_points: &[u8],
    dst: &mut [u32],
) {
    let Planes { channels, pixels, stride } = planes;
    let groups = channels.div_ceil(4);
    assert!(
        image.len() >= planes.extent()
            && stride >= pixels
            && scales.len() >= channels
            && zero_points.len() >= channels
            && dst.len() >= groups * pixels,
        "quantize_c4_channels: image, planes, lattices and words disagree"
    );
    crate::kernels::quant::multiversion!(isa, {
        for g in 0..groups {
            let out = &mut dst[g * pixels..(g + 1) * pixels];
            out.fill(0);
            for c in 4 * g..(4 * g + 4).min(channels) {
                let (scale, zp, shift) = (scales[c], zero_points[c], 8 * (c - 4 * g));
                let values = &image[c * stride..c * stride + pixels];
                for (word, &v) in out.iter_mut().zip(values) {
                    *word |=
                        u32::from(v.to_code(ActivationQuant { scale, zero_point: zp })) << shift;
                }
            }
        }
    })
}

/// The pixels a GEMM call computes and the distances between the planes it reads and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlaneRun {
    pub pixels: usize,
    pub x_stride: usize,
    pub out_stride: usize,
}

impl PlaneRun {
    /// The run a product of `x` by the weight rows `range` computes into `out`, which holds
    /// `tail` columns more than `x`; panics (naming `what`) when the views, the weights and
    /// the epilogues disagree or a view's rows are not contiguous runs.
    fn checked<E>(
        x: &ArrayView2<'_, u32>,
        w: &PlanarWeights,
        range: &Range<usize>,
        epilogues: &[Epilogue],
        out: &ArrayViewMut2<'_, E>,
        tail: usize,
        what: &str,
    ) -> PlaneRun {
        let pixels = x.ncols();
        assert!(
            x.nrows() >= w.k4
                && range.end <= w.n
                && epilogues.len() == range.len()
                && out.nrows() == range.len()
                && out.ncols() == pixels + tail,
            "{what}: operand, weights, epilogues and output disagree"
        );
        let (Some(x_stride), Some(out_stride)) = (row_stride(x), row_stride(out)) else {
            panic!("{what}: planes must be contiguous rows");
        };
        PlaneRun { pixels, x_stride, out_stride }
    }
}

/// The distance between the rows of a view whose rows are contiguous runs (column stride 1), or
/// `None` for any other layout.
pub(super) fn row_stride<S: RawData>(view: &ArrayBase<S, Ix2>) -> Option<usize> {
    let [rows, columns] = [view.nrows(), view.ncols()];
    let [row, column] = [view.strides()[0], view.strides()[1]];
    let unit_columns = columns <= 1 || column == 1;
    let rows_forward = if rows <= 1 { Some(0) } else { usize::try_from(row).ok() };
    rows_forward.filter(|_| unit_columns)
}

/// `Σ_j x.byte(j) · w.byte(j)`, u8 by i8: one `vpdpbusd` lane, the scalar references' step.
pub(super) fn word_dot(x: u32, w: i32) -> i32 {
    let (xb, wb) = (x.to_le_bytes(), w.to_le_bytes());
    (0..4).map(|j| i32::from(xb[j]) * i32::from(wb[j] as i8)).sum()
}

/// The padding word of each channel group for per-channel zero points (missing channels 0).
pub fn fill_words(zero_points: &[u8]) -> Vec<u32> {
    zero_points
        .chunks(4)
        .map(|z| u32::from_le_bytes([0, 1, 2, 3].map(|j| z.get(j).copied().unwrap_or(0))))
        .collect()
}

/// `out[o − range.start][p] = finish_o(Σ_k4 Σ_j x[k4][p].byte(j) · W[o][4·k4 + j])` for `o` in
/// `range` and every column `p` of `x` and `out`, finished by `epilogues[o − range.start]` and
/// stored as floats or codes. Both views may be column bands of larger planes (a block of
/// patches, a thread's share of the pixels): rows must be contiguous runs, any distance apart.
/// The SIMD path finishes each tile in registers, so no plane of i32 sums is written and read
/// back.
pub fn conv_planar<E: SimdElement>(
    isa: Isa,
    x: ArrayView2<'_, u32>,
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    mut out: ArrayViewMut2<'_, E>,
) {
    let shape = PlaneRun::checked(&x, w, &range, epilogues, &out, 0, "conv_planar");
    let pixels = shape.pixels;
    match isa.tier() {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512Vnni if pixels > 0 && !range.is_empty() => {
            let words = &w.words[range.start * w.k4..];
            // SAFETY: Isa of tier Avx512Vnni is only chosen on CPUs with these features; the views
            // hold every row and column the kernel touches (rows `stride` apart, columns
            // contiguous, checked above), and the assert bounds the weight rows.
            unsafe {
                let x = planar_avx512::Operand::dense(x.as_ptr(), shape.x_stride, w.k4);
                planar_avx512::channels(
                    &x,
                    shape,
                    words,
                    w.k4,
                    epilogues,
                    store,
                    out.as_mut_ptr(),
                    None,
                )
            };
        }
        #[cfg(target_arch = "x86_64")]
        Tier::AvxVnni | Tier::Avx2 if pixels > 0 && !range.is_empty() => {
            let words = &w.words[range.start * w.k4..];
            // SAFETY: the AVX2 instruction sets are only chosen on CPUs that run them; the
            // views hold every row and column the kernel touches (checked above), and the
            // assert bounds the weight rows.
            unsafe {
                super::planar_avx2::channels(
                    isa,
                    x.as_ptr(),
                    shape.x_stride,
                    pixels,
                    words,
                    w.k4,
                    epilogues,
                    store,
                    out.as_mut_ptr(),
                    shape.out_stride,
                )
            };
        }
        #[cfg(target_arch = "aarch64")]
        Tier::NeonI8mm | Tier::NeonDot | Tier::Neon if pixels > 0 && !range.is_empty() => {
            let words = &w.words[range.start * w.k4..];
            // SAFETY: the NEON instruction sets are only chosen on CPUs that run them; the
            // views hold every row and column the kernel touches (checked above), and the
            // kernel bounds the weight rows and their sums.
            unsafe {
                super::planar_neon::channels(
                    isa,
                    x.as_ptr(),
                    shape.x_stride,
                    pixels,
                    words,
                    &w.column_sums[range.start..],
                    w.k4,
                    epilogues,
                    store,
                    out.as_mut_ptr(),
                    shape.out_stride,
                )
            };
        }
        _ => {
            for (o, (mut plane, e)) in range.zip(out.rows_mut().into_iter().zip(epilogues)) {
                let row = &w.words[o * w.k4..(o + 1) * w.k4];
                for start in (0..pixels).step_by(64) {
                    let len = (pixels - start).min(64);
                    let mut sums = [0i32; 64];
                    for (k4, &word) in row.iter().enumerate() {
                        let xs = x.slice(s![k4, start..start + len]);
                        for (sum, &xw) in sums.iter_mut().zip(xs) {
                            *sum += word_dot(xw, word);
                        }
                    }
                    let mut chunk = plane.slice_mut(s![start..start + len]);
                    let sums = &sums[..len];
                    match chunk.as_slice_mut() {
                        Some(chunk) => E::store_row(Isa::SCALAR, sums, *e, store, chunk),
                        None => unreachable!("rows of `out` are contiguous (checked above)"),
                    }
                }
            }
        }
    }
}

/// [`conv_planar`] over the columns of `x`, then the next `columns.len() / k4` columns of `out`
/// as dot products with `columns` (their operand columns, transposed), each block of output
/// channels right after its tiles: the AVX-512 path of
/// [`conv_planar_with_tail`](crate::kernels::conv_planar_with_tail).
#[cfg(target_arch = "x86_64")]
pub(super) fn conv_planar_then_tail<E: SimdElement>(
    x: ArrayView2<'_, u32>,
    columns: &[u32],
    w: &PlanarWeights,
    range: Range<usize>,
    epilogues: &[Epilogue],
    store: E::Store,
    mut out: ArrayViewMut2<'_, E>,
) {
    let k4 = w.k4;
    let tail = columns.len() / k4.max(1);
    assert!(
        Isa::detect().tier() == Tier::Avx512Vnni
            && k4 > 0
            && columns.len() == tail * k4
            && (1..=crate::kernels::MAX_TAIL_PIXELS).contains(&tail)
            && x.ncols() > 0,
        "conv_planar_then_tail: operand, columns, weights, epilogues and output disagree"
    );
    let shape = PlaneRun::checked(&x, w, &range, epilogues, &out, tail, "conv_planar_then_tail");
    if range.is_empty() {
        return;
    }
    let words = &w.words[range.start * k4..];
    let tail = planar_avx512::TailColumns { columns, pixels: tail };
    // SAFETY: the CPU has AVX-512-VNNI (asserted); the views hold every row and column the
    // kernel touches (rows `stride` apart, columns contiguous, `out` `tail` columns wider than
    // `x`), and the assert bounds the weight rows and the tail's columns.
    unsafe {
        let x = planar_avx512::Operand::dense(x.as_ptr(), shape.x_stride, k4);
        planar_avx512::channels(
            &x,
            shape,
            words,
            k4,
            epilogues,
            store,
            out.as_mut_ptr(),
            Some(tail),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{quantize_value, Activation, FloatStore, OutputCodes};
    use proptest::prelude::*;

    /// `data` as planes of `columns`.
    fn view<T>(data: &[T], columns: usize) -> ArrayView2<'_, T> {
        ArrayView2::from_shape((data.len() / columns, columns), data).unwrap()
    }

    fn view_mut<T>(data: &mut [T], columns: usize) -> ArrayViewMut2<'_, T> {
        ArrayViewMut2::from_shape((data.len() / columns, columns), data).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn planar_conv_matches_the_scalar_reference(n in 1usize..20, k4 in 1usize..12, pixels in 1usize..80, zp in any::<u8>(), seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 33) as u32 };
            let x: Vec<u32> = (0..k4 * pixels).map(|_| next()).collect();
            let w: Vec<i8> = (0..n * k4 * 4).map(|_| next() as i8).collect();
            let packed = PlanarWeights::pack(&w, n, k4);
            // Every SIMD instruction set this CPU runs against the scalar reference.
            for simd_isa in Isa::supported().filter(|&isa| isa != Isa::SCALAR) {
                // Exact sums first (scale 1, no offset, bias or clamp: integers below 2^24 as f32).
                let exact = Epilogue { offset: 0, scale: 1.0, bias: 0.0, activation: Activation::Identity };
                let mut simd = vec![0f32; n * pixels];
                conv_planar(simd_isa, view(&x, pixels), &packed, 0..n, &vec![exact; n], FloatStore::Replace, view_mut(&mut simd, pixels));
                let mut scalar = vec![0f32; n * pixels];
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, 0..n, &vec![exact; n], FloatStore::Replace, view_mut(&mut scalar, pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                let (o, p) = (n - 1, pixels - 1);
                let want: i32 = (0..k4 * 4).map(|k| i32::from(x[(k / 4) * pixels + p].to_le_bytes()[k % 4]) * i32::from(w[o * k4 * 4 + k])).sum();
                prop_assert_eq!(scalar[o * pixels + p], want as f32);
                // Then real epilogues (per-channel offset, scale, bias, ReLU6), floats and codes,
                // on a channel range that does not start at 0.
                let first = n / 3;
                let epilogues: Vec<Epilogue> = (first..n).map(|o| Epilogue {
                    offset: i32::from(zp) * packed.column_sums[o],
                    scale: 1e-4 * (o + 1) as f32,
                    bias: 0.1 * o as f32 - 0.5,
                    activation: Activation::Clip(0.0, 6.0),
                }).collect();
                let codes = OutputCodes::from(ActivationQuant { scale: 0.03, zero_point: zp / 2 });
                let count = n - first;
                let (mut simd, mut scalar) = (vec![0f32; count * pixels], vec![0f32; count * pixels]);
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::Replace, view_mut(&mut simd[..count * pixels], pixels));
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::Replace, view_mut(&mut scalar[..count * pixels], pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                // Added to a residual branch before the ReLU6: the same on every path, and without
                // the clip exactly the replaced results plus the branch.
                let residual: Vec<f32> = (0..count * pixels).map(|i| (i % 13) as f32 * 0.37 - 2.0).collect();
                let replaced = scalar;
                let (mut simd, mut scalar) = (residual.clone(), residual.clone());
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::AddTo, view_mut(&mut simd, pixels));
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &epilogues, FloatStore::AddTo, view_mut(&mut scalar, pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                let unclipped: Vec<Epilogue> = epilogues.iter().map(|e| Epilogue { activation: Activation::Identity, ..*e }).collect();
                let mut plain = vec![0f32; count * pixels];
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &unclipped, FloatStore::Replace, view_mut(&mut plain, pixels));
                let mut added = residual.clone();
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &unclipped, FloatStore::AddTo, view_mut(&mut added, pixels));
                let want: Vec<f32> = plain.iter().zip(&residual).map(|(p, r)| p + r).collect();
                prop_assert_eq!(&added, &want);
                prop_assert!(replaced.iter().zip(&simd).all(|(r, s)| (0.0..=6.0).contains(r) && (0.0..=6.0).contains(s)));
                let (mut simd, mut scalar) = (vec![0u8; count * pixels + 1], vec![0u8; count * pixels + 1]);
                conv_planar(simd_isa, view(&x, pixels), &packed, first..n, &epilogues, codes, view_mut(&mut simd[..count * pixels], pixels));
                conv_planar(Isa::SCALAR, view(&x, pixels), &packed, first..n, &epilogues, codes, view_mut(&mut scalar[..count * pixels], pixels));
                prop_assert_eq!(&simd, &scalar, "{:?}", simd_isa);
                prop_assert_eq!(simd[count * pixels], 0, "wrote past the planes");
                // In two blocks of pixels, as blocked im2col runs it (each block its own patch
                // columns) and as threads split the pixels (column bands of the same planes): the
                // same codes.
                let split = pixels / 2;
                for isa in [Isa::SCALAR, simd_isa] {
                    let mut blocked = vec![0u8; count * pixels + 1];
                    let mut banded = vec![0u8; count * pixels + 1];
                    for block in [0..split, split..pixels].into_iter().filter(|b| !b.is_empty()) {
                        let columns: Vec<u32> = (0..k4).flat_map(|kk| x[kk * pixels..][block.clone()].to_vec()).collect();
                        let mut out = view_mut(&mut blocked[..count * pixels], pixels);
                        let out = out.slice_mut(s![.., block.clone()]);
                        conv_planar(isa, view(&columns, block.len()), &packed, first..n, &epilogues, codes, out);
                        let x = view(&x, pixels);
                        let mut out = view_mut(&mut banded[..count * pixels], pixels);
                        let out = out.slice_mut(s![.., block.clone()]);
                        conv_planar(isa, x.slice(s![.., block.clone()]), &packed, first..n, &epilogues, codes, out);
                    }
                    prop_assert_eq!(&banded, &simd, "{:?}", isa);
                    prop_assert_eq!(&blocked, &simd, "{:?}", isa);
                }
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Codes read as they are give the same C4 words as the floats they stand for.
        #[test]
        fn c4_from_codes_equals_c4_from_floats(channels in 1usize..10, pixels in 1usize..40, zp in any::<u8>(), seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 33) as u8 };
            let codes: Vec<u8> = (0..channels * pixels).map(|_| next()).collect();
            let input = ActivationQuant { scale: 0.05, zero_point: zp };
            let floats: Vec<f32> = codes.iter().map(|&q| (f32::from(q) - f32::from(zp)) * 0.05).collect();
            let groups = channels.div_ceil(4) * pixels;
            let (mut from_codes, mut from_floats) = (vec![0u32; groups], vec![0u32; groups]);
            quantize_c4(Isa::detect(), &codes, Planes::whole(channels, pixels), input, &mut from_codes);
            quantize_c4(Isa::detect(), &floats, Planes::whole(channels, pixels), input, &mut from_floats);
            prop_assert_eq!(from_codes, from_floats);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn per_channel_c4_matches_the_definition(channels in 1usize..11, pixels in 1usize..40, seed in any::<u64>()) {
            let mut state = seed;
            let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 40) as f32 / 16777216.0 };
            let image: Vec<f32> = (0..channels * pixels).map(|_| next() * 8.0 - 4.0).collect();
            let scales: Vec<f32> = (0..channels).map(|_| 0.005 + next() * 0.05).collect();
            let zps: Vec<u8> = (0..channels).map(|_| (next() * 255.0) as u8).collect();
            let groups = channels.div_ceil(4);
            let mut dst = vec![0xdead_beef_u32; groups * pixels];
            quantize_c4_channels(Isa::detect(), &image, Planes::whole(channels, pixels), &scales, &zps, &mut dst);
            let mut scalar = vec![0u32; groups * pixels];
            quantize_c4_channels(Isa::SCALAR, &image, Planes::whole(channels, pixels), &scales, &zps, &mut scalar);
            prop_assert_eq!(&dst, &scalar);
            for c in 0..4 * groups {
                for p in 0..pixels {
                    let want = if c < channels { quantize_value(image[c * pixels + p], scales[c], zps[c]) } else { 0 };
                    prop_assert_eq!(dst[(c / 4) * pixels + p].to_le_bytes()[c % 4], want);
                }
            }
            // In two bands of pixels (planes read `pixels` apart), per channel and per tensor:
            // each band's words are those of the whole planes.
            let split = pixels / 2;
            let tensor_q = ActivationQuant { scale: scales[0], zero_point: zps[0] };
            let mut whole = vec![0u32; groups * pixels];
            quantize_c4(Isa::detect(), &image, Planes::whole(channels, pixels), tensor_q, &mut whole);
            for band in [0..split, split..pixels] {
                let planes = Planes { channels, pixels: band.len(), stride: pixels };
                let mut per_channel = vec![0u32; groups * band.len()];
                quantize_c4_channels(Isa::detect(), &image[band.start..], planes, &scales, &zps, &mut per_channel);
                let mut per_tensor = vec![0u32; groups * band.len()];
                quantize_c4(Isa::detect(), &image[band.start..], planes, tensor_q, &mut per_tensor);
                for g in 0..groups {
                    let words = g * pixels + band.start..g * pixels + band.end;
                    prop_assert_eq!(&per_channel[g * band.len()..][..band.len()], &dst[words.clone()]);
                    prop_assert_eq!(&per_tensor[g * band.len()..][..band.len()], &whole[words]);
                }
            }
            // With one scale and zero point everywhere it is the per-tensor quantization.
            if channels % 4 == 0 {
                let mut same = vec![0u32; groups * pixels];
                quantize_c4_channels(Isa::detect(), &image, Planes::whole(channels, pixels), &vec![scales[0]; channels], &vec![zps[0]; channels], &mut same);
                let mut tensor = vec![0u32; groups * pixels];
                quantize_c4(Isa::detect(), &image, Planes::whole(channels, pixels), ActivationQuant { scale: scales[0], zero_point: zps[0] }, &mut tensor);
                prop_assert_eq!(same, tensor);
            }
        }
    }

    #[test]
    fn c4_quantization_interleaves_and_pads() {
        let image: Vec<f32> = (0..5 * 3).map(|i| i as f32).collect(); // 5 channels × 3 pixels
        let mut dst = vec![0u32; 2 * 3];
        let input = ActivationQuant { scale: 1.0, zero_point: 7 };
        quantize_c4(Isa::detect(), &image, Planes::whole(5, 3), input, &mut dst);
        assert_eq!(dst[1].to_le_bytes(), [8, 11, 14, 17]); // channels 0..4 at pixel 1, + zp 7
        assert_eq!(dst[3 + 2].to_le_bytes(), [21, 7, 7, 7]); // channel 4, then padding
    }
}
