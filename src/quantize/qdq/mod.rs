//! The saved int8 format: standard ONNX in QDQ form that onnxruntime runs, whose metadata and
//! `_jp_` initializers let this runtime rebuild the exact int8 plan. This module owns reading
//! (`read`: our files; `import`: other quantizers' QDQ files), writing (`write`) and every
//! metadata key of the format.
//!
//! A learnable file keeps the float master weights as the original initializers and each
//! layer's calibration statistics, so a reload re-quantizes them into the same codes and live
//! updates keep working. A deployable file (`Runtime::save_with(.., Masters::Drop)`) keeps only
//! what inference needs: each layer's int8 codes (as the QDQ weight), scales and final bias.

mod import;
mod onnx_layout;
mod read;
mod write;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use write::{to_qdq, DeployedLayer};

use crate::error::Result;
use crate::model::OnnxModel;
use crate::quantize::input::InputStats;

/// The int8 layers: one line `tract layer name \t scale \t zero point` each, then
/// [`PER_ROW_FIELD`] for a layer whose input is quantized per row as it runs.
pub const LAYERS_KEY: &str = "jarvis_performance.int8_layers";
/// The last field of a per-row layer's line in [`LAYERS_KEY`].
const PER_ROW_FIELD: &str = "\tper-row";
/// The quantization options, JSON ([`SavedOptions`]); files before it: `method \t per_channel`.
pub const OPTIONS_KEY: &str = "jarvis_performance.int8_options";
/// Names of the nodes the save added, one per line (removed again on load).
pub const ADDED_NODES_KEY: &str = "jarvis_performance.added_nodes";
/// Names of the initializers the save added, one per line (removed again on load).
pub const ADDED_INITIALIZERS_KEY: &str = "jarvis_performance.added_initializers";
/// `node \t input index \t original tensor` per input the save rewired (empty original: an
/// input the save appended).
pub const REWIRED_KEY: &str = "jarvis_performance.rewired_inputs";
/// Nodes whose layer a deployable file carries as int8 numbers only (no float master, no
/// statistics), one per line; present only in deployable files.
pub const DEPLOYED_KEY: &str = "jarvis_performance.deployed_layers";
/// The `BatchNormalization` nodes a learnable file left out of its graph (folded into the
/// layer before them, which writes their output instead), one hex-encoded `NodeProto` per
/// line, put back on load.
pub const BYPASSED_KEY: &str = "jarvis_performance.bypassed_nodes";
/// The weights' version number.
pub const VERSION_KEY: &str = "jarvis_performance.version";
/// CRC-32 of the float master weights (`model::weights::checksum`).
pub const CHECKSUM_KEY: &str = "jarvis_performance.masters_crc32";

/// Every key above that only an int8 file carries (dropped when it is turned back into float).
const INT8_KEYS: [&str; 7] = [
    LAYERS_KEY,
    OPTIONS_KEY,
    ADDED_NODES_KEY,
    ADDED_INITIALIZERS_KEY,
    REWIRED_KEY,
    DEPLOYED_KEY,
    BYPASSED_KEY,
];

/// The ONNX node a tract layer name comes from: tract suffixes the nodes an operator expands to
/// (`.ab`, `.einsum`) and the parts it splits a layer into — over output channels a `Split`
/// cuts (`.split-over-1.0..64`) or input channels a `Concat` joins (`.concat-einsum-I.0..16`),
/// possibly several times.
pub fn onnx_node_name(tract_name: &str) -> &str {
    // The first `.` from which the rest is all tract suffixes ends the ONNX name.
    tract_name
        .match_indices('.')
        .map(|(at, _)| at)
        .find(|&at| at > 0 && is_tract_suffix_chain(&tract_name[at..]))
        .map_or(tract_name, |at| &tract_name[..at])
}

/// Whether `rest` is one or more tract suffixes, each starting with `.`.
fn is_tract_suffix_chain(mut rest: &str) -> bool {
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Some(after) = strip_tract_suffix(rest) else { return false };
        rest = after;
    }
    true
}

/// `rest` after its leading tract suffix, if it starts with one.
fn strip_tract_suffix(rest: &str) -> Option<&str> {
    for plain in [".ab", ".einsum"] {
        if let Some(after) = rest.strip_prefix(plain) {
            if after.is_empty() || after.starts_with('.') {
                return Some(after);
            }
        }
    }
    // `.split-over-<axis>.<start>..<end>` and `.concat-einsum-<axis label>.<start>..<end>`.
    let after = rest
        .strip_prefix(".split-over-")
        .map(|a| a.trim_start_matches(|c: char| c.is_ascii_digit()))
        .or_else(|| {
            let a = rest.strip_prefix(".concat-einsum-")?;
            let label = a.chars().next().filter(|c| c.is_alphanumeric())?;
            Some(&a[label.len_utf8()..])
        })?;
    let range = after.strip_prefix('.')?;
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let start = digits(range);
    let tail = range[start..].strip_prefix("..")?;
    let end = digits(tail);
    (start > 0 && end > 0).then_some(&tail[end..])
}

