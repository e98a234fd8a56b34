//! im2col for the planar GEMM: the patch matrix of a k×k convolution in C4 words, one plane of
//! output pixels per (tap, channel group), built in parts (row ranges for threads, blocks of
//! output rows so the patches stay in cache).

use std::ops::Range;

use crate::kernels::ConvGeometry;
use crate::kernels::Isa;

/// Builds the C4 patch matrix of a k×k convolution: for each tap and channel group, the plane of
/// input words each output pixel reads (the zero point where the tap falls in the padding).
#[cfg(any(test, feature = "bench-internals"))]
pub fn im2col_c4(
    g: &ConvGeometry,
    x: &[u32],
    groups: Range<usize>,
    zero_point: u8,
    patches: &mut [u32],
) {
    let rows = 0..g.kernel[0] * g.kernel[1] * groups.len();
    im2col_c4_rows(g, x, groups, PatchFill::ZeroPoint(zero_point), rows, 0..g.out[0], patches)
}

/// [`im2col_c4`] padding channel group `g` with `fills[g]` (per-channel zero points, see
/// [`fill_words`]).
#[cfg(test)]
pub fn im2col_c4_fills(
    g: &ConvGeometry,
    x: &[u32],
    groups: Range<usize>,
    fills: &[u32],
    patches: &mut [u32],
) {
    let rows = 0..g.kernel[0] * g.kernel[1] * groups.len();
    im2col_c4_rows(g, x, groups, PatchFill::PerGroup(fills), rows, 0..g.out[0], patches)
}

/// What im2col writes where a tap falls in the padding.
#[derive(Debug, Clone, Copy)]
pub enum PatchFill<'a> {
    /// The input's zero point in every byte.
    ZeroPoint(u8),
    /// One word per channel group (per-channel zero points, see [`fill_words`]).
    PerGroup(&'a [u32]),
}

/// Rows `rows` of the patch matrix [`im2col_c4`] builds (row `(ky · kw + kx) · groups + g`),
/// for the output rows `out_rows` only (rows of `out_rows.len() · out_width` words), written
/// from the start of `patches`: parts of the matrix can be built in parallel, and a block of
/// output rows at a time, so that the patches stay in cache for the product that reads them.
pub fn im2col_c4_rows(
    g: &ConvGeometry,
    x: &[u32],
    groups: Range<usize>,
    fill: PatchFill,
    rows: Range<usize>,
    out_rows: Range<usize>,
    patches: &mut [u32],
) {
    let ConvGeometry { height, width, kernel, stride, dilation, pad, out, .. } = *g;
    let pixels_in = height * width;
    assert!(out_rows.end <= out[0]);
    let pixels_out = out_rows.len() * out[1];
    let group_count = groups.len().max(1);
    assert!(
        rows.end <= kernel[0] * kernel[1] * groups.len()
            && patches.len() >= rows.len() * pixels_out
            && x.len() >= groups.end * pixels_in
    );
    if let PatchFill::PerGroup(fills) = fill {
        assert!(groups.end <= fills.len(), "one fill word per channel group");
    }
    for (row, dst) in rows.clone().zip(patches.chunks_exact_mut(pixels_out.max(1))) {
        let (tap, group) = (row / group_count, groups.start + row % group_count);
        let (ky, kx) = (tap / kernel[1], tap % kernel[1]);
        let fill = match fill {
            PatchFill::ZeroPoint(zp) => u32::from_le_bytes([zp; 4]),
            PatchFill::PerGroup(fills) => fills[group],
        };
        let (first, last, start) =
            valid_columns(width, out[1], kx * dilation[1], stride[1], pad[1]);
        let plane = &x[group * pixels_in..(group + 1) * pixels_in];
        if stride == [1, 1] && out[1] == width {
            let shift = [ky * dilation[0], kx * dilation[1]];
            shifted_copy(plane, g, shift, out_rows.clone(), (first, last), fill, dst);
            continue;
        }
        for (line, oy) in dst.chunks_exact_mut(out[1].max(1)).zip(out_rows.clone()) {
            let iy =
                (oy * stride[0] + ky * dilation[0]).checked_sub(pad[0]).filter(|&iy| iy < height);
            let (Some(iy), true) = (iy, first < last) else {
                line.fill(fill);
                continue;
            };
            line[..first].fill(fill);
            line[last..].fill(fill);
            let src = &plane[iy * width + start..(iy + 1) * width];
            let inside = &mut line[first..last];
            match stride[1] {
                1 => inside.copy_from_slice(&src[..inside.len()]),
                2 => every_other(inside, src),
                s => inside.iter_mut().zip(src.iter().step_by(s)).for_each(|(d, &v)| *d = v),
            }
        }
    }
}

