//! Image files as model inputs for `run`: `--input NAME=photo.jpg[,other.png…]` plus the
//! preprocessing options (size, mean, std, …) of the vision pipeline.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::Tensor;

use crate::model::{ElementType, TensorSpec};
use crate::runtime::{image_geometry, image_tensor};
use crate::vision::{self, ChannelOrder, ImageSource, PreprocessOptions};

/// How image inputs are preprocessed (ignored for `.npy` inputs).
#[derive(Debug, Clone, clap::Args)]
pub struct ImageArgs {
    /// Output size of image inputs: `224` or `HxW` (default: the model input's size).
    #[arg(long, value_name = "N|HxW")]
    size: Option<String>,
    /// Mean per channel in 0–1 units, e.g. `0.485,0.456,0.406` (default 0).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    mean: Vec<f32>,
    /// Standard deviation per channel in 0–1 units, e.g. `0.229,0.224,0.225` (default 1).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    std: Vec<f32>,
    /// NCHW or NHWC (default: the model input's layout, else NCHW).
    #[arg(long)]
    layout: Option<String>,
    /// bilinear (as Pillow), bilinear_cv2 (as OpenCV INTER_LINEAR), area or nearest.
    #[arg(long, default_value = "bilinear")]
    resize: String,
    /// Scale to cover the output size and cut the overflow evenly.
    #[arg(long)]
    center_crop: bool,
    /// Fit inside the output size keeping the aspect ratio; margins get `--pad`.
    #[arg(long)]
    keep_aspect: bool,
    /// Letterbox margin pixel value (0–255).
    #[arg(long, default_value_t = 0)]
    pad: u8,
    /// Output channels in BGR order.
    #[arg(long)]
    bgr: bool,
    /// Decode JPEGs at full size even when a reduced-scale decode would do.
    #[arg(long)]
    no_draft: bool,
}

/// Whether an `--input` file is read as an image rather than as a `.npy` array.
pub fn is_image(file: &str) -> bool {
    !file.to_ascii_lowercase().ends_with(".npy")
}

/// Reads the comma-separated image files `files` as one batch for the input `spec`.
pub fn read(files: &str, spec: &TensorSpec, args: &ImageArgs) -> Result<Tensor> {
    if spec.element_type != Some(ElementType::F32) {
        bail!("takes {}; image files become float32", spec.type_name());
    }
    let options = args.options(spec)?;
    let images: Vec<ImageSource<'_>> =
        files.split(',').map(|f| ImageSource::Path(PathBuf::from(f))).collect();
    Ok(image_tensor(&images, &options)?)
}

impl ImageArgs {
    fn options(&self, spec: &TensorSpec) -> Result<PreprocessOptions> {
        let geometry = image_geometry(spec);
        let size = match (&self.size, geometry) {
            (Some(text), _) => parse_size(text)?,
            (None, Some((_, size))) => size,
            (None, None) => bail!(
                "the input's shape {} has no fixed image size: pass --size",
                spec.shape_text()
            ),
        };
        let mean =
            if self.mean.is_empty() { [0.0; 3] } else { vision::per_channel("mean", &self.mean)? };
        let std =
            if self.std.is_empty() { [1.0; 3] } else { vision::per_channel("std", &self.std)? };
        let mut options = PreprocessOptions::new(size, mean, std);
        options.layout = match (&self.layout, geometry) {
            (Some(text), _) => text.parse()?,
            (None, Some((layout, _))) => layout,
            (None, None) => options.layout,
        };
        options.resize = self.resize.parse()?;
        options.center_crop = self.center_crop;
        options.keep_aspect = self.keep_aspect;
        options.pad = self.pad;
        options.channels = if self.bgr { ChannelOrder::Bgr } else { ChannelOrder::Rgb };
        options.draft = !self.no_draft;
        options.validate()?;
        Ok(options)
    }
}

fn parse_size(text: &str) -> Result<(usize, usize)> {
    let parse = |s: &str| s.trim().parse::<usize>().with_context(|| format!("--size {text}"));
    match text.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => {
            let side = parse(text)?;
            Ok((side, side))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_square_or_height_by_width() {
        assert_eq!(parse_size("224").unwrap(), (224, 224));
        assert_eq!(parse_size("320x640").unwrap(), (320, 640));
        assert!(parse_size("big").is_err());
        assert!(is_image("photo.JPG") && !is_image("x.NPY"));
    }
}
