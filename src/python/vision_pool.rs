//! Reused output buffers for `preprocess` without `out=`: a fresh 38 MB batch costs ~25 ms of
//! page faults on first touch, so the buffer of a batch NumPy has freed is kept and handed to
//! the next call of a similar size.
//!
//! A buffer is in the pool only while no array uses it: it goes into a [`BatchBuffer`] (the
//! returned array's base object) when taken and comes back from `BatchBuffer`'s `Drop`, which
//! runs when the last array (or view) of that batch is garbage. Two live arrays therefore
//! never share memory.

use std::sync::Mutex;

use half::f16;
use ndarray::ArrayViewD;
use numpy::{Element as NumpyElement, PyArrayDyn};
use pyo3::prelude::*;

use crate::error::Error;
use crate::vision::Element;

/// Buffers smaller than this are left to the allocator (it reuses them well).
const MIN_POOLED_BYTES: usize = 1 << 20;
/// Most memory the pool keeps idle.
const MAX_POOLED_BYTES: usize = 256 << 20;
/// Most buffers the pool keeps idle.
const MAX_POOLED: usize = 4;

/// A batch's memory, by element type.
#[derive(Debug)]
pub enum Buffer {
    F32(Vec<f32>),
    F16(Vec<f16>),
    U8(Vec<u8>),
}

impl Buffer {
    fn bytes(&self) -> usize {
        match self {
            Buffer::F32(v) => v.capacity() * 4,
            Buffer::F16(v) => v.capacity() * 2,
            Buffer::U8(v) => v.capacity(),
        }
    }
}

static POOL: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());

/// An output element type the pool can hold.
pub trait Pooled: Element + NumpyElement {
    fn wrap(values: Vec<Self>) -> Buffer;
    fn unwrap(buffer: &Buffer) -> Option<&Vec<Self>>;
    fn take(buffer: Buffer) -> Result<Vec<Self>, Buffer>;
}

macro_rules! pooled {
    ($t:ty, $variant:ident) => {
        impl Pooled for $t {
            fn wrap(values: Vec<Self>) -> Buffer {
                Buffer::$variant(values)
            }
            fn unwrap(buffer: &Buffer) -> Option<&Vec<Self>> {
                match buffer {
                    Buffer::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn take(buffer: Buffer) -> Result<Vec<Self>, Buffer> {
                match buffer {
                    Buffer::$variant(v) => Ok(v),
                    other => Err(other),
                }
            }
        }
    };
}
pooled!(f32, F32);
pooled!(f16, F16);
pooled!(u8, U8);

/// A vector of `len` elements: a pooled buffer of a fitting capacity (at least `len`, at most
/// twice) when there is one, else a new one. Its contents are unspecified (every value gets
/// written by the caller).
pub fn take<T: Pooled>(len: usize) -> Vec<T> {
    let reused = POOL.lock().ok().and_then(|mut pool| {
        let fits = |b: &Buffer| {
            T::unwrap(b).is_some_and(|v| v.capacity() >= len && v.capacity() <= 2 * len.max(1))
        };
        let at = pool.iter().rposition(fits)?; // the most recently freed: warmest in cache
        T::take(pool.swap_remove(at)).ok()
    });
    match reused {
        Some(mut values) => {
            // Within capacity: no reallocation; only values past the old length get written.
            values.resize(len, T::default());
            values
        }
        None => vec![T::default(); len],
    }
}

/// Gives a buffer back (from [`BatchBuffer`]'s drop), evicting the oldest beyond the limits.
fn give_back(buffer: Buffer) {
    if buffer.bytes() < MIN_POOLED_BYTES || buffer.bytes() > MAX_POOLED_BYTES {
        return;
    }
    let Ok(mut pool) = POOL.lock() else { return };
    pool.push(buffer);
    while pool.len() > MAX_POOLED
        || pool.iter().map(Buffer::bytes).sum::<usize>() > MAX_POOLED_BYTES
    {
        pool.remove(0);
    }
}

/// Bytes held by idle pooled buffers (for the tests).
#[pyfunction]
pub fn _vision_pool_idle_bytes() -> usize {
    POOL.lock().map(|pool| pool.iter().map(Buffer::bytes).sum()).unwrap_or(0)
}

/// Owns a preprocessed batch's memory for as long as NumPy arrays view it (it is their
/// `base`), then returns it to the pool.
#[pyclass(frozen, module = "jarvis_performance._native")]
pub struct BatchBuffer(Option<Buffer>);

impl Drop for BatchBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.0.take() {
            give_back(buffer);
        }
    }
}

/// Wraps `values` as a NumPy array of `shape` without copying; the memory returns to the pool
/// when the array (and every view of it) is gone.
pub fn into_array<'py, T: Pooled>(
    py: Python<'py>,
    values: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let owner = Bound::new(py, BatchBuffer(Some(T::wrap(values))))?;
    let values = owner
        .get()
        .0
        .as_ref()
        .and_then(T::unwrap)
        .ok_or_else(|| Error::Internal("batch buffer of another type".into()))?;
    let view = ArrayViewD::from_shape(shape, values.as_slice())
        .map_err(|e| Error::Internal(format!("batch shape {shape:?}: {e}")))?;
    // SAFETY: `view` points into the vector held by `owner`, which becomes the array's base
    // object: the heap buffer neither moves nor is freed while the array or a view of it
    // lives (the owner is frozen and its vector only taken back in `Drop`), and no other
    // array uses that buffer meanwhile (it left the pool in `take`).
    let array = unsafe { PyArrayDyn::<T>::borrow_from_array(&view, owner.clone().into_any()) };
    Ok(array)
}
