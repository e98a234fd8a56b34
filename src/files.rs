//! Reading and atomically writing files, and decoding ONNX protobufs: the small file utilities
//! every layer may use (a leaf: it uses only `error`).

use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash leaves either the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
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

/// The bytes of the file at `path`; a missing file is `FileNotFound` (Python's
/// `FileNotFoundError`), any other failure `Io`.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::FileNotFound(path.to_path_buf()),
        _ => Error::Io { context: format!("reading {}", path.display()), source },
    })
}

/// Decodes an ONNX `ModelProto`; `source` names the model in the error.
pub fn decode_onnx(bytes: &[u8], source: &str) -> Result<pb::ModelProto> {
    pb::ModelProto::decode(bytes).map_err(|e| Error::ModelLoad {
        path: source.to_string(),
        reason: format!("not a valid ONNX protobuf ({e})"),
    })
}
