//! Preprocessing stored with the model: the vision options as JSON in the ONNX file's
//! `metadata_props` under [`KEY`], so `jarvis-perf run model.onnx --input input=photo.jpg` and
//! `Runtime.infer_images(images)` need no flags.
//!
//! The value is a JSON object; every field but `mean`/`std` (float models) may be left out:
//!
//! ```json
//! {"size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
//!  "layout": "NCHW", "resize": "bilinear", "crop": "center", "keep_aspect": false,
//!  "channels": "RGB", "pad": 0, "draft": true}
//! ```
//!
//! `size` is `224` or `[height, width]` (default: the model input's size), `crop` is `"center"`,
//! `"none"` or `null`, `mean`/`std` one or three numbers in 0–1 units (defaults 0 and 1).

use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::{per_channel, ChannelOrder, Layout, PreprocessOptions, ResizeMode};
use crate::error::{Error, Result};

/// The `metadata_props` key holding the JSON.
pub const KEY: &str = "jarvis_performance.preprocess";

/// An int or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Square(usize),
    Rect([usize; 2]),
}

/// One or three numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Channels {
    One(f32),
    Many(Vec<f32>),
}

/// The JSON form; `None` fields take the defaults (or the model input's size and layout).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Channels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Channels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_aspect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<bool>,
}

fn stored_error(reason: impl std::fmt::Display) -> Error {
    Error::config(KEY, format!("stored preprocessing: {reason}"))
}

impl Stored {
    /// Parses and checks the JSON text of [`KEY`].
    pub fn parse(json: &str) -> Result<Stored> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(stored_error)?;
        if !value.is_object() {
            return Err(stored_error(format!("{json:?} is not a JSON object")));
        }
        let stored: Stored = serde_json::from_value(value).map_err(stored_error)?;
        // Check every field now, whatever size the model input has.
        stored.options(Some((Layout::Nchw, (1, 1))))?;
        Ok(stored)
    }

    /// The complete record of `options` (every field written).
    pub fn from_options(options: &PreprocessOptions) -> Stored {
        let (h, w) = options.size;
        Stored {
            size: Some(if h == w { Size::Square(h) } else { Size::Rect([h, w]) }),
            mean: Some(Channels::Many(options.mean.to_vec())),
            std: Some(Channels::Many(options.std.to_vec())),
            layout: Some(options.layout.as_str().into()),
            resize: Some(options.resize.as_str().into()),
            crop: Some(if options.center_crop { "center" } else { "none" }.into()),
            keep_aspect: Some(options.keep_aspect),
            channels: Some(options.channels.as_str().into()),
            pad: Some(options.pad),
            draft: Some(options.draft),
        }
    }

    /// Each field of `self`, else of `base`: explicit options over the stored ones.
    pub fn overlay(self, base: &Stored) -> Stored {
        let base = base.clone();
        Stored {
            size: self.size.or(base.size),
            mean: self.mean.or(base.mean),
            std: self.std.or(base.std),
            layout: self.layout.or(base.layout),
            resize: self.resize.or(base.resize),
            crop: self.crop.or(base.crop),
            keep_aspect: self.keep_aspect.or(base.keep_aspect),
            channels: self.channels.or(base.channels),
            pad: self.pad.or(base.pad),
            draft: self.draft.or(base.draft),
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and arrays cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether `mean` and `std` are given (float models need them, or accept 0 and 1).
    pub fn has_normalization(&self) -> bool {
        self.mean.is_some() || self.std.is_some()
    }

    /// The options, with size and layout from `geometry` (the model input's) where the record
    /// leaves them out.
    pub fn options(&self, geometry: Option<(Layout, (usize, usize))>) -> Result<PreprocessOptions> {
        let size = match (self.size, geometry) {
            (Some(Size::Square(side)), _) => (side, side),
            (Some(Size::Rect([h, w])), _) => (h, w),
            (None, Some((_, size))) => size,
            (None, None) => {
                return Err(stored_error("no \"size\", and the model input has no fixed size"))
            }
        };
        let channels = |option: &str, value: &Option<Channels>, default: f32| match value {
            None => Ok([default; 3]),
            Some(Channels::One(v)) => Ok([*v; 3]),
            Some(Channels::Many(v)) => per_channel(option, v),
        };
        let mut options = PreprocessOptions::new(
            size,
            channels("mean", &self.mean, 0.0)?,
            channels("std", &self.std, 1.0)?,
        );
        options.layout = match (&self.layout, geometry) {
            (Some(text), _) => text.parse()?,
            (None, Some((layout, _))) => layout,
            (None, None) => Layout::Nchw,
        };
        if let Some(text) = &self.resize {
            options.resize = text.parse()?;
        }
        options.center_crop = match self.crop.as_deref() {
            None | Some("none") => false,
            Some("center") => true,
            Some(other) => {
                return Err(Error::config("crop", format!("{other:?}: use \"center\" or \"none\"")))
            }
        };
        options.keep_aspect = self.keep_aspect.unwrap_or(false);
        if let Some(text) = &self.channels {
            options.channels = text.parse()?;
        }
        options.pad = self.pad.unwrap_or(0);
        options.draft = self.draft.unwrap_or(true);
        options.validate().map_err(stored_error)?;
        Ok(options)
    }
}

/// The stored preprocessing of a decoded model, if it has one.
pub fn read(proto: &pb::ModelProto) -> Option<&str> {
    proto.metadata_props.iter().find(|p| p.key == KEY).map(|p| p.value.as_str())
}

/// Stores `stored` in the ONNX file at `path` (or removes it for `None`), rewriting the file
/// atomically: a crash leaves the old file or the new one.
pub fn write_file(path: &Path, stored: Option<&Stored>) -> Result<()> {
    let source = path.display().to_string();
    let mut proto = crate::files::decode_onnx(&crate::files::read(path)?, &source)?;
    let load_error = |reason: String| Error::ModelLoad { path: source.clone(), reason };
    if proto.graph.is_none() {
        return Err(load_error("the protobuf holds no graph (is this an ONNX model?)".into()));
    }
    proto.metadata_props.retain(|p| p.key != KEY);
    if let Some(stored) = stored {
        proto
            .metadata_props
            .push(pb::StringStringEntryProto { key: KEY.into(), value: stored.to_json() });
    }
    crate::files::write_atomically(path, &proto.encode_to_vec())
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

impl ResizeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeMode::Bilinear => "bilinear",
            ResizeMode::BilinearCv2 => "bilinear_cv2",
            ResizeMode::Area => "area",
            ResizeMode::Nearest => "nearest",
        }
    }
}

