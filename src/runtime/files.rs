//! Output conversion and atomic file writes.

use std::path::Path;

use tract_onnx::prelude::*;

use crate::error::{Error, Result};

/// Casts tract-internal element types to what callers exchange (symbolic dims → int64).
pub(super) fn exchangeable(value: TValue) -> Result<Tensor> {
    let tensor = value.into_tensor();
    if tensor.datum_type() != DatumType::TDim {
        return Ok(tensor);
    }
    tensor
        .cast_to::<i64>()
        .map(|t| t.into_owned())
        .map_err(|e| Error::Inference(format!("a shape output is not a whole number: {e:#}")))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash leaves either the old file or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |context: String| move |source| Error::Io { context, source };
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io(format!("writing {}", tmp.display())))
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