/// Initializer names of a layer's input means, lattice scales, lattice zero points, lattice
/// shifts and patch moments.
fn stats_names(layer: &str) -> [String; 5] {
    let node = onnx_node_name(layer);
    ["input_means", "input_scales", "input_zero_points", "input_shifts", "input_moments"]
        .map(|what| format!("{node}_jp_{what}"))
}

/// Initializer name of the bias a deployed layer's kernel adds (exactly, as the runtime
/// computed it; the graph's bias input may differ where the layer fused a following `Add`).
fn kernel_bias_name(layer: &str) -> String {
    format!("{}_jp_kernel_bias", onnx_node_name(layer))
}

/// The quantization options as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedOptions {
    /// The calibration method's name.
    pub method: String,
    pub per_channel: bool,
}

/// One int8 layer's activation quantization, as saved.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedLayer {
    /// The tract node name of the layer.
    pub name: String,
    pub scale: f32,
    pub zero_point: u8,
    /// Its input's calibration statistics (bias correction, 8-bit lattice) and, in a deployable
    /// file, its fixed int8 numbers; empty in files written before they existed and in other
    /// quantizers' files.
    pub input: InputStats,
}

/// The quantization a saved file carries.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedInt8 {
    pub layers: Vec<SavedLayer>,
    pub options: SavedOptions,
    /// A deployable file: no float masters for its deployed layers, so it cannot be updated.
    pub deployable: bool,
}

/// A model read from a file: the float model to analyse and the int8 quantization it carried.
#[derive(Debug, Clone)]
pub struct SavedModel {
    pub model: OnnxModel,
    pub int8: Option<SavedInt8>,
}

impl SavedModel {
    /// Reads an ONNX file; external-data files are looked up next to it.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::files::read(path)?;
        let dir = path.parent().and_then(Path::to_str).map(str::to_owned);
        Self::from_bytes(&bytes, &path.display().to_string(), dir.as_deref())
    }

    /// Reads an ONNX model held in memory (one protobuf decode). A file `Runtime::save` wrote
    /// becomes its float graph and saved quantization; a QDQ file from another quantizer, the
    /// float graph of its quantized layers and their parameters; any other model, itself.
    pub fn from_bytes(bytes: &[u8], source: &str, dir: Option<&str>) -> Result<Self> {
        crate::error::catch_load_panics(source, || Self::read(bytes, source, dir))
    }

    fn read(bytes: &[u8], source: &str, dir: Option<&str>) -> Result<Self> {
        let mut proto = OnnxModel::decode(bytes, source)?;
        let load_error = |e: crate::error::Error| crate::error::Error::ModelLoad {
            path: source.to_string(),
            reason: e.to_string(),
        };
        let int8 = match read::restore_float(&mut proto).map_err(load_error)? {
            Some(ours) => Some(ours),
            None => import::import_qdq(&mut proto).map_err(load_error)?,
        };
        let onnx = match &int8 {
            // A deployable file stays as it is: it is what saving that runtime writes again.
            Some(saved) if !saved.deployable => Arc::new(prost::Message::encode_to_vec(&proto)),
            _ => Arc::new(bytes.to_vec()),
        };
        let model = OnnxModel::from_proto(&proto, onnx, source, dir)?;
        Ok(SavedModel { model, int8 })
    }

    /// The float model to calibrate; a deployable file has none (its weights are codes).
    pub fn float_model(self) -> Result<OnnxModel> {
        match self.int8 {
            Some(saved) if saved.deployable => Err(crate::error::Error::config(
                "quantize",
                format!(
                    "{} is a deployable int8 file without float weights; load it without \
                     quantize (it runs int8 as saved)",
                    self.model.source
                ),
            )),
            _ => Ok(self.model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::onnx_node_name;

    #[test]
    fn tract_suffixes_and_split_parts_map_to_their_onnx_node() {
        let cases = [
            ("/model.2/cv1/conv/Conv", "/model.2/cv1/conv/Conv"),
            ("fc.ab", "fc"),
            ("/model.9/cv1/conv/Conv.einsum", "/model.9/cv1/conv/Conv"),
            (
                "/m.2/cv1/conv/Conv.einsum.split-over-1.0..16.split-over-1.0..16",
                "/m.2/cv1/conv/Conv",
            ),
            ("/m.2/cv2/conv/Conv.einsum.concat-einsum-I.16..32", "/m.2/cv2/conv/Conv"),
            ("/m.12/cv1/Conv.einsum.split-over-1.0..64.concat-einsum-I.0..256", "/m.12/cv1/Conv"),
            ("/m.12/cv1/Conv.split-over-1.64..128", "/m.12/cv1/Conv"),
            // Names that only look like suffixes stay whole.
            ("layer.abc", "layer.abc"),
            ("model.einsum_proj", "model.einsum_proj"),
            ("x.split-over-1.0..", "x.split-over-1.0.."),
            (".einsum", ".einsum"),
        ];
        for (tract, onnx) in cases {
            assert_eq!(onnx_node_name(tract), onnx, "{tract}");
        }
    }
}
