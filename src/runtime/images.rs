//! Images in (issue #6): the vision pipeline writes straight into the model's input tensor.

use tract_onnx::prelude::*;

use super::Runtime;
use crate::error::{Error, Result};
use crate::model::{ElementType, TensorSpec};
use crate::vision::{self, ImageSource, Layout, PreprocessOptions};

impl Runtime {
    /// Layout and `(height, width)` of the model's only input when it is a 3-channel image
    /// batch of static spatial size: `(N, 3, H, W)` is NCHW, `(N, H, W, 3)` NHWC.
    pub fn image_geometry(&self) -> Option<(Layout, (usize, usize))> {
        let [spec] = self.inputs() else { return None };
        image_geometry(spec)
    }

    /// Preprocesses `images` into the model's only input (float32) and runs the model.
    pub fn run_images(
        &self,
        images: &[ImageSource<'_>],
        options: &PreprocessOptions,
    ) -> Result<Vec<Tensor>> {
        let [spec] = self.inputs() else {
            return Err(Error::input(self.input_names(), "images feed models with one input"));
        };
        if images.is_empty() {
            return Err(Error::input(&spec.name, "no images given"));
        }
        if spec.element_type != Some(ElementType::F32) {
            let reason = format!("takes {}; images become float32", spec.type_name());
            return Err(Error::input(&spec.name, reason));
        }
        self.run(vec![image_tensor(images, options)?])
    }
}

/// Layout and `(height, width)` of an input that is a 3-channel image batch of static spatial
/// size: `(N, 3, H, W)` is NCHW, `(N, H, W, 3)` NHWC.
pub fn image_geometry(spec: &TensorSpec) -> Option<(Layout, (usize, usize))> {
    match spec.shape[..] {
        [_, Some(3), Some(h), Some(w)] => Some((Layout::Nchw, (h, w))),
        [_, Some(h), Some(w), Some(3)] => Some((Layout::Nhwc, (h, w))),
        _ => None,
    }
}

/// A float32 tensor of [`PreprocessOptions::batch_shape`] filled by the vision pipeline.
pub fn image_tensor(images: &[ImageSource<'_>], options: &PreprocessOptions) -> Result<Tensor> {
    let shape = options.batch_shape(images.len());
    let mut tensor = Tensor::zero::<f32>(&shape)
        .map_err(|e| Error::Internal(format!("allocating the image batch: {e:#}")))?;
    let internal = |e: TractError| Error::Internal(format!("image batch buffer: {e:#}"));
    {
        let mut plain = tensor.try_as_plain_ram_mut().map_err(internal)?;
        vision::preprocess_into(images, options, plain.as_slice_mut::<f32>().map_err(internal)?)?;
    }
    Ok(tensor)
}
