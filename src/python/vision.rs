//! `preprocess`: Python images (uint8 arrays, paths, bytes) to one normalized NumPy batch, and
//! the argument parsing `Runtime.infer_images` shares with it.

use std::path::PathBuf;

use half::f16;
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use super::vision_pool::{self, Pooled};
use super::without_gil;
use crate::error::Error;
use crate::model::ElementType;
use crate::vision::stored::{Channels, Size, Stored};
use crate::vision::{self, Frame, ImageSource, Layout, PreprocessOptions};

/// Python images held (borrowed or, for non-contiguous arrays, copied) while the GIL is
/// released; [`Held::source`] views them without copying.
enum Held<'py> {
    Array { array: PyReadonlyArrayDyn<'py, u8>, shape: (usize, usize, usize) },
    Copied { data: Vec<u8>, shape: (usize, usize, usize) },
    Path(PathBuf),
    Bytes(Bound<'py, PyBytes>),
    OwnedBytes(Vec<u8>),
}

impl Held<'_> {
    fn source(&self) -> Result<ImageSource<'_>, Error> {
        let frame = |data, (height, width, channels)| {
            ImageSource::Frame(Frame { data, height, width, channels })
        };
        Ok(match self {
            Held::Array { array, shape } => {
                let data = array
                    .as_slice()
                    .map_err(|e| Error::Internal(format!("contiguous array unreadable: {e}")))?;
                frame(data, *shape)
            }
            Held::Copied { data, shape } => frame(data, *shape),
            Held::Path(path) => ImageSource::Path(path.clone()),
            Held::Bytes(bytes) => ImageSource::Encoded(bytes.as_bytes()),
            Held::OwnedBytes(bytes) => ImageSource::Encoded(bytes),
        })
    }
}

fn image_error(index: usize, origin: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Image { index, origin: origin.into(), reason: reason.into() }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}

/// One image of the list: a uint8 array (H×W, H×W×1/3/4), a path (str or os.PathLike) or
/// encoded bytes.
fn hold<'py>(index: usize, obj: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return hold_array(index, array);
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(Held::Bytes(bytes.clone()));
    }
    if let Ok(bytes) = obj.cast::<PyByteArray>() {
        return Ok(Held::OwnedBytes(bytes.to_vec()));
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        return Ok(Held::Path(obj.extract::<PathBuf>()?));
    }
    Err(image_error(
        index,
        type_name(obj),
        "expected a uint8 NumPy array, a path (str or os.PathLike) or encoded bytes",
    )
    .into())
}

fn hold_array<'py>(index: usize, array: &Bound<'py, PyUntypedArray>) -> PyResult<Held<'py>> {
    let dims = array.shape().to_vec();
    let dtype = array.dtype().str().map(|s| s.to_string()).unwrap_or_default();
    let origin = format!(
        "{} {dtype} array",
        dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
    );
    let shape = match dims[..] {
        [h, w] => (h, w, 1),
        [h, w, c @ (1 | 3 | 4)] => (h, w, c),
        _ => {
            return Err(image_error(
                index,
                origin,
                "expected an H×W (grey) or H×W×C array with C = 1, 3 or 4",
            )
            .into());
        }
    };
    let Ok(typed) = array.cast::<PyArrayDyn<u8>>() else {
        let hint = if dtype.contains('f') {
            "; for 0–1 floats use (x * 255).round().astype(numpy.uint8)"
        } else {
            ""
        };
        return Err(image_error(index, origin, format!("expected dtype uint8{hint}")).into());
    };
    let readonly = typed.try_readonly().map_err(|e| image_error(index, &origin, e.to_string()))?;
    if readonly.as_slice().is_ok() {
        return Ok(Held::Array { array: readonly, shape });
    }
    // Strided views (crops, [..., ::-1]) are gathered once, under the GIL.
    let data = readonly.as_array().iter().copied().collect();
    Ok(Held::Copied { data, shape })
}

/// Holds every image of `images`: a list or other iterable of images, or one N×H×W×C uint8
/// array (a stack of frames).
fn hold_all<'py>(images: &Bound<'py, PyAny>) -> PyResult<Vec<Held<'py>>> {
    if images.is_instance_of::<PyString>()
        || images.is_instance_of::<PyBytes>()
        || images.hasattr("__fspath__")?
    {
        return Err(Error::input("images", "pass a list of images, even for one image").into());
    }
    if let Ok(array) = images.cast::<PyUntypedArray>() {
        if array.ndim() != 4 {
            return Err(Error::input(
                "images",
                format!(
                    "a {}-d array: pass a list of images, or one N×H×W×C uint8 array",
                    array.ndim()
                ),
            )
            .into());
        }
    }
    let iterator = images
        .try_iter()
        .map_err(|_| Error::input("images", format!("{} is not a list", type_name(images))))?;
    iterator.enumerate().map(|(index, item)| hold(index, &item?)).collect()
}

