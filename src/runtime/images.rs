//! Images in (issue #6): the vision pipeline writes straight into the model's input tensor.

use tract_onnx::prelude::*;

use super::Runtime;
use crate::error::{Error, Result};
use crate::model::{ElementType, TensorSpec};
use crate::vision::stored::Stored;
use crate::vision::{self, Element, ImageSource, Layout, PreprocessOptions};

impl Runtime {
    /// Layout and `(height, width)` of the model's only input when it is a 3-channel image
    /// batch of static spatial size: `(N, 3, H, W)` is NCHW, `(N, H, W, 3)` NHWC.
    pub fn image_geometry(&self) -> Option<(Layout, (usize, usize))> {
        let [spec] = self.inputs() else { return None };
        image_geometry(spec)
    }

    /// The preprocessing stored with the model (`jarvis_performance.preprocess` metadata), if
    /// any; a malformed record is a [`Error::Config`] naming the key.
    pub fn stored_preprocessing(&self) -> Result<Option<Stored>> {
        self.model().preprocessing.as_deref().map(Stored::parse).transpose()
    }

    /// Preprocesses `images` into the model's only input (float32, float16 or uint8: the
    /// input's type) and runs the model.
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
        self.run(vec![image_tensor(images, options, spec)?])
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

/// A tensor of [`PreprocessOptions::batch_shape`] filled by the vision pipeline, of the element
/// type `spec` declares (float32, float16 or uint8; others are refused).
pub fn image_tensor(
    images: &[ImageSource<'_>],
    options: &PreprocessOptions,
    spec: &TensorSpec,
) -> Result<Tensor> {
    match spec.element_type {
        Some(ElementType::F32) => filled::<f32>(images, options),
        Some(ElementType::F16) => filled::<f16>(images, options),
        Some(ElementType::U8) => filled::<u8>(images, options),
        _ => Err(Error::input(
            &spec.name,
            format!("takes {}; images become float32, float16 or uint8", spec.type_name()),
        )),
    }
}

fn filled<T: Element + Datum>(
    images: &[ImageSource<'_>],
    options: &PreprocessOptions,
) -> Result<Tensor> {
    let shape = options.batch_shape(images.len());
    let mut tensor = Tensor::zero_dt(T::datum_type(), &shape)
        .map_err(|e| Error::Internal(format!("allocating the image batch: {e:#}")))?;
    let internal = |e: TractError| Error::Internal(format!("image batch buffer: {e:#}"));
    {
        let mut plain = tensor.try_as_plain_ram_mut().map_err(internal)?;
        vision::preprocess_into(images, options, plain.as_slice_mut::<T>().map_err(internal)?)?;
    }
    Ok(tensor)
}
