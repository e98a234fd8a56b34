//! Resized 8-bit pixels to normalized floats, written once into the image's slot of the batch in
//! the requested layout and channel order, with letterbox margins filled.

use super::{ChannelOrder, Layout, Pixels, Placement, PreprocessOptions};

/// `out = pixel * scale + bias` per output channel: `(pixel / 255 - mean) / std` folded into one
/// multiply-add.
#[derive(Debug, Clone, Copy)]
struct Affine {
    scale: [f32; 3],
    bias: [f32; 3],
}

impl Affine {
    fn new(options: &PreprocessOptions) -> Self {
        let mut affine = Affine { scale: [0.0; 3], bias: [0.0; 3] };
        for c in 0..3 {
            affine.scale[c] = 1.0 / (255.0 * options.std[c]);
            affine.bias[c] = -options.mean[c] / options.std[c];
        }
        affine
    }

    fn apply(&self, c: usize, value: u8) -> f32 {
        f32::from(value) * self.scale[c] + self.bias[c]
    }
}

/// Writes `pixels` (already at the placement's output size) into `slot`, one image of the batch.
pub fn write(
    pixels: &Pixels<'_>,
    placement: &Placement,
    options: &PreprocessOptions,
    slot: &mut [f32],
) {
    let affine = Affine::new(options);
    let (out_h, out_w) = options.size;
    let (left, top, width, height) = placement.dst;
    let stride = pixels.channels;
    // Output channel -> channel of the source pixel (grey feeds all three; RGBA's alpha is skipped).
    let source_channel = |c: usize| match (stride, options.channels) {
        (1, _) => 0,
        (_, ChannelOrder::Rgb) => c,
        (_, ChannelOrder::Bgr) => 2 - c,
    };
    let pad = [0, 1, 2].map(|c| affine.apply(c, options.pad));
    let inside = |y: usize| y >= top && y < top + height;
    let source_row = |y: usize| {
        let start = (y - top) * width * stride;
        &pixels.data[start..start + width * stride]
    };
    let map = [0, 1, 2].map(source_channel);
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
                let [r0, r1, r2] = planes.map(|row| &mut row[left..left + width]);
                let src = source_row(y);
                // One pass over the source row, three output rows; the channel count is a
                // constant in each arm so the loop compiles without per-pixel branches.
                match stride {
                    1 => planar_row::<1>(src, [r0, r1, r2], map, &affine),
                    3 => planar_row::<3>(src, [r0, r1, r2], map, &affine),
                    _ => planar_row::<4>(src, [r0, r1, r2], map, &affine),
                }
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
                for (x, o) in row.chunks_exact_mut(3).enumerate() {
                    if x < left || x >= left + width {
                        o.copy_from_slice(&pad);
                        continue;
                    }
                    let px = &src[(x - left) * stride..];
                    for c in 0..3 {
                        o[c] = affine.apply(c, px[map[c]]);
                    }
                }
            }
        }
    }
}

/// Normalizes one row of `C`-channel pixels into three planar output rows.
fn planar_row<const C: usize>(src: &[u8], out: [&mut [f32]; 3], map: [usize; 3], affine: &Affine) {
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
}