/// Parses `size`: an int (square) or `(height, width)`.
fn parse_size(size: &Bound<'_, PyAny>) -> PyResult<Size> {
    if let Ok(side) = size.extract::<usize>() {
        return Ok(Size::Square(side));
    }
    let (h, w) = size.extract::<(usize, usize)>().map_err(|_| {
        PyErr::from(Error::config("size", format!("{size}: give an int or (height, width)")))
    })?;
    Ok(Size::Rect([h, w]))
}

/// Parses `mean` / `std`: a number or a sequence of 1 or 3 numbers.
fn parse_channels(option: &str, value: &Bound<'_, PyAny>) -> PyResult<Channels> {
    let values = match value.extract::<f32>() {
        Ok(v) => vec![v],
        Err(_) => value.extract::<Vec<f32>>().map_err(|_| {
            Error::config(option, format!("{value}: give a number or 1 or 3 numbers"))
        })?,
    };
    vision::per_channel(option, &values)?;
    Ok(Channels::Many(values))
}

/// The element type of the output batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    U8,
}

impl OutDtype {
    /// Parses `dtype`: anything `numpy.dtype` accepts that names float32, float16 or uint8.
    pub fn parse(py: Python<'_>, dtype: &Bound<'_, PyAny>) -> PyResult<OutDtype> {
        let numpy = py.import("numpy")?;
        let wanted = numpy
            .call_method1("dtype", (dtype,))
            .map_err(|_| Error::config("dtype", format!("{dtype}: not a NumPy dtype")))?;
        for (name, out) in
            [("float32", OutDtype::F32), ("float16", OutDtype::F16), ("uint8", OutDtype::U8)]
        {
            if wanted.eq(numpy.getattr(name)?)? {
                return Ok(out);
            }
        }
        Err(Error::config("dtype", format!("{wanted}: use float32, float16 or uint8")).into())
    }

    pub fn of_element(element: Option<ElementType>) -> Option<OutDtype> {
        match element? {
            ElementType::F32 => Some(OutDtype::F32),
            ElementType::F16 => Some(OutDtype::F16),
            ElementType::U8 => Some(OutDtype::U8),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::F16 => "float16",
            OutDtype::U8 => "uint8",
        }
    }
}

/// The keyword options of `preprocess`, `Runtime.infer_images` and `set_preprocessing`, as
/// Python passed them (`None`: not given).
#[derive(Default)]
pub struct VisionArgs<'a, 'py> {
    pub size: Option<&'a Bound<'py, PyAny>>,
    pub mean: Option<&'a Bound<'py, PyAny>>,
    pub std: Option<&'a Bound<'py, PyAny>>,
    pub layout: Option<&'a str>,
    pub resize: Option<&'a str>,
    pub crop: Option<&'a str>,
    pub keep_aspect: Option<bool>,
    pub channels: Option<&'a str>,
    pub pad: Option<u8>,
    pub draft: Option<bool>,
}

impl VisionArgs<'_, '_> {
    /// The options given, in the stored-preprocessing form (absent fields stay `None`).
    pub fn to_stored(&self) -> PyResult<Stored> {
        Ok(Stored {
            size: self.size.map(parse_size).transpose()?,
            mean: self.mean.map(|m| parse_channels("mean", m)).transpose()?,
            std: self.std.map(|s| parse_channels("std", s)).transpose()?,
            layout: self.layout.map(str::to_owned),
            resize: self.resize.map(str::to_owned),
            crop: self.crop.map(str::to_owned),
            keep_aspect: self.keep_aspect,
            channels: self.channels.map(str::to_owned),
            pad: self.pad,
            draft: self.draft,
        })
    }

    /// The library options: the given ones over `stored` (a model's stored preprocessing);
    /// `geometry` supplies size and layout when neither gives them (a runtime reads them off
    /// its model's input). Float output needs `mean` and `std` from one or the other; uint8
    /// output takes neither.
    pub fn options(
        &self,
        geometry: Option<(Layout, (usize, usize))>,
        stored: Option<&Stored>,
        dtype: OutDtype,
    ) -> PyResult<PreprocessOptions> {
        let given = self.to_stored()?;
        if dtype == OutDtype::U8 && (given.mean.is_some() || given.std.is_some()) {
            return Err(Error::config(
                "mean",
                "uint8 output holds the resized pixels unnormalized: leave out mean and std",
            )
            .into());
        }
        let merged = match stored {
            Some(stored) => given.overlay(stored),
            None => given,
        };
        if dtype != OutDtype::U8 && (merged.mean.is_none() || merged.std.is_none()) {
            let reason = "required for float output (mean=0, std=1 for plain 0–1 scaling), \
                          unless the model stores its preprocessing (set_preprocessing)";
            let option = if merged.mean.is_none() { "mean" } else { "std" };
            return Err(Error::config(option, reason).into());
        }
        if merged.size.is_none() && geometry.is_none() {
            return Err(Error::config("size", "required (an int or (height, width))").into());
        }
        Ok(merged.options(geometry)?)
    }
}

