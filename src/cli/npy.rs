//! `.npy` files in and out of the CLI, typed by the model's declaration.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use tract_onnx::prelude::*;

use crate::model::{ElementType, TensorSpec};
use crate::with_element_type;

/// Reads `path` as an array of the element type `spec` declares.
pub fn read(path: &Path, spec: &TensorSpec) -> Result<Tensor> {
    let Some(element) = spec.element_type else {
        bail!("element type {} cannot be read from .npy", spec.type_name());
    };
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = BufReader::new(file);
    let tensor = with_element_type!(element, T => {
        let array = ArrayD::<T>::read_npy(reader).with_context(|| {
            format!("reading {} as a {element} array", path.display())
        })?;
        Tensor::from(array)
    }, float16 => bail!("float16 .npy files are not supported by the CLI"));
    Ok(tensor)
}

/// Writes `tensor` to `path` as `.npy`.
pub fn write(path: &Path, tensor: &Tensor) -> Result<()> {
    let Some(element) = ElementType::from_datum_type(tensor.datum_type()) else {
        bail!("a {:?} tensor cannot be written to .npy", tensor.datum_type());
    };
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    with_element_type!(element, T => {
        tensor.to_plain_array_view::<T>()?.write_npy(BufWriter::new(file))?
    }, float16 => bail!("float16 tensors cannot be written to .npy by the CLI"));
    Ok(())
}

/// A short human-readable rendering of a tensor's values; for a float matrix (a batch of
/// scores), also the index of the largest value in each row: the predicted class.
pub fn preview(tensor: &Tensor) -> String {
    let mut text = format!("{tensor:?}");
    if let Ok(scores) = tensor.to_plain_array_view::<f32>() {
        if scores.ndim() == 2 {
            let best: Vec<String> = scores
                .outer_iter()
                .map(|row| {
                    let top = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                    top.map_or_else(|| "-".to_string(), |(i, _)| i.to_string())
                })
                .collect();
            text.push_str(&format!("\nargmax per row: [{}]", best.join(", ")));
        }
    }
    text
}
