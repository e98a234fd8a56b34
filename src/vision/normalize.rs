//! Resized 8-bit pixels to output values (normalized floats, or the pixels themselves for
//! uint8), written once into the image's slot of the batch in the requested layout and channel
//! order, with letterbox margins filled.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{ChannelOrder, Layout, Pixels, Placement, PreprocessOptions};

/// An element type of the output batch: float32, float16 (normalized) or uint8 (the resized
/// pixels as they are, for models that take uint8 input).
pub trait Element: Copy + Default + Send + Sync + 'static {
    /// Whether `mean`/`std` apply; uint8 output holds plain pixel values.
    const NORMALIZED: bool;
    /// The NumPy name of the type, for messages.
    const NAME: &'static str;
    /// One value (already normalized, or a whole pixel value for uint8).
    fn from_f32(value: f32) -> Self;
    /// Converts a row of values computed in float32.
    fn convert_row(src: &[f32], dst: &mut [Self]);
    /// Whether [`Element::as_f32`] gives the row itself (float32 output: no conversion pass).
    const DIRECT: bool;
    /// The row itself when it can hold float32 values directly.
    fn as_f32(row: &mut [Self]) -> Option<&mut [f32]>;
}

impl Element for f32 {
    const NORMALIZED: bool = true;
    const NAME: &'static str = "float32";
    const DIRECT: bool = true;
    fn from_f32(value: f32) -> Self {
        value
    }
    fn convert_row(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(row: &mut [Self]) -> Option<&mut [f32]> {
        Some(row)
    }
}

impl Element for f16 {
    const NORMALIZED: bool = true;
    const NAME: &'static str = "float16";
    const DIRECT: bool = false;
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
    fn convert_row(src: &[f32], dst: &mut [Self]) {
        // Vectorised (F16C) when the CPU has it; rounds to nearest even like NumPy's astype.
        dst.convert_from_f32_slice(src);
    }
    fn as_f32(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl Element for u8 {
    const NORMALIZED: bool = false;
    const NAME: &'static str = "uint8";
    const DIRECT: bool = false;
    fn from_f32(value: f32) -> Self {
        // Only whole pixel values 0..=255 reach here (identity affine).
        value as u8
    }
    fn convert_row(src: &[f32], dst: &mut [Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s as u8;
        }
    }
    fn as_f32(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// `out = pixel * scale + bias` per output channel: `(pixel / 255 - mean) / std` folded into one
/// multiply-add (identity for uint8 output).
#[derive(Debug, Clone, Copy)]
struct Affine {
    scale: [f32; 3],
    bias: [f32; 3],
}

impl Affine {
    fn new(options: &PreprocessOptions, normalized: bool) -> Self {
        let mut affine = Affine { scale: [1.0; 3], bias: [0.0; 3] };
        if normalized {
            for c in 0..3 {
                affine.scale[c] = 1.0 / (255.0 * options.std[c]);
                affine.bias[c] = -options.mean[c] / options.std[c];
            }
        }
        affine
    }

    fn apply(&self, c: usize, value: u8) -> f32 {
        f32::from(value) * self.scale[c] + self.bias[c]
    }
}

/// Writes `pixels` (already at the placement's output size) into `slot`, one image of the batch.
pub fn write<T: Element>(
    pixels: &Pixels<'_>,
    placement: &Placement,
    options: &PreprocessOptions,
    slot: &mut [T],
) {
    let affine = Affine::new(options, T::NORMALIZED);
    let (out_h, out_w) = options.size;
    let (left, top, width, height) = placement.dst;
    let stride = pixels.channels;
    // Output channel -> channel of the source pixel (grey feeds all three; RGBA's alpha is skipped).
    let source_channel = |c: usize| match (stride, options.channels) {
        (1, _) => 0,
        (_, ChannelOrder::Rgb) => c,
        (_, ChannelOrder::Bgr) => 2 - c,
    };
    let pad_f32 = [0, 1, 2].map(|c| affine.apply(c, options.pad));
    let pad = pad_f32.map(T::from_f32);
    let inside = |y: usize| y >= top && y < top + height;
    let source_row = |y: usize| {
        let start = (y - top) * width * stride;
        &pixels.data[start..start + width * stride]
    };
    let map = [0, 1, 2].map(source_channel);
    let mut scratch = Vec::new();
    match options.layout {
        Layout::Nchw => {
            let plane_len = out_h * out_w;
            let (p0, rest) = slot.split_at_mut(plane_len);
            let (p1, p2) = rest.split_at_mut(plane_len);
            let rows = p0.chunks_exact_mut(out_w).zip(p1.chunks_exact_mut(out_w));
            for (y, ((r0, r1), r2)) in rows.zip(p2.chunks_exact_mut(out_w)).enumerate() {
                let mut planes = [r0, r1, r2];
                if !inside(y) {
                    for (c, row) in planes.iter_mut().enumerate() {
                        row.fill(pad[c]);
                    }
                    continue;
                }
                for (c, row) in planes.iter_mut().enumerate() {
                    row[..left].fill(pad[c]);
                    row[left + width..].fill(pad[c]);
                }
                let rows = planes.map(|row| &mut row[left..left + width]);
                let src = source_row(y);
                store_planar(rows, &mut scratch, |out| planar_row(stride, src, out, map, &affine));
            }
        }
        Layout::Nhwc => {
            for (y, row) in slot.chunks_exact_mut(out_w * 3).enumerate() {
                if !inside(y) {
                    for o in row.chunks_exact_mut(3) {
                        o.copy_from_slice(&pad);
                    }
                    continue;
                }
                let src = source_row(y);
                store_row(row, &mut scratch, |out| {
                    for o in out[..left * 3].chunks_exact_mut(3) {
                        o.copy_from_slice(&pad_f32);
                    }
                    for o in out[(left + width) * 3..].chunks_exact_mut(3) {
                        o.copy_from_slice(&pad_f32);
                    }
                    let inner = &mut out[left * 3..(left + width) * 3];
                    for (o, px) in inner.chunks_exact_mut(3).zip(src.chunks_exact(stride)) {
                        for c in 0..3 {
                            o[c] = affine.apply(c, px[map[c]]);
                        }
                    }
                });
            }
        }
    }
}

/// Runs `fill` on three planar output rows: the rows themselves for float32, else float32
/// scratch rows converted afterwards.
fn store_planar<T: Element>(
    rows: [&mut [T]; 3],
    scratch: &mut Vec<f32>,
    fill: impl FnOnce([&mut [f32]; 3]),
) {
    let [r0, r1, r2] = rows;
    if T::DIRECT {
        if let (Some(a), Some(b), Some(c)) = (T::as_f32(r0), T::as_f32(r1), T::as_f32(r2)) {
            fill([a, b, c]);
        }
        return;
    }
    let width = r0.len();
    scratch.resize(3 * width, 0.0);
    let (s0, rest) = scratch.split_at_mut(width);
    let (s1, s2) = rest.split_at_mut(width);
    fill([s0, s1, s2]);
    for (row, values) in [r0, r1, r2].into_iter().zip(scratch.chunks_exact(width)) {
        T::convert_row(values, row);
    }
}

/// Runs `fill` on one interleaved output row (directly for float32, via scratch otherwise).
fn store_row<T: Element>(row: &mut [T], scratch: &mut Vec<f32>, fill: impl FnOnce(&mut [f32])) {
    if T::DIRECT {
        if let Some(out) = T::as_f32(row) {
            fill(out);
        }
        return;
    }
    scratch.resize(row.len(), 0.0);
    fill(scratch);
    T::convert_row(scratch, row);
}

/// Normalizes one row of `stride`-channel pixels into three planar output rows; the channel
/// count is a constant in each arm so the loops compile without per-pixel branches.
fn planar_row(stride: usize, src: &[u8], out: [&mut [f32]; 3], map: [usize; 3], affine: &Affine) {
    match stride {
        1 => planar_row_c::<1>(src, out, map, affine),
        3 => planar_row_c::<3>(src, out, map, affine),
        _ => planar_row_c::<4>(src, out, map, affine),
    }
}

fn planar_row_c<const C: usize>(
    src: &[u8],
    out: [&mut [f32]; 3],
    map: [usize; 3],
    affine: &Affine,
) {
    let [r0, r1, r2] = out;
    let [m0, m1, m2] = map.map(|m| m.min(C - 1));
    let pixels = src.chunks_exact(C).zip(r0.iter_mut()).zip(r1.iter_mut().zip(r2.iter_mut()));
    for ((px, o0), (o1, o2)) in pixels {
        *o0 = affine.apply(0, px[m0]);
        *o1 = affine.apply(1, px[m1]);
        *o2 = affine.apply(2, px[m2]);
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn letterbox_margins_get_the_padding_value_and_grey_feeds_every_channel() {
        // A 2x1 grey image (values 10, 20) centred in a 3x4 output with pad 255.
        let pixels = Pixels {
            data: Cow::Owned(vec![10, 20]),
            width: 2,
            height: 1,
            channels: 1,
            full_width: 2,
            full_height: 1,
        };
        let mut options = PreprocessOptions::new((3, 4), [0.0; 3], [1.0 / 255.0; 3]);
        options.pad = 255;
        let placement = Placement { src: (0.0, 0.0, 2.0, 1.0), dst: (1, 1, 2, 1) };
        for layout in [Layout::Nchw, Layout::Nhwc] {
            options.layout = layout;
            let mut slot = vec![-1.0; 36];
            write(&pixels, &placement, &options, &mut slot);
            let at = |c: usize, y: usize, x: usize| match layout {
                Layout::Nchw => slot[c * 12 + y * 4 + x],
                Layout::Nhwc => slot[(y * 4 + x) * 3 + c],
            };
            for c in 0..3 {
                for y in 0..3 {
                    for x in 0..4 {
                        let want = match (y, x) {
                            (1, 1) => 10.0,
                            (1, 2) => 20.0,
                            _ => 255.0,
                        };
                        assert!((at(c, y, x) - want).abs() < 1e-3, "{layout:?} {c} {y} {x}");
                    }
                }
            }
        }
    }

    #[test]
    fn rgba_alpha_is_dropped_and_bgr_reverses() {
        let pixels = Pixels {
            data: Cow::Owned(vec![1, 2, 3, 4]),
            width: 1,
            height: 1,
            channels: 4,
            full_width: 1,
            full_height: 1,
        };
        let mut options = PreprocessOptions::new((1, 1), [0.0; 3], [1.0 / 255.0; 3]);
        options.channels = ChannelOrder::Bgr;
        let placement = Placement { src: (0.0, 0.0, 1.0, 1.0), dst: (0, 0, 1, 1) };
        let mut slot = vec![0.0; 3];
        write(&pixels, &placement, &options, &mut slot);
        let rounded: Vec<f32> = slot.iter().map(|v| v.round()).collect();
        assert_eq!(rounded, [3.0, 2.0, 1.0]);
    }

    #[test]
    fn uint8_copies_pixels_and_float16_rounds_the_float32_values() {
        let data: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 13) as u8).collect();
        let pixels = Pixels {
            data: Cow::Owned(data.clone()),
            width: 3,
            height: 2,
            channels: 3,
            full_width: 3,
            full_height: 2,
        };
        // Letterboxed into 4x3 (one padded row) so both kinds of rows are covered.
        let mut options =
            PreprocessOptions::new((3, 3), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        options.pad = 114;
        let placement = Placement { src: (0.0, 0.0, 3.0, 2.0), dst: (0, 1, 3, 2) };
        for layout in [Layout::Nchw, Layout::Nhwc] {
            options.layout = layout;
            let mut bytes = vec![0u8; 27];
            write(&pixels, &placement, &options, &mut bytes);
            let mut floats = vec![0f32; 27];
            write(&pixels, &placement, &options, &mut floats);
            let mut halves = vec![f16::ZERO; 27];
            write(&pixels, &placement, &options, &mut halves);
            for (i, ((&b, &f), &h)) in bytes.iter().zip(&floats).zip(&halves).enumerate() {
                let c = match layout {
                    Layout::Nchw => i / 9,
                    Layout::Nhwc => i % 3,
                };
                let back = (f * options.std[c] + options.mean[c]) * 255.0;
                assert!((back - f32::from(b)).abs() < 1e-3, "{layout:?} {i}: {b} vs {back}");
                assert_eq!(h, f16::from_f32(f), "{layout:?} {i}");
            }
            let first_row = match layout {
                Layout::Nchw => [bytes[0], bytes[9], bytes[18]],
                Layout::Nhwc => [bytes[0], bytes[1], bytes[2]],
            };
            assert_eq!(first_row, [114; 3]);
            if layout == Layout::Nhwc {
                // Rows 1 and 2 are the source pixels as they are.
                assert_eq!(&bytes[9..], data.as_slice());
            }
        }
    }
}