/// Holds the Python `images` and runs `work` on them with the GIL released.
pub fn with_images<T, F>(py: Python<'_>, images: &Bound<'_, PyAny>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&[ImageSource<'_>]) -> crate::error::Result<T> + Send,
{
    let held = hold_all(images)?;
    let sources = held.iter().map(Held::source).collect::<Result<Vec<_>, _>>()?;
    without_gil(py, || work(&sources))
}

/// Decodes, resizes, crops and normalizes `images` into one contiguous batch (see the stub in
/// `_native.pyi` for the options).
#[pyfunction]
#[pyo3(
    signature = (images, *, size, mean = None, std = None, layout = "NCHW", resize = "bilinear", crop = None, keep_aspect = false, channels = "RGB", dtype = None, pad = 0, draft = true, out = None),
    text_signature = "(images, *, size, mean=None, std=None, layout='NCHW', resize='bilinear', crop=None, keep_aspect=False, channels='RGB', dtype=None, pad=0, draft=True, out=None)"
)]
#[allow(clippy::too_many_arguments)]
pub fn preprocess<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    size: &Bound<'py, PyAny>,
    mean: Option<&Bound<'py, PyAny>>,
    std: Option<&Bound<'py, PyAny>>,
    layout: &str,
    resize: &str,
    crop: Option<&str>,
    keep_aspect: bool,
    channels: &str,
    dtype: Option<&Bound<'py, PyAny>>,
    pad: u8,
    draft: bool,
    out: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<Bound<'py, PyAny>> {
    let args = VisionArgs {
        size: Some(size),
        mean,
        std,
        layout: Some(layout),
        resize: Some(resize),
        crop: Some(crop.unwrap_or("none")),
        keep_aspect: Some(keep_aspect),
        channels: Some(channels),
        pad: Some(pad),
        draft: Some(draft),
    };
    let dtype = match (dtype, out) {
        (Some(dtype), _) => OutDtype::parse(py, dtype)?,
        // Without `dtype`, an `out=` array's type decides.
        (None, Some(out)) => OutDtype::parse(py, out.dtype().as_any())?,
        (None, None) => OutDtype::F32,
    };
    let options = args.options(None, None, dtype)?;
    match dtype {
        OutDtype::F32 => preprocess_as::<f32>(py, images, &options, out),
        OutDtype::F16 => preprocess_as::<f16>(py, images, &options, out),
        OutDtype::U8 => preprocess_as::<u8>(py, images, &options, out),
    }
}

fn preprocess_as<'py, T: Pooled>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    options: &PreprocessOptions,
    out: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<Bound<'py, PyAny>> {
    let want = options.batch_shape(images.len().unwrap_or(0));
    if let Some(out) = out {
        // Writing into the caller's array skips allocating (and first-touching) a new batch.
        let typed = out.cast::<PyArrayDyn<T>>().map_err(|_| {
            let dtype = out.dtype().str().map(|s| s.to_string()).unwrap_or_default();
            Error::input("out", format!("has dtype {dtype}, the batch is {}", T::NAME))
        })?;
        if out.shape() != want.as_slice() {
            let reason = format!("has shape {:?}, the batch is {want:?}", out.shape());
            return Err(Error::input("out", reason).into());
        }
        {
            let mut writable =
                typed.try_readwrite().map_err(|e| Error::input("out", e.to_string()))?;
            let slice =
                writable.as_slice_mut().map_err(|_| Error::input("out", "must be C-contiguous"))?;
            with_images(py, images, |sources| vision::preprocess_into(sources, options, slice))?;
        }
        return Ok(out.clone().into_any());
    }
    // A pooled buffer (already paged in) when a batch of a similar size was freed; it becomes
    // the NumPy array's memory: no copy.
    let (values, shape) = with_images(py, images, |sources| {
        let shape = options.batch_shape(sources.len());
        let mut values = vision_pool::take::<T>(shape.iter().product());
        vision::preprocess_into(sources, options, &mut values)?;
        Ok((values, shape))
    })?;
    Ok(vision_pool::into_array(py, values, &shape)?.into_any())
}
