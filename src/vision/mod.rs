//! The vision pipeline: images (in-memory frames, files or encoded bytes) to one normalized
//! float batch, ready to feed a model.
//!
//! Each image is decoded ([`decode`]; JPEGs at a reduced DCT scale when the output is much
//! smaller), resized with `fast_image_resize` ([`resize`]), then normalized and laid out
//! straight into its slot of the caller's batch buffer ([`normalize`]). Images run in parallel
//! on rayon; a failing image becomes [`Error::Image`] naming its index, never a panic.

mod decode;
mod normalize;
mod resize;
pub mod stored;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;

use crate::error::{Error, Result};

pub use decode::Pixels;
pub use normalize::Element;
pub use resize::Placement;

/// Where the channel axis goes in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `(N, 3, H, W)`, what PyTorch-exported models take.
    #[default]
    Nchw,
    /// `(N, H, W, 3)`, what TensorFlow-exported models take.
    Nhwc,
}

/// How pixels are resampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// Bilinear with antialiasing on downscale (the filter widens with the scale), as Pillow's
    /// `Image.resize(..., BILINEAR)` and torchvision's `Resize(antialias=True)`.
    #[default]
    Bilinear,
    /// Bilinear from the 2×2 nearest source pixels, no antialiasing: OpenCV's
    /// `cv2.resize(..., INTER_LINEAR)`, which many exported detectors were trained with.
    BilinearCv2,
    /// Box filter (area average), as Pillow's `BOX` and close to OpenCV's `INTER_AREA`.
    Area,
    /// Nearest neighbour (pixel centres), as Pillow's `NEAREST`.
    Nearest,
}

/// The order of the three output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

/// Options of [`preprocess`]. `mean` and `std` are in units of the 0–1 pixel range
/// (torchvision's convention): `out = (pixel / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessOptions {
    /// Output `(height, width)`.
    pub size: (usize, usize),
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: Layout,
    pub resize: ResizeMode,
    /// Scale the image to cover the output and cut the overflow evenly from both sides
    /// (the aspect ratio is kept).
    pub center_crop: bool,
    /// Without `center_crop`: scale the image to fit inside the output, keeping its aspect
    /// ratio, and fill the margins (centred letterbox) with `pad`.
    pub keep_aspect: bool,
    pub channels: ChannelOrder,
    /// Pixel value (0–255, before normalization) of letterbox margins.
    pub pad: u8,
    /// Decode JPEG files and bytes at 1/4 or 1/8 scale (reduced IDCT) when the decoded
    /// image still covers at least twice the output size; much faster, slightly different
    /// from a full decode.
    pub draft: bool,
}

impl PreprocessOptions {
    /// Options for a square or rectangular output with `mean`/`std`, everything else default.
    pub fn new(size: (usize, usize), mean: [f32; 3], std: [f32; 3]) -> Self {
        PreprocessOptions {
            size,
            mean,
            std,
            layout: Layout::Nchw,
            resize: ResizeMode::Bilinear,
            center_crop: false,
            keep_aspect: false,
            channels: ChannelOrder::Rgb,
            pad: 0,
            draft: true,
        }
    }

    /// Checks the options once, before any image is touched.
    pub fn validate(&self) -> Result<()> {
        let (h, w) = self.size;
        if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE {
            return Err(Error::config(
                "size",
                format!("{h}x{w}: each side must be 1..={MAX_SIDE}"),
            ));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::config("mean", format!("{:?}: must be finite", self.mean)));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(Error::config(
                "std",
                format!("{:?}: must be finite and non-zero", self.std),
            ));
        }
        Ok(())
    }

    /// The shape of a batch of `n` images.
    pub fn batch_shape(&self, n: usize) -> Vec<usize> {
        let (h, w) = self.size;
        match self.layout {
            Layout::Nchw => vec![n, 3, h, w],
            Layout::Nhwc => vec![n, h, w, 3],
        }
    }

    fn values_per_image(&self) -> usize {
        3 * self.size.0 * self.size.1
    }
}

/// Largest output side accepted; far above any model input, low enough that sizes never overflow.
const MAX_SIDE: usize = 1 << 15;

/// An in-memory frame: `height × width × channels` bytes, row-major and contiguous, with 1
/// (grey), 3 (RGB) or 4 (RGBA; alpha is dropped) channels.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

