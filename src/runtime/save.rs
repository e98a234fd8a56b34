//! Writing a runtime: its float model, or its int8 model in QDQ form, learnable or deployable.

use std::path::Path;

use super::Runtime;
use crate::error::{Error, Result};
use crate::model::weights;
use crate::model::OnnxModel;
use crate::quantize::qdq::{self, SavedOptions, CHECKSUM_KEY, VERSION_KEY};

/// What [`Runtime::save_as`] keeps of an int8 runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveMode {
    /// The float master weights and calibration statistics too: a reload can be updated.
    #[default]
    Learnable,
    /// Only what inference needs (int8 codes, scales, biases): about a quarter of the float
    /// file; it reloads bit-identically but cannot be updated.
    Deployable,
}

impl Runtime {
    /// Writes the model to `path` atomically (a temporary file in the same folder, then a
    /// rename): the float ONNX for a float runtime; for an int8 runtime, standard ONNX in QDQ
    /// form (int8 weights, scales, zero points) that onnxruntime runs, carrying the float master
    /// weights and the calibrated parameters so `Runtime::load` rebuilds the same int8 plan.
    /// The current version's weights and number are what is written.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_as(path, SaveMode::Learnable)
    }

    /// [`Runtime::save`], keeping the float masters or not (see [`SaveMode`]; a float runtime
    /// writes its float model either way).
    pub fn save_as(&self, path: &Path, mode: SaveMode) -> Result<()> {
        crate::files::write_atomically(path, &self.to_bytes_as(mode)?)
    }

    /// The bytes [`Runtime::save`] writes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_as(SaveMode::Learnable)
    }

    /// The bytes [`Runtime::save_as`] writes.
    pub fn to_bytes_as(&self, mode: SaveMode) -> Result<Vec<u8>> {
        if self.deployable {
            return match mode {
                // Nothing can have changed: the file as it came.
                SaveMode::Deployable => Ok(self.model.onnx.to_vec()),
                SaveMode::Learnable => Err(Error::Save(format!(
                    "{} was loaded from a deployable file (learnable=False), which has no float \
                     master weights to save; save it with learnable=False",
                    self.model.source
                ))),
            };
        }
        let version = self.versions.current();
        let changed = self.changed_since_load(&version.masters);
        let unchanged = changed.is_empty() && version.number == self.loaded_version;
        if unchanged && version.quantization.is_none() {
            return Ok(self.model.onnx.to_vec()); // nothing learned: the float model as it came
        }
        let deployable = mode == SaveMode::Deployable && version.quantization.is_some();
        let mut metadata = vec![(VERSION_KEY, version.number.to_string())];
        if !deployable {
            metadata.push((CHECKSUM_KEY, weights::checksum(&version.masters)));
        }
        let proto = OnnxModel::decode(&self.model.onnx, &self.model.source)?;
        let float = weights::with_weights(proto, &changed, &metadata)?;
        let Some(q) = &version.quantization else {
            return Ok(prost::Message::encode_to_vec(&float));
        };
        let computed = version.slots.computed_layers(&version.masters)?;
        let options = SavedOptions {
            method: q.options.method.to_string(),
            per_channel: q.options.per_channel,
        };
        qdq::to_qdq(float, &q.activations, &q.input_stats, &options, &computed, deployable)
    }

    /// Whether the runtime came from a deployable file (no float masters: no updates).
    pub fn deployable(&self) -> bool {
        self.deployable
    }
}