impl ChannelOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelOrder::Rgb => "RGB",
            ChannelOrder::Bgr => "BGR",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_json() {
        let mut options = PreprocessOptions::new((160, 300), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]);
        options.layout = Layout::Nhwc;
        options.resize = ResizeMode::BilinearCv2;
        options.keep_aspect = true;
        options.pad = 114;
        options.channels = ChannelOrder::Bgr;
        options.draft = false;
        let json = Stored::from_options(&options).to_json();
        let back = Stored::parse(&json).unwrap().options(None).unwrap();
        assert_eq!(back, options);
    }

    #[test]
    fn missing_fields_take_defaults_and_the_model_geometry() {
        let stored = Stored::parse(r#"{"mean": 0.5, "std": [0.25]}"#).unwrap();
        let options = stored.options(Some((Layout::Nhwc, (32, 48)))).unwrap();
        assert_eq!(options.size, (32, 48));
        assert_eq!(options.layout, Layout::Nhwc);
        assert_eq!(options.mean, [0.5; 3]);
        assert_eq!(options.std, [0.25; 3]);
        assert!(stored.options(None).is_err(), "no size anywhere");
    }

    #[test]
    fn bad_records_are_config_errors_naming_the_key() {
        for json in [
            "not json",
            r#"{"size": 224, "colour": "red"}"#,
            r#"{"size": 224, "std": [0, 1, 1]}"#,
            r#"{"size": 224, "resize": "bicubic"}"#,
            r#"{"size": 224, "crop": "top"}"#,
            r#"{"size": [224], "mean": 0}"#,
            r#"{"size": 224, "mean": [1, 2]}"#,
        ] {
            let err = Stored::parse(json).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{json}: {err}");
        }
        let err = Stored::parse("[]").unwrap_err().to_string();
        assert!(err.contains(KEY), "{err}");
    }
}