/// One image of a batch.
#[derive(Debug, Clone)]
pub enum ImageSource<'a> {
    Frame(Frame<'a>),
    /// An image file (format from its content).
    Path(PathBuf),
    /// An encoded image file's bytes (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM).
    Encoded(&'a [u8]),
}

impl ImageSource<'_> {
    /// How errors name the image.
    fn origin(&self) -> String {
        match self {
            ImageSource::Frame(f) => format!("{}x{}x{} array", f.height, f.width, f.channels),
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Encoded(b) => format!("{} bytes", b.len()),
        }
    }
}

/// Preprocesses `images` into a new batch of [`PreprocessOptions::batch_shape`]: float32 or
/// float16 normalized values, or uint8 resized pixels (see [`Element`]).
pub fn preprocess<T: Element>(
    images: &[ImageSource<'_>],
    options: &PreprocessOptions,
) -> Result<ArrayD<T>> {
    options.validate()?;
    let shape = options.batch_shape(images.len());
    let mut batch = ArrayD::<T>::from_elem(IxDyn(&shape), T::default());
    let out = batch
        .as_slice_mut()
        .ok_or_else(|| Error::Internal("a fresh batch array is not contiguous".into()))?;
    preprocess_into(images, options, out)?;
    Ok(batch)
}

/// Preprocesses `images` into `out`, which holds exactly one batch of
/// [`PreprocessOptions::batch_shape`] in standard (row-major) order. Every value is written.
pub fn preprocess_into<T: Element>(
    images: &[ImageSource<'_>],
    options: &PreprocessOptions,
    out: &mut [T],
) -> Result<()> {
    options.validate()?;
    let per_image = options.values_per_image();
    if out.len() != per_image * images.len() {
        return Err(Error::Internal(format!(
            "batch buffer holds {} values, {} images need {}",
            out.len(),
            images.len(),
            per_image * images.len()
        )));
    }
    if images.is_empty() {
        return Ok(());
    }
    let failures: Vec<Error> = out
        .par_chunks_mut(per_image)
        .zip(images.par_iter())
        .enumerate()
        .filter_map(|(index, (slot, image))| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                process_one(image, options, slot)
            }));
            let reason = match result {
                Ok(Ok(())) => return None,
                Ok(Err(reason)) => reason,
                // A decoder bug on hostile input must not take the process down.
                Err(_) => "the decoder panicked on this image".to_string(),
            };
            Some(Error::Image { index, origin: image.origin(), reason })
        })
        .collect();
    first_failure(failures)
}

/// The first failing image (by index) as the error, mentioning how many others failed so that
/// no failure goes unnoticed.
fn first_failure(mut failures: Vec<Error>) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let others: Vec<String> = failures
        .iter()
        .skip(1)
        .filter_map(|e| match e {
            Error::Image { index, .. } => Some(index.to_string()),
            _ => None,
        })
        .collect();
    let mut first = failures.swap_remove(0);
    if let Error::Image { reason, .. } = &mut first {
        if !others.is_empty() {
            reason.push_str(&format!(
                " (and {} more image(s) failed: {})",
                others.len(),
                others.join(", ")
            ));
        }
    }
    Err(first)
}

/// Decode (if needed), resize, normalize: one image into its slot. Errors are plain reasons;
/// the caller adds the index and origin.
fn process_one<T: Element>(
    image: &ImageSource<'_>,
    options: &PreprocessOptions,
    slot: &mut [T],
) -> std::result::Result<(), String> {
    let pixels = match image {
        ImageSource::Frame(frame) => Pixels::borrowed(frame)?,
        ImageSource::Path(path) => decode::decode(&read_file(path)?, options)?,
        ImageSource::Encoded(bytes) => decode::decode(bytes, options)?,
    };
    let placement = Placement::plan(pixels.full_width, pixels.full_height, options);
    let resized = resize::resize(&pixels, &placement, options.resize)?;
    normalize::write(&resized, &placement, options, slot);
    Ok(())
}

fn read_file(path: &Path) -> std::result::Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))
}

/// Parses the option names shared by Python and the CLI.
impl FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "NCHW" => Ok(Layout::Nchw),
            "NHWC" => Ok(Layout::Nhwc),
            _ => Err(Error::config("layout", format!("{s:?}: use \"NCHW\" or \"NHWC\""))),
        }
    }
}

