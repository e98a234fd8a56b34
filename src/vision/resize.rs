//! Output geometry (stretch, center crop, letterbox) and resampling with `fast_image_resize`.

use std::borrow::Cow;
use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{Pixels, PreprocessOptions, ResizeMode};

thread_local! {
    /// One resizer per thread: it keeps its scratch buffers (and CPU feature checks) across
    /// the images this thread resizes.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Where an image goes in its output slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Source region `(left, top, width, height)` in full-size source pixels (fractional: a
    /// center crop keeps the exact aspect ratio, as Pillow's `resize(box=...)` does).
    pub src: (f64, f64, f64, f64),
    /// Output region `(left, top, width, height)` the image is resized into; the rest of the
    /// output is letterbox padding.
    pub dst: (usize, usize, usize, usize),
}

impl Placement {
    /// Plans the geometry for a `width × height` source.
    pub fn plan(width: usize, height: usize, options: &PreprocessOptions) -> Placement {
        let (out_h, out_w) = options.size;
        let (w, h) = (width as f64, height as f64);
        let full = (0.0, 0.0, w, h);
        if options.center_crop {
            let scale = (out_w as f64 / w).max(out_h as f64 / h);
            let (box_w, box_h) = ((out_w as f64 / scale).min(w), (out_h as f64 / scale).min(h));
            let src = ((w - box_w) / 2.0, (h - box_h) / 2.0, box_w, box_h);
            Placement { src, dst: (0, 0, out_w, out_h) }
        } else if options.keep_aspect {
            let scale = (out_w as f64 / w).min(out_h as f64 / h);
            let inner_w = ((w * scale).round() as usize).clamp(1, out_w);
            let inner_h = ((h * scale).round() as usize).clamp(1, out_h);
            let dst = ((out_w - inner_w) / 2, (out_h - inner_h) / 2, inner_w, inner_h);
            Placement { src: full, dst }
        } else {
            Placement { src: full, dst: (0, 0, out_w, out_h) }
        }
    }
}

/// Resizes the placement's source region of `pixels` to the placement's output size, keeping
/// the channel count. Borrows the input when no resampling is needed.
pub fn resize<'p>(
    pixels: &'p Pixels<'_>,
    placement: &Placement,
    mode: ResizeMode,
) -> Result<Pixels<'p>, String> {
    let (_, _, out_w, out_h) = placement.dst;
    // A draft-decoded JPEG is smaller than the image the placement was planned on.
    let fx = pixels.width as f64 / pixels.full_width as f64;
    let fy = pixels.height as f64 / pixels.full_height as f64;
    let (left, top, box_w, box_h) = placement.src;
    let (left, top, box_w, box_h) = (left * fx, top * fy, box_w * fx, box_h * fy);
    let whole =
        left == 0.0 && top == 0.0 && box_w == pixels.width as f64 && box_h == pixels.height as f64;
    if whole && out_w == pixels.width && out_h == pixels.height {
        return Ok(Pixels {
            data: Cow::Borrowed(&pixels.data),
            width: pixels.width,
            height: pixels.height,
            channels: pixels.channels,
            full_width: pixels.width,
            full_height: pixels.height,
        });
    }
    if mode == ResizeMode::Nearest {
        let data = nearest(pixels, (left, top, box_w, box_h), out_w, out_h);
        return Ok(Pixels {
            data: Cow::Owned(data),
            width: out_w,
            height: out_h,
            channels: pixels.channels,
            full_width: out_w,
            full_height: out_h,
        });
    }
    let pixel_type = match pixels.channels {
        1 => PixelType::U8,
        3 => PixelType::U8x3,
        4 => PixelType::U8x4,
        n => return Err(format!("cannot resize {n}-channel pixels")),
    };
    let (src_w, src_h) = (side(pixels.width)?, side(pixels.height)?);
    let src = ImageRef::new(src_w, src_h, &pixels.data, pixel_type)
        .map_err(|e| format!("pixel buffer: {e}"))?;
    let mut dst = Image::new(side(out_w)?, side(out_h)?, pixel_type);
    let algorithm = match mode {
        ResizeMode::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        // Fixed 2-tap kernel at half-pixel centres, replicated borders: OpenCV's INTER_LINEAR.
        ResizeMode::BilinearCv2 => ResizeAlg::Interpolation(FilterType::Bilinear),
        ResizeMode::Area => ResizeAlg::Convolution(FilterType::Box),
        ResizeMode::Nearest => ResizeAlg::Nearest, // handled above
    };
    // Channels are resized independently: the 4th one of RGBA is dropped later, not used to
    // premultiply (Pillow's convert("RGB") does not composite either).
    let mut options = ResizeOptions::new().resize_alg(algorithm).use_alpha(false);
    if !whole {
        options = options.crop(left, top, box_w, box_h);
    }
    RESIZER
        .with(|resizer| match resizer.try_borrow_mut() {
            Ok(mut resizer) => resizer.resize(&src, &mut dst, &options),
            // Not reentrant, but never called reentrantly; a fresh one keeps it correct anyway.
            Err(_) => Resizer::new().resize(&src, &mut dst, &options),
        })
        .map_err(|e| format!("resize: {e}"))?;
    Ok(Pixels {
        data: Cow::Owned(dst.into_vec()),
        width: out_w,
        height: out_h,
        channels: pixels.channels,
        full_width: out_w,
        full_height: out_h,
    })
}

