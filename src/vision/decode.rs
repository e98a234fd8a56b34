//! Encoded images (PNG, JPEG, BMP, …) to 8-bit pixels with 1, 3 or 4 channels.
//!
//! JPEGs go through `jpeg-decoder` when a reduced-size IDCT (1/4, 1/8) still leaves at
//! least twice the output size: the decoder then skips most of the inverse DCT and colour
//! conversion work. Everything else (and JPEGs at full size) goes through the `image` crate.

use std::borrow::Cow;
use std::io::Cursor;

use image::{DynamicImage, ImageReader};

use super::resize::Placement;
use super::{Frame, PreprocessOptions, ResizeMode};

/// Decoded (or borrowed) 8-bit pixels, row-major, `channels` interleaved.
#[derive(Debug, Clone)]
pub struct Pixels<'a> {
    pub data: Cow<'a, [u8]>,
    pub width: usize,
    pub height: usize,
    /// 1 (grey), 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    /// The image's size before a reduced-scale decode (equal to `width`/`height` otherwise):
    /// output geometry is planned on it, so a draft decode changes the detail, not the framing.
    pub full_width: usize,
    pub full_height: usize,
}

/// Allocation cap for one decoded image: far above any photo, stops decompression bombs.
const MAX_DECODED_BYTES: usize = 512 << 20;

impl<'a> Pixels<'a> {
    /// Views an in-memory frame without copying it, after checking its geometry.
    pub fn borrowed(frame: &Frame<'a>) -> Result<Self, String> {
        let Frame { data, height, width, channels } = *frame;
        if !matches!(channels, 1 | 3 | 4) {
            return Err(format!("{channels} channels: frames have 1 (grey), 3 (RGB) or 4 (RGBA)"));
        }
        if height == 0 || width == 0 {
            return Err(format!("empty frame ({height}x{width})"));
        }
        if u32::try_from(height.max(width)).is_err() {
            return Err(format!("frame too large ({height}x{width})"));
        }
        if data.len() != height * width * channels {
            return Err(format!("{} bytes for {height}x{width}x{channels}", data.len()));
        }
        Ok(Pixels {
            data: Cow::Borrowed(data),
            width,
            height,
            channels,
            full_width: width,
            full_height: height,
        })
    }

    fn owned(data: Vec<u8>, width: usize, height: usize, channels: usize) -> Self {
        Pixels {
            data: Cow::Owned(data),
            width,
            height,
            channels,
            full_width: width,
            full_height: height,
        }
    }
}

/// Decodes an encoded image. `options` decide whether a JPEG may be decoded at reduced scale.
pub fn decode(bytes: &[u8], options: &PreprocessOptions) -> Result<Pixels<'static>, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    if is_jpeg(bytes) {
        check_jpeg_complete(bytes)?;
    }
    if options.draft && is_jpeg(bytes) && antialiased(options.resize) {
        if let Some(pixels) = decode_jpeg_draft(bytes, options)? {
            return Ok(pixels);
        }
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    if reader.format().is_none() {
        return Err("not an image in a known format (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM)".into());
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES as u64);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| format!("cannot decode: {e}"))?;
    Ok(from_dynamic(image))
}

/// Keeps 8-bit grey, RGB and RGBA as they are; converts every other pixel format to RGB (grey
/// with alpha to grey), dropping alpha without compositing, as Pillow's `convert("RGB")` does.
fn from_dynamic(image: DynamicImage) -> Pixels<'static> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    match image {
        DynamicImage::ImageLuma8(img) => Pixels::owned(img.into_raw(), width, height, 1),
        DynamicImage::ImageRgb8(img) => Pixels::owned(img.into_raw(), width, height, 3),
        DynamicImage::ImageRgba8(img) => Pixels::owned(img.into_raw(), width, height, 4),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLuma16(_) => {
            Pixels::owned(image.to_luma8().into_raw(), width, height, 1)
        }
        other => Pixels::owned(other.to_rgb8().into_raw(), width, height, 3),
    }
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Refuses a truncated JPEG: the `image` crate's decoder (zune-jpeg) fills a cut-off image
/// with grey and reports success, where Pillow raises "image file is truncated". A complete
/// file has an end-of-image marker (FF D9) after its last start-of-scan (FF DA): inside
/// entropy-coded data 0xFF is always followed by 0x00 or a restart marker, and an embedded
/// EXIF thumbnail's markers come before the main image's scans.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let complete =
        last_scan.is_some_and(|at| bytes[at + 2..].windows(2).any(|w| w == [0xFF, 0xD9]));
    if complete {
        Ok(())
    } else {
        Err("cannot decode: truncated JPEG (no end-of-image marker after the last scan)".into())
    }
}

/// Modes whose filter widens on downscale, so detail removed by a reduced IDCT was going to
/// be averaged away anyway. The exact (OpenCV, nearest) modes always decode at full size.
fn antialiased(mode: ResizeMode) -> bool {
    matches!(mode, ResizeMode::Bilinear | ResizeMode::Area)
}

/// The largest IDCT reduction (8 or 4; 1 = none) that keeps the source region of the output
/// at least twice the size of the region it is resized into, on both axes.
pub fn draft_denominator(width: usize, height: usize, placement: &Placement) -> usize {
    let (_, _, box_w, box_h) = placement.src;
    let (_, _, out_w, out_h) = placement.dst;
    // Not 2: `jpeg-decoder` at 1/2 scale plus the smaller resize costs more CPU than the
    // `image` crate's (zune-jpeg) full decode plus the full resize (measured on 1080p JPEGs
    // to 224: 125 vs 109 ms for 16 images); at 1/4 and 1/8 the reduced decode wins.
    [8, 4]
        .into_iter()
        .find(|&d| {
            let d = d as f64;
            // The decoder rounds the reduced size up: ceil(side / d).
            let scaled_w = box_w * (width as f64 / d).ceil() / width as f64;
            let scaled_h = box_h * (height as f64 / d).ceil() / height as f64;
            scaled_w >= 2.0 * out_w as f64 && scaled_h >= 2.0 * out_h as f64
        })
        .unwrap_or(1)
}