impl FromStr for ResizeMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bilinear" => Ok(ResizeMode::Bilinear),
            "bilinear_cv2" => Ok(ResizeMode::BilinearCv2),
            "area" => Ok(ResizeMode::Area),
            "nearest" => Ok(ResizeMode::Nearest),
            _ => Err(Error::config(
                "resize",
                format!("{s:?}: use \"bilinear\", \"bilinear_cv2\", \"area\" or \"nearest\""),
            )),
        }
    }
}

impl FromStr for ChannelOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "RGB" => Ok(ChannelOrder::Rgb),
            "BGR" => Ok(ChannelOrder::Bgr),
            _ => Err(Error::config("channels", format!("{s:?}: use \"RGB\" or \"BGR\""))),
        }
    }
}

/// Extends a 1- or 3-value `mean`/`std` option to three channels.
pub fn per_channel(option: &str, values: &[f32]) -> Result<[f32; 3]> {
    match *values {
        [v] => Ok([v; 3]),
        [r, g, b] => Ok([r, g, b]),
        _ => Err(Error::config(option, format!("{values:?}: give 1 or 3 values"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(h: usize, w: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn identity_size_normalizes_every_pixel_exactly() {
        let data = gradient(4, 5);
        let frame = Frame { data: &data, height: 4, width: 5, channels: 3 };
        let options = PreprocessOptions::new((4, 5), [0.5, 0.25, 0.0], [0.5, 0.25, 2.0]);
        let batch = preprocess::<f32>(&[ImageSource::Frame(frame)], &options).unwrap();
        assert_eq!(batch.shape(), &[1, 3, 4, 5]);
        for y in 0..4 {
            for x in 0..5 {
                for c in 0..3 {
                    let px = data[(y * 5 + x) * 3 + c] as f32 / 255.0;
                    let want = (px - options.mean[c]) / options.std[c];
                    assert!((batch[[0, c, y, x]] - want).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn nhwc_and_bgr_permute_the_same_values() {
        let data = gradient(6, 7);
        let frame = Frame { data: &data, height: 6, width: 7, channels: 3 };
        let mut options = PreprocessOptions::new((3, 4), [0.0; 3], [1.0; 3]);
        let nchw = preprocess::<f32>(&[ImageSource::Frame(frame)], &options).unwrap();
        options.layout = Layout::Nhwc;
        options.channels = ChannelOrder::Bgr;
        let nhwc = preprocess::<f32>(&[ImageSource::Frame(frame)], &options).unwrap();
        assert_eq!(nhwc.shape(), &[1, 3, 4, 3]);
        for y in 0..3 {
            for x in 0..4 {
                for c in 0..3 {
                    assert_eq!(nchw[[0, c, y, x]], nhwc[[0, y, x, 2 - c]]);
                }
            }
        }
    }

    #[test]
    fn a_corrupt_image_names_its_index_and_the_count_of_others() {
        let data = gradient(2, 2);
        let good = ImageSource::Frame(Frame { data: &data, height: 2, width: 2, channels: 3 });
        let junk = ImageSource::Encoded(b"not an image at all");
        let images = [good.clone(), junk.clone(), good, junk];
        let err = preprocess::<f32>(&images, &PreprocessOptions::new((2, 2), [0.0; 3], [1.0; 3]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("image 1 (19 bytes):"), "{err}");
        assert!(err.contains("and 1 more image(s) failed: 3"), "{err}");
    }

    #[test]
    fn bad_options_are_refused() {
        let mut options = PreprocessOptions::new((0, 4), [0.0; 3], [1.0; 3]);
        assert!(matches!(options.validate(), Err(Error::Config { .. })));
        options.size = (4, 4);
        options.std = [1.0, 0.0, 1.0];
        assert!(matches!(options.validate(), Err(Error::Config { .. })));
        assert!(per_channel("mean", &[1.0, 2.0]).is_err());
        assert_eq!(per_channel("mean", &[0.5]).unwrap(), [0.5; 3]);
        assert!("NCWH".parse::<Layout>().is_err());
        assert_eq!("bilinear_cv2".parse::<ResizeMode>().unwrap(), ResizeMode::BilinearCv2);
    }

    #[test]
    fn empty_batch_is_empty() {
        let options = PreprocessOptions::new((8, 8), [0.0; 3], [1.0; 3]);
        assert_eq!(preprocess::<f32>(&[], &options).unwrap().shape(), &[0, 3, 8, 8]);
    }
}