/// Nearest neighbour exactly as Pillow picks it (`ImagingScaleAffine`): the source coordinate
/// starts at the first output pixel's centre and grows by the scale in double precision, then
/// is floored. `fast_image_resize`'s own nearest rounds ties differently (a few % of pixels).
fn nearest(pixels: &Pixels<'_>, src: (f64, f64, f64, f64), out_w: usize, out_h: usize) -> Vec<u8> {
    let (left, top, box_w, box_h) = src;
    let pick = |start: f64, step: f64, count: usize, limit: usize| -> Vec<usize> {
        let mut at = start + step * 0.5;
        (0..count)
            .map(|_| {
                let i = (at.max(0.0) as usize).min(limit - 1);
                at += step;
                i
            })
            .collect()
    };
    let xs = pick(left, box_w / out_w as f64, out_w, pixels.width);
    let ys = pick(top, box_h / out_h as f64, out_h, pixels.height);
    let c = pixels.channels;
    let mut out = Vec::with_capacity(out_w * out_h * c);
    for &y in &ys {
        let row = &pixels.data[y * pixels.width * c..(y + 1) * pixels.width * c];
        for &x in &xs {
            out.extend_from_slice(&row[x * c..(x + 1) * c]);
        }
    }
    out
}

fn side(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("side of {n} pixels is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(h: usize, w: usize) -> PreprocessOptions {
        PreprocessOptions::new((h, w), [0.0; 3], [1.0; 3])
    }

    #[test]
    fn center_crop_takes_the_middle_at_the_output_aspect() {
        let mut opts = options(100, 100);
        opts.center_crop = true;
        let p = Placement::plan(400, 200, &opts);
        assert_eq!(p.src, (100.0, 0.0, 200.0, 200.0));
        assert_eq!(p.dst, (0, 0, 100, 100));
        opts.size = (50, 100);
        let p = Placement::plan(300, 300, &opts);
        assert_eq!(p.src, (0.0, 75.0, 300.0, 150.0));
    }

    #[test]
    fn letterbox_fits_inside_and_centres() {
        let mut opts = options(100, 100);
        opts.keep_aspect = true;
        let p = Placement::plan(400, 200, &opts);
        assert_eq!(p.src, (0.0, 0.0, 400.0, 200.0));
        assert_eq!(p.dst, (0, 25, 100, 50));
        // A sliver never collapses to zero pixels.
        let p = Placement::plan(10_000, 1, &opts);
        assert_eq!(p.dst, (0, 49, 100, 1));
    }

    fn frame(data: &[u8], w: usize, h: usize, c: usize) -> Pixels<'_> {
        let f = super::super::Frame { data, height: h, width: w, channels: c };
        Pixels::borrowed(&f).unwrap()
    }

    #[test]
    fn same_size_borrows_and_constant_images_stay_constant() {
        let data = vec![77u8; 6 * 4 * 3];
        let pixels = frame(&data, 6, 4, 3);
        let same = resize(&pixels, &Placement::plan(6, 4, &options(4, 6)), ResizeMode::Bilinear);
        assert!(matches!(same.unwrap().data, Cow::Borrowed(_)));
        for mode in
            [ResizeMode::Bilinear, ResizeMode::BilinearCv2, ResizeMode::Area, ResizeMode::Nearest]
        {
            let out = resize(&pixels, &Placement::plan(6, 4, &options(9, 3)), mode).unwrap();
            assert_eq!((out.width, out.height), (3, 9));
            assert!(out.data.iter().all(|&v| v == 77), "{mode:?}");
        }
    }

    #[test]
    fn halving_averages_pairs_and_cv2_mode_does_too() {
        // One row 0, 100, 200, 250: halving with OpenCV's bilinear or a box averages pairs;
        // Pillow's antialiased bilinear widens its triangle to 4 taps (Pillow gives 71, 207).
        let data = [0u8, 100, 200, 250];
        let pixels = frame(&data, 4, 1, 1);
        let place = Placement::plan(4, 1, &options(1, 2));
        for mode in [ResizeMode::BilinearCv2, ResizeMode::Area] {
            let out = resize(&pixels, &place, mode).unwrap();
            assert_eq!(&*out.data, &[50, 225], "{mode:?}");
        }
        assert_eq!(&*resize(&pixels, &place, ResizeMode::Bilinear).unwrap().data, &[71, 207]);
        // Downscaling by 4 separates the modes: antialiased bilinear sees all four pixels,
        // OpenCV's samples the two around the centre (1.5): (100 + 200) / 2.
        let place = Placement::plan(4, 1, &options(1, 1));
        assert_eq!(&*resize(&pixels, &place, ResizeMode::BilinearCv2).unwrap().data, &[150]);
        let aa = resize(&pixels, &place, ResizeMode::Bilinear).unwrap().data[0];
        assert!((130..=145).contains(&aa), "{aa}");
    }
}