/// Decodes a JPEG at reduced scale; `Ok(None)` when a reduction does not pay off or the pixel
/// format needs the `image` crate's conversions (CMYK, 16-bit).
fn decode_jpeg_draft(
    bytes: &[u8],
    options: &PreprocessOptions,
) -> Result<Option<Pixels<'static>>, String> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(MAX_DECODED_BYTES);
    decoder.read_info().map_err(|e| format!("cannot decode JPEG: {e}"))?;
    let Some(info) = decoder.info() else { return Ok(None) };
    let channels = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        _ => return Ok(None),
    };
    let (full_w, full_h) = (usize::from(info.width), usize::from(info.height));
    if full_w == 0 || full_h == 0 {
        return Err("JPEG with an empty frame".into());
    }
    let placement = Placement::plan(full_w, full_h, options);
    let denominator = draft_denominator(full_w, full_h, &placement);
    if denominator == 1 {
        return Ok(None);
    }
    let want_w = full_w.div_ceil(denominator) as u16;
    let want_h = full_h.div_ceil(denominator) as u16;
    let (width, height) =
        decoder.scale(want_w, want_h).map_err(|e| format!("cannot decode JPEG: {e}"))?;
    let data = decoder.decode().map_err(|e| format!("cannot decode JPEG: {e}"))?;
    let (width, height) = (usize::from(width), usize::from(height));
    if data.len() != width * height * channels {
        return Err(format!("JPEG decoder returned {} bytes for {width}x{height}", data.len()));
    }
    let mut pixels = Pixels::owned(data, width, height, channels);
    pixels.full_width = full_w;
    pixels.full_height = full_h;
    Ok(Some(pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(image: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn noise_rgb(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            let v = (x * 7 + y * 13) as u8;
            image::Rgb([v, v.wrapping_mul(3), 255 - v])
        })
    }

    #[test]
    fn png_round_trips_exactly_in_every_channel_count() {
        let options = PreprocessOptions::new((8, 8), [0.0; 3], [1.0; 3]);
        let rgb = noise_rgb(9, 5);
        let png = encode(DynamicImage::ImageRgb8(rgb.clone()), image::ImageFormat::Png);
        let pixels = decode(&png, &options).unwrap();
        assert_eq!((pixels.width, pixels.height, pixels.channels), (9, 5, 3));
        assert_eq!(&*pixels.data, rgb.as_raw().as_slice());
        let grey = DynamicImage::ImageRgb8(rgb).to_luma_alpha8();
        let png = encode(DynamicImage::ImageLumaA8(grey.clone()), image::ImageFormat::Png);
        let pixels = decode(&png, &options).unwrap();
        assert_eq!(pixels.channels, 1);
        let luma: Vec<u8> = grey.pixels().map(|p| p.0[0]).collect();
        assert_eq!(&*pixels.data, luma.as_slice());
    }

    #[test]
    fn truncated_and_random_bytes_are_errors_not_panics() {
        let options = PreprocessOptions::new((8, 8), [0.0; 3], [1.0; 3]);
        let jpeg = encode(DynamicImage::ImageRgb8(noise_rgb(64, 64)), image::ImageFormat::Jpeg);
        assert!(decode(&jpeg, &options).is_ok());
        for cut in [3, 20, jpeg.len() / 2] {
            assert!(decode(&jpeg[..cut], &options).is_err(), "cut at {cut}");
        }
        // At full size too (the `image` crate's decoder, which alone would accept a cut file).
        let full = PreprocessOptions { draft: false, ..options.clone() };
        for cut in [jpeg.len() / 2, jpeg.len() - 2] {
            let err = decode(&jpeg[..cut], &full).unwrap_err();
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
        }
        // Bytes after the end-of-image marker (some cameras append data) are fine.
        let mut padded = jpeg.clone();
        padded.extend_from_slice(b"trailing data");
        assert!(decode(&padded, &full).is_ok());
        assert!(decode(b"", &options).unwrap_err().contains("empty"));
        assert!(decode(&[7u8; 100], &options).unwrap_err().contains("known format"));
    }

    #[test]
    fn jpeg_draft_decodes_at_reduced_scale_only_when_it_keeps_twice_the_output() {
        let jpeg = encode(DynamicImage::ImageRgb8(noise_rgb(640, 480)), image::ImageFormat::Jpeg);
        let mut options = PreprocessOptions::new((56, 56), [0.0; 3], [1.0; 3]);
        let pixels = decode(&jpeg, &options).unwrap();
        // 480 / 4 = 120 >= 2 * 56, 480 / 8 = 60 < 112.
        assert_eq!((pixels.width, pixels.height), (160, 120));
        assert_eq!((pixels.full_width, pixels.full_height), (640, 480));
        options.size = (300, 300);
        assert_eq!(decode(&jpeg, &options).unwrap().width, 640);
        // 1/2 would keep twice the output (240 >= 224), but a half-scale decode does not pay.
        options.size = (112, 112);
        assert_eq!(decode(&jpeg, &options).unwrap().width, 640);
        options.size = (56, 56);
        options.draft = false;
        assert_eq!(decode(&jpeg, &options).unwrap().width, 640);
        options.draft = true;
        options.resize = ResizeMode::BilinearCv2;
        assert_eq!(decode(&jpeg, &options).unwrap().width, 640);
    }
}
