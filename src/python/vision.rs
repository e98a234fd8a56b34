//! `preprocess`: Python images (uint8 arrays, paths, bytes) to one normalized NumPy batch, and
//! the argument parsing `Runtime.infer_images` shares with it.

use std::path::PathBuf;

use numpy::{
    IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use super::without_gil;
use crate::error::Error;
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
fn parse_size(size: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
    if let Ok(side) = size.extract::<usize>() {
        return Ok((side, side));
    }
    size.extract::<(usize, usize)>().map_err(|_| {
        Error::config("size", format!("{size}: give an int or (height, width)")).into()
    })
}

/// Parses `mean` / `std`: a number or a sequence of 1 or 3 numbers.
fn parse_channels(option: &str, value: &Bound<'_, PyAny>) -> PyResult<[f32; 3]> {
    let values = match value.extract::<f32>() {
        Ok(v) => vec![v],
        Err(_) => value.extract::<Vec<f32>>().map_err(|_| {
            Error::config(option, format!("{value}: give a number or 1 or 3 numbers"))
        })?,
    };
    Ok(vision::per_channel(option, &values)?)
}

/// Only float32 output is produced today; `dtype` is checked so that asking for another type
/// fails loudly rather than silently returning float32.
fn check_dtype(py: Python<'_>, dtype: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let Some(dtype) = dtype else { return Ok(()) };
    let numpy = py.import("numpy")?;
    let wanted = numpy
        .call_method1("dtype", (dtype,))
        .map_err(|_| Error::config("dtype", format!("{dtype}: not a NumPy dtype")))?;
    if wanted.eq(numpy.getattr("float32")?)? {
        Ok(())
    } else {
        Err(Error::config("dtype", format!("{wanted}: only float32 output is supported")).into())
    }
}

/// The keyword options of `preprocess` and `Runtime.infer_images`, as Python passed them.
pub struct VisionArgs<'a, 'py> {
    pub size: Option<&'a Bound<'py, PyAny>>,
    pub mean: &'a Bound<'py, PyAny>,
    pub std: &'a Bound<'py, PyAny>,
    pub layout: Option<&'a str>,
    pub resize: &'a str,
    pub crop: Option<&'a str>,
    pub keep_aspect: bool,
    pub channels: &'a str,
    pub dtype: Option<&'a Bound<'py, PyAny>>,
    pub pad: u8,
    pub draft: bool,
}

impl VisionArgs<'_, '_> {
    /// The library options; `default_geometry` supplies size and layout when not given (a
    /// runtime reads them off its model's input).
    pub fn options(
        &self,
        py: Python<'_>,
        default_geometry: Option<(Layout, (usize, usize))>,
    ) -> PyResult<PreprocessOptions> {
        check_dtype(py, self.dtype)?;
        let layout = match self.layout {
            Some(text) => text.parse()?,
            None => default_geometry.map_or(Layout::Nchw, |(layout, _)| layout),
        };
        let size = match (self.size, default_geometry) {
            (Some(size), _) => parse_size(size)?,
            (None, Some((_, size))) => size,
            (None, None) => {
                return Err(Error::config("size", "required (an int or (height, width))").into())
            }
        };
        let center_crop = match self.crop {
            None => false,
            Some("center") => true,
            Some(other) => {
                return Err(
                    Error::config("crop", format!("{other:?}: use None or \"center\"")).into()
                )
            }
        };
        let mut options = PreprocessOptions::new(
            size,
            parse_channels("mean", self.mean)?,
            parse_channels("std", self.std)?,
        );
        options.layout = layout;
        options.resize = self.resize.parse()?;
        options.center_crop = center_crop;
        options.keep_aspect = self.keep_aspect;
        options.channels = self.channels.parse()?;
        options.pad = self.pad;
        options.draft = self.draft;
        options.validate()?;
        Ok(options)
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
    signature = (images, *, size, mean, std, layout = "NCHW", resize = "bilinear", crop = None, keep_aspect = false, channels = "RGB", dtype = None, pad = 0, draft = true, out = None),
    text_signature = "(images, *, size, mean, std, layout='NCHW', resize='bilinear', crop=None, keep_aspect=False, channels='RGB', dtype=None, pad=0, draft=True, out=None)"
)]
#[allow(clippy::too_many_arguments)]
pub fn preprocess<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    size: &Bound<'py, PyAny>,
    mean: &Bound<'py, PyAny>,
    std: &Bound<'py, PyAny>,
    layout: &str,
    resize: &str,
    crop: Option<&str>,
    keep_aspect: bool,
    channels: &str,
    dtype: Option<&Bound<'py, PyAny>>,
    pad: u8,
    draft: bool,
    out: Option<Bound<'py, PyArrayDyn<f32>>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let args = VisionArgs {
        size: Some(size),
        mean,
        std,
        layout: Some(layout),
        resize,
        crop,
        keep_aspect,
        channels,
        dtype,
        pad,
        draft,
    };
    let options = args.options(py, None)?;
    if let Some(out) = out {
        // Writing into the caller's array skips allocating (and first-touching) a new batch.
        let want = options.batch_shape(images.len().unwrap_or(0));
        if out.shape() != want.as_slice() {
            let reason = format!("has shape {:?}, the batch is {want:?}", out.shape());
            return Err(Error::input("out", reason).into());
        }
        {
            let mut writable =
                out.try_readwrite().map_err(|e| Error::input("out", e.to_string()))?;
            let slice =
                writable.as_slice_mut().map_err(|_| Error::input("out", "must be C-contiguous"))?;
            with_images(py, images, |sources| vision::preprocess_into(sources, &options, slice))?;
        }
        return Ok(out);
    }
    // The batch's buffer becomes the NumPy array's memory: no copy.
    let batch = with_images(py, images, |sources| vision::preprocess(sources, &options))?;
    Ok(batch.into_pyarray(py))
}