/// One patch row of a stride-1 convolution whose output rows are as wide as its input's (a
/// "same"-padded layer: ResNet's 3×3s): every output pixel reads the input pixel a fixed
/// distance away, so the lines whose input row lies inside the plane are one copy of a run of
/// the plane (one `memcpy` instead of one per line, which took most of im2col's time), then
/// each line's columns whose input column lies outside (`..first`, `last..`) get the fill.
fn shifted_copy(
    plane: &[u32],
    g: &ConvGeometry,
    shift: [usize; 2],
    out_rows: Range<usize>,
    (first, last): (usize, usize),
    fill: u32,
    dst: &mut [u32],
) {
    let width = g.width;
    if first >= last {
        // The tap's column lies in the padding for every output pixel.
        dst[..out_rows.len() * width].fill(fill);
        return;
    }
    // Output rows whose input row `oy + shift − pad` is inside the plane.
    let top = g.pad[0].saturating_sub(shift[0]);
    let bottom = (g.height + g.pad[0]).saturating_sub(shift[0]);
    let start = out_rows.start.max(top).min(out_rows.end);
    let inside = start..out_rows.end.min(bottom).max(start);
    let lines = |rows: Range<usize>| {
        let rows =
            rows.start.saturating_sub(out_rows.start)..rows.end.saturating_sub(out_rows.start);
        rows.start * width..rows.end * width
    };
    dst[lines(out_rows.start..inside.start)].fill(fill);
    dst[lines(inside.end..out_rows.end)].fill(fill);
    if inside.is_empty() {
        return;
    }
    let block = &mut dst[lines(inside.clone())];
    // Plane index of the block's first element, `iy · width + ox + shift − pad` (may be before
    // the plane: those elements are fill columns, written below).
    let row = inside.start + shift[0] - g.pad[0];
    let base = (row * width + shift[1]) as isize - g.pad[1] as isize;
    let from = base.min(0).unsigned_abs();
    let to = block.len().min((plane.len() as isize - base).max(0) as usize);
    if from < to {
        let source = (base + from as isize) as usize;
        block[from..to].copy_from_slice(&plane[source..source + (to - from)]);
    }
    for line in block.chunks_exact_mut(width.max(1)) {
        line[..first].fill(fill);
        line[last..].fill(fill);
    }
}

/// `dst[i] = src[2 · i]`: a stride-2 row (stems, downsampling layers), as pairs so that the
/// AVX-512 build vectorises it (`step_by` stays one word at a time).
fn every_other(dst: &mut [u32], src: &[u32]) {
    let pairs = dst.len().min(src.len() / 2);
    let (head, last) = dst.split_at_mut(pairs);
    crate::kernels::quant::multiversion!(Isa::detect(), {
        for (d, pair) in head.iter_mut().zip(src.chunks_exact(2)) {
            *d = pair[0];
        }
    });
    // An odd-length source's last word has no partner.
    if let (Some(d), Some(&v)) = (last.first_mut(), src.get(2 * pairs)) {
        *d = v;
    }
}

