//! Output tensors that the threads computing them zero part by part, just before the kernels
//! store into the part. Zeroing a whole output on the calling thread before a parallel section
//! was 5 % of EfficientNet-Lite0 on one thread and ran serially on two; done per part, each
//! thread zeroes only what it stores, and the zeroing brings those lines into its own cache
//! where the kernels' first stores then hit (without it they missed, measured).
//!
//! The tensor is allocated uninitialised. Its elements are reachable only as `MaybeUninit`
//! through [`OutputPart`] parts, which become plain views only by being zeroed; the tensor is
//! handed out only when the parts zeroed add up to all of it.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{ArrayViewMut2, Axis};
use tract_onnx::prelude::{Datum, Tensor, TractResult};
use tract_onnx::tract_core::internal::{bail, ensure};

/// An output tensor of `O` being computed: its elements uninitialised until parts are zeroed.
pub struct OutputTensor<O> {
    tensor: Tensor,
    /// Elements zeroed through parts so far.
    zeroed: AtomicUsize,
    /// Whether [`OutputTensor::parts`] handed out the elements (only once: parts are disjoint).
    taken: bool,
    element: PhantomData<O>,
}

impl<O: Datum + Copy + Default> OutputTensor<O> {
    /// An uninitialised tensor of `shape`.
    pub fn new(shape: &[usize]) -> TractResult<Self> {
        // SAFETY: elements are reachable only as `MaybeUninit` until zeroed (`OutputPart::zero`),
        // and `into_tensor` hands the tensor out only once every element has been.
        let tensor = unsafe { Tensor::uninitialized::<O>(shape)? };
        Ok(OutputTensor { tensor, zeroed: AtomicUsize::new(0), taken: false, element: PhantomData })
    }

    /// All elements as one part of `rows` rows (the tensor's first axis, for a batch's images).
    pub fn parts(&mut self, rows: usize) -> TractResult<OutputPart<'_, O>> {
        ensure!(!self.taken, "output tensor parts taken twice");
        self.taken = true;
        let len = self.tensor.len();
        let elements: &mut [MaybeUninit<O>] = if len == 0 {
            &mut []
        } else {
            let ptr = self.tensor.as_ptr_mut::<O>()?.cast::<MaybeUninit<O>>();
            // SAFETY: the tensor owns `len` contiguous, aligned elements of `O` (its datum type,
            // checked by `as_ptr_mut`); `MaybeUninit` asks nothing of their contents, and the
            // slice borrows `self` mutably, so nothing else reaches them while it lives.
            unsafe { std::slice::from_raw_parts_mut(ptr, len) }
        };
        let columns = len.checked_div(rows).unwrap_or(0);
        let view = ArrayViewMut2::from_shape((rows, columns), elements)?;
        Ok(OutputPart { view, zeroed: &self.zeroed, initialized: false })
    }

    /// The tensor, once every element was zeroed through a part (the kernels then stored into
    /// them); an error otherwise, the tensor dropped unread.
    pub fn into_tensor(self) -> TractResult<Tensor> {
        let (zeroed, len) = (self.zeroed.into_inner(), self.tensor.len());
        if zeroed != len {
            bail!("output tensor incomplete: {zeroed} of {len} elements computed");
        }
        Ok(self.tensor)
    }
}

/// A 2-D part of an [`OutputTensor`]: it splits into disjoint parts, and gives a plain view of
/// its elements once zeroed.
pub struct OutputPart<'a, O> {
    view: ArrayViewMut2<'a, MaybeUninit<O>>,
    zeroed: &'a AtomicUsize,
    /// Whether the elements were zeroed already ([`OutputPart::zero_now`]).
    initialized: bool,
}

impl<'a, O: Copy + Default> OutputPart<'a, O> {
    /// Rows and columns.
    pub fn dim(&self) -> (usize, usize) {
        self.view.dim()
    }

    /// The part before `index` along `axis` and the rest.
    pub fn split_at(self, axis: Axis, index: usize) -> (Self, Self) {
        let (low, high) = self.view.split_at(axis, index);
        let (zeroed, initialized) = (self.zeroed, self.initialized);
        (
            OutputPart { view: low, zeroed, initialized },
            OutputPart { view: high, zeroed, initialized },
        )
    }

    /// The same elements as `rows` × `columns` (the part must be contiguous: a run of rows).
    pub fn reshape(self, rows: usize, columns: usize) -> TractResult<Self> {
        let view = self.view.into_shape_with_order((rows, columns))?;
        Ok(OutputPart { view, ..self })
    }

    /// Zeroes the whole part now, in one pass where it is contiguous (one thread computing all
    /// of it: one fill is cheaper than one per piece); [`OutputPart::zero`] on it or on its
    /// parts then only hands out views.
    pub fn zero_now(mut self) -> Self {
        if !self.initialized {
            self.fill_zeros();
            self.initialized = true;
        }
        self
    }

    /// The part as a view of `O` for the kernels to store into, zeroed first unless it was.
    pub fn zero(mut self) -> ArrayViewMut2<'a, O> {
        if !self.initialized {
            self.fill_zeros();
        }
        // SAFETY: every element of the view was written, by `fill_zeros` here or on a part
        // holding this one (`initialized`).
        unsafe { self.view.assume_init() }
    }

    /// Writes zeros to every element and counts them as computed.
    fn fill_zeros(&mut self) {
        let zero = MaybeUninit::new(O::default());
        match self.view.as_slice_mut() {
            Some(contiguous) => contiguous.fill(zero),
            None => self.view.rows_mut().into_iter().for_each(|mut row| row.fill(zero)),
        }
        self.zeroed.fetch_add(self.view.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_zeroed_in_any_split_make_the_whole_tensor() {
        let mut output = OutputTensor::<f32>::new(&[2, 3, 4]).unwrap();
        let parts = output.parts(2).unwrap();
        let (first, second) = parts.split_at(Axis(0), 1);
        let (left, right) = second.reshape(3, 4).unwrap().split_at(Axis(1), 1);
        for (mut view, value) in [(first.zero(), 1.0), (left.zero(), 2.0), (right.zero(), 3.0)] {
            assert!(view.iter().all(|&v| v == 0.0));
            view.fill(value);
        }
        let tensor = output.into_tensor().unwrap();
        let mut whole = OutputTensor::<f32>::new(&[2, 6]).unwrap();
        let (top, bottom) = whole.parts(2).unwrap().zero_now().split_at(Axis(0), 1);
        assert!(top.zero().iter().chain(bottom.zero().iter()).all(|&v| v == 0.0));
        assert_eq!(whole.into_tensor().unwrap().len(), 12);
        let values: Vec<f32> =
            tensor.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
        assert_eq!(&values[..12], &[1.0; 12]);
        assert_eq!(values[12..].iter().filter(|&&v| v == 2.0).count(), 3);
        assert_eq!(values[12..].iter().filter(|&&v| v == 3.0).count(), 9);
    }

    #[test]
    fn a_part_left_unzeroed_keeps_the_tensor_back() {
        let mut output = OutputTensor::<u8>::new(&[4, 4]).unwrap();
        let (first, _never) = output.parts(4).unwrap().split_at(Axis(0), 2);
        first.zero_now().zero();
        assert!(output.into_tensor().is_err());
        let mut output = OutputTensor::<u8>::new(&[4, 4]).unwrap();
        assert!(output.parts(4).is_ok());
        assert!(output.parts(4).is_err(), "a second handout could zero one part twice");
    }
}
