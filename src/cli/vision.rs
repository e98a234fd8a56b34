//! Image files as model inputs for `run`: `--input NAME=photo.jpg[,other.png…]` plus the
//! preprocessing options (size, mean, std, …) of the vision pipeline, over the preprocessing
//! stored with the model (`set-preprocessing` writes it).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::Tensor;

use crate::model::TensorSpec;
use crate::runtime::{image_geometry, image_tensor};
use crate::vision::stored::{Channels, Size, Stored};
use crate::vision::ImageSource;

/// How image inputs are preprocessed (ignored for `.npy` inputs). Options given here override
/// the ones stored with the model; the rest come from the model, else the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
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
    /// bilinear (as Pillow; the default), bilinear_cv2 (as OpenCV INTER_LINEAR), area or nearest.
    #[arg(long)]
    resize: Option<String>,
    /// Scale to cover the output size and cut the overflow evenly.
    #[arg(long)]
    center_crop: bool,
    /// Fit inside the output size keeping the aspect ratio; margins get `--pad`.
    #[arg(long)]
    keep_aspect: bool,
    /// Letterbox margin pixel value (0–255, default 0).
    #[arg(long)]
    pad: Option<u8>,
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

/// Reads the comma-separated image files `files` as one batch for the input `spec`, with the
/// options given over `stored` (the model's stored preprocessing).
pub fn read(
    files: &str,
    spec: &TensorSpec,
    args: &ImageArgs,
    stored: Option<&Stored>,
) -> Result<Tensor> {
    let merged = args.to_stored()?.overlay(&stored.cloned().unwrap_or_default());
    let geometry = image_geometry(spec);
    if merged.size.is_none() && geometry.is_none() {
        bail!(
            "the input's shape {} has no fixed image size and the model stores none: pass --size",
            spec.shape_text()
        );
    }
    let options = merged.options(geometry)?;
    let images: Vec<ImageSource<'_>> =
        files.split(',').map(|f| ImageSource::Path(PathBuf::from(f))).collect();
    Ok(image_tensor(&images, &options, spec)?)
}

impl ImageArgs {
    /// The options given on the command line (only those).
    pub fn to_stored(&self) -> Result<Stored> {
        let channels = |values: &[f32]| match values {
            [] => None,
            _ => Some(Channels::Many(values.to_vec())),
        };
        Ok(Stored {
            size: self.size.as_deref().map(parse_size).transpose()?,
            mean: channels(&self.mean),
            std: channels(&self.std),
            layout: self.layout.clone(),
            resize: self.resize.clone(),
            crop: self.center_crop.then(|| "center".into()),
            keep_aspect: self.keep_aspect.then_some(true),
            channels: self.bgr.then(|| "BGR".into()),
            pad: self.pad,
            draft: self.no_draft.then_some(false),
        })
    }
}

fn parse_size(text: &str) -> Result<Size> {
    let parse = |s: &str| s.trim().parse::<usize>().with_context(|| format!("--size {text}"));
    match text.split_once(['x', 'X']) {
        Some((h, w)) => Ok(Size::Rect([parse(h)?, parse(w)?])),
        None => Ok(Size::Square(parse(text)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_square_or_height_by_width() {
        assert_eq!(parse_size("224").unwrap(), Size::Square(224));
        assert_eq!(parse_size("320x640").unwrap(), Size::Rect([320, 640]));
        assert!(parse_size("big").is_err());
        assert!(is_image("photo.JPG") && !is_image("x.NPY"));
    }

    #[test]
    fn flags_override_the_stored_options_field_by_field() {
        let stored =
            Stored::parse(r#"{"size": 224, "mean": 0.5, "std": 0.25, "resize": "area"}"#).unwrap();
        let args = ImageArgs { size: Some("64x32".into()), bgr: true, ..Default::default() };
        let options = args.to_stored().unwrap().overlay(&stored).options(None).unwrap();
        assert_eq!(options.size, (64, 32));
        assert_eq!(options.mean, [0.5; 3]);
        assert_eq!(options.resize, crate::vision::ResizeMode::Area);
        assert_eq!(options.channels, crate::vision::ChannelOrder::Bgr);
    }
}