/// For a kernel column at input offset `offset` (`kx · dilation`): the output columns
/// `first..last` whose input column lies inside the row, and the input column `first` reads.
fn valid_columns(
    width: usize,
    out_width: usize,
    offset: usize,
    stride: usize,
    pad: usize,
) -> (usize, usize, usize) {
    let first = pad.saturating_sub(offset).div_ceil(stride);
    let last =
        (width + pad).checked_sub(offset + 1).map_or(0, |span| (span / stride + 1).min(out_width));
    let start = (first * stride + offset).saturating_sub(pad);
    (first, last.max(first), start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::fill_words;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn im2col_matches_a_naive_gather(h in 1usize..10, w in 1usize..10, k in 1usize..4, s in 1usize..3, d in 1usize..3, pad in 0usize..3) {
            let span = (k - 1) * d + 1;
            prop_assume!(h + 2 * pad >= span && w + 2 * pad >= span);
            let out = [(h + 2 * pad - span) / s + 1, (w + 2 * pad - span) / s + 1];
            let groups = 2;
            let x: Vec<u32> = (0..groups * h * w).map(|i| i as u32 * 7 + 1).collect();
            let mut patches = vec![0u32; k * k * groups * out[0] * out[1]];
            let g = ConvGeometry { channels: 4 * groups, height: h, width: w, kernel: [k, k], stride: [s, s], dilation: [d, d], pad: [pad, pad], out };
            im2col_c4(&g, &x, 0..groups, 3, &mut patches);
            let fill = u32::from_le_bytes([3; 4]);
            let mut row = 0;
            for ky in 0..k {
                for kx in 0..k {
                    for g in 0..groups {
                        for oy in 0..out[0] {
                            for ox in 0..out[1] {
                                let (iy, ix) = ((oy * s + ky * d) as i64 - pad as i64, (ox * s + kx * d) as i64 - pad as i64);
                                let want = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    x[g * h * w + iy as usize * w + ix as usize]
                                } else {
                                    fill
                                };
                                prop_assert_eq!(patches[(row * out[0] + oy) * out[1] + ox], want);
                            }
                        }
                        row += 1;
                    }
                }
            }
            // Built in parts (as threads build it), row ranges give the same matrix.
            let pixels = out[0] * out[1];
            let rows = k * k * groups;
            let mut parts = vec![0u32; patches.len()];
            let split = (rows / 3).max(1);
            for (task, part) in parts.chunks_mut(split * pixels).enumerate() {
                let first = task * split;
                let range = first..first + part.len() / pixels;
                im2col_c4_rows(&g, &x, 0..groups, PatchFill::ZeroPoint(3), range, 0..out[0], part);
            }
            prop_assert_eq!(parts, patches.clone());
            // Blocks of output rows (as the runtime builds them, to keep them in cache): each
            // block's columns of the whole matrix.
            let split = out[0] / 2;
            for block in [0..split, split..out[0]] {
                let columns = block.len() * out[1];
                let mut part = vec![0u32; rows * columns];
                im2col_c4_rows(&g, &x, 0..groups, PatchFill::ZeroPoint(3), 0..rows, block.clone(), &mut part);
                for r in 0..rows {
                    let whole = &patches[r * pixels + block.start * out[1]..][..columns];
                    prop_assert_eq!(&part[r * columns..][..columns], whole, "row {} block {:?}", r, block);
                }
            }
        }
    }

    #[test]
    fn per_group_fills_pad_each_group_with_its_word() {
        let g = ConvGeometry {
            channels: 8,
            height: 2,
            width: 2,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pad: [1, 1],
            out: [2, 2],
        };
        let x: Vec<u32> = (0..8).map(|i| 100 + i).collect();
        let fills = fill_words(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(fills, vec![u32::from_le_bytes([1, 2, 3, 4]), u32::from_le_bytes([5, 6, 7, 0])]);
        let mut patches = vec![0u32; 9 * 2 * 4];
        im2col_c4_fills(&g, &x, 0..2, &fills, &mut patches);
        let mut reference = vec![0u32; 9 * 2 * 4];
        for (group, &fill) in fills.iter().enumerate() {
            let mut one = [0u32; 9 * 4];
            let gg = ConvGeometry { channels: 4, ..g };
            let mut single = vec![0u32; 9 * 4];
            im2col_c4(&gg, &x[group * 4..], 0..1, 0, &mut single);
            let zero = u32::from_le_bytes([0; 4]);
            for (o, &s) in one.iter_mut().zip(&single) {
                *o = if s == zero { fill } else { s };
            }
            for tap in 0..9 {
                reference[(tap * 2 + group) * 4..][..4].copy_from_slice(&one[tap * 4..][..4]);
            }
        }
        assert_eq!(patches, reference);
    }
}
