//! NumPy arrays to tract tensors and back.
//!
//! In: one `memcpy` of a C-contiguous array into tract's aligned tensor (tract tensors own their
//! memory, so borrowing NumPy's buffer is not possible); other layouts are gathered once.
//! Out: no copy — the NumPy array views the tract tensor, which it keeps alive as its base.

use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use tract_onnx::prelude::*;

use crate::error::Error;
use crate::model::{ElementType, TensorSpec};
use crate::with_element_type;

/// Converts a NumPy array (or anything `numpy.asarray` accepts, cast to the declared dtype) for
/// the model input `spec`. Type and shape are checked later, by the runtime.
pub fn tensor_from_py(obj: &Bound<'_, PyAny>, spec: &TensorSpec) -> PyResult<Tensor> {
    let py = obj.py();
    let array = match obj.cast::<PyUntypedArray>() {
        Ok(array) => array.clone(),
        Err(_) => {
            let dtype = spec.element_type.map(ElementType::name);
            let numpy = py.import("numpy")?;
            numpy
                .call_method1("asarray", (obj, dtype))
                .and_then(|a| Ok(a.cast_into::<PyUntypedArray>()?))
                .map_err(|e| {
                    Error::input(
                        &spec.name,
                        format!("cannot convert {} to an array: {e}", type_name(obj)),
                    )
                })?
        }
    };
    let Some(element) = element_type_of(&array) else {
        let dtype = array.dtype().str().map(|s| s.to_string()).unwrap_or_default();
        let want = spec.type_name();
        return Err(Error::input(&spec.name, format!("expected dtype {want}, got {dtype}")).into());
    };
    with_element_type!(element, T => copy_in::<T>(&array))
}

/// Copies a NumPy array of element type `T` into a tract tensor (one `memcpy` when contiguous).
pub(crate) fn copy_in<T: Element + Datum + Copy>(
    array: &Bound<'_, PyUntypedArray>,
) -> PyResult<Tensor> {
    let typed = array.cast::<PyArrayDyn<T>>()?;
    let readonly = typed.try_readonly()?;
    let shape = readonly.shape().to_vec();
    let tensor = match readonly.as_slice() {
        Ok(slice) => Tensor::from_shape(&shape, slice),
        Err(_) => Ok(Tensor::from(readonly.as_array().to_owned())),
    };
    tensor.map_err(|e| Error::Internal(format!("copying an input: {e:#}")).into())
}

/// The element type of a NumPy array, if the runtime supports it.
fn element_type_of(array: &Bound<'_, PyUntypedArray>) -> Option<ElementType> {
    let py = array.py();
    let dtype = array.dtype();
    ElementType::ALL
        .into_iter()
        .find(|&element| with_element_type!(element, T => dtype.is_equiv_to(&T::get_dtype(py))))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}

/// Keeps an output tensor alive for as long as NumPy arrays view it.
#[pyclass(frozen, module = "jarvis_performance._native")]
pub struct TensorOwner(Tensor);

/// Wraps an output tensor as a NumPy array without copying it.
pub fn tensor_to_py<'py>(
    py: Python<'py>,
    name: &str,
    tensor: Tensor,
) -> PyResult<Bound<'py, PyAny>> {
    let Some(element) = ElementType::from_datum_type(tensor.datum_type()) else {
        return Err(Error::Output {
            name: name.to_string(),
            reason: format!("element type {:?} cannot be returned to NumPy", tensor.datum_type()),
        }
        .into());
    };
    let owner = Bound::new(py, TensorOwner(tensor))?;
    with_element_type!(element, T => view_out::<T>(&owner))
}

fn view_out<'py, T: Element + Datum>(
    owner: &Bound<'py, TensorOwner>,
) -> PyResult<Bound<'py, PyAny>> {
    let view = owner
        .get()
        .0
        .to_plain_array_view::<T>()
        .map_err(|e| Error::Internal(format!("reading an output: {e:#}")))?;
    // SAFETY: `view` points into the tensor held by `owner`, which becomes the array's base
    // object; the tensor's heap buffer neither moves nor is freed while the array lives, and
    // nothing else reads or writes it (the owner is frozen and only kept alive).
    let array = unsafe { PyArrayDyn::<T>::borrow_from_array(&view, owner.clone().into_any()) };
    Ok(array.into_any())
}
