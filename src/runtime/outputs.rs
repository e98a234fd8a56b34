//! Outputs as callers receive them.

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
