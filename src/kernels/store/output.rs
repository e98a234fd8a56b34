//! Output tensors that the threads computing them initialise part by part, just before the
//! kernels store into the part: with zeros, or with the values of a residual branch the
//! kernels add their results to ([`FloatStore::AddTo`](crate::kernels::FloatStore::AddTo)).
//!
//! Done per part, each thread initialises only what it stores, in parallel, and the writes
//! bring those lines into its own cache where the kernels' first stores then hit.
//!
//! The tensor is allocated uninitialised. Its elements are reachable only as `MaybeUninit`
//! through [`OutputPart`]s, which become plain views only by being initialised; the tensor is
//! handed out only when the parts initialised add up to all of it.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{ArrayView2, ArrayViewMut2, Axis, Zip};
use tract_onnx::prelude::{Datum, Tensor, TractResult};
use tract_onnx::tract_core::internal::{bail, ensure};

/// An output tensor of `O` being computed: its elements uninitialised until parts are.
pub struct OutputTensor<O> {
    tensor: Tensor,
    /// Elements initialised through parts so far.
    initialized: AtomicUsize,
    /// Whether [`OutputTensor::parts`] handed out the elements (only once: parts are disjoint).
    taken: bool,
    element: PhantomData<O>,
}

impl<O: Datum + Copy + Default> OutputTensor<O> {
    /// An uninitialised tensor of `shape`.
    pub fn new(shape: &[usize]) -> TractResult<Self> {
        // SAFETY: elements are reachable only as `MaybeUninit` until initialised
        // (`OutputPart::initialize`), and `into_tensor` hands the tensor out only once every
        // element has been.
        let tensor = unsafe { Tensor::uninitialized::<O>(shape)? };
        let initialized = AtomicUsize::new(0);
        Ok(OutputTensor { tensor, initialized, taken: false, element: PhantomData })
    }

    /// All elements as one part of `rows` rows (the tensor's first axis, for a batch's images),
    /// to start as zeros, or as `initial` (as many values, in the same order).
    pub fn parts<'a>(
        &'a mut self,
        rows: usize,
        initial: Option<&'a [O]>,
    ) -> TractResult<OutputPart<'a, O>> {
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
        let initial = initial.map(|values| ArrayView2::from_shape((rows, columns), values));
        let initial = initial.transpose()?;
        Ok(OutputPart { view, initial, counted: &self.initialized, initialized: false })
    }

    /// The tensor, once every element was initialised through a part (the kernels then stored
    /// into them); an error otherwise, the tensor dropped unread.
    pub fn into_tensor(self) -> TractResult<Tensor> {
        let (initialized, len) = (self.initialized.into_inner(), self.tensor.len());
        if initialized != len {
            bail!("output tensor incomplete: {initialized} of {len} elements computed");
        }
        Ok(self.tensor)
    }
}

/// A 2-D part of an [`OutputTensor`]: it splits into disjoint parts, and gives a plain view of
/// its elements once initialised.
pub struct OutputPart<'a, O> {
    view: ArrayViewMut2<'a, MaybeUninit<O>>,
    /// The values the elements start as (zeros when `None`), split along with them.
    initial: Option<ArrayView2<'a, O>>,
    /// The tensor's count of initialised elements.
    counted: &'a AtomicUsize,
    /// Whether the elements were initialised already ([`OutputPart::initialize_now`]).
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
        let (initial_low, initial_high) = match self.initial {
            Some(values) => {
                let (low, high) = values.split_at(axis, index);
                (Some(low), Some(high))
            }
            None => (None, None),
        };
        let (counted, initialized) = (self.counted, self.initialized);
        let part = |view, initial| OutputPart { view, initial, counted, initialized };
        (part(low, initial_low), part(high, initial_high))
    }

    /// The same elements as `rows` × `columns` (the part must be contiguous: a run of rows).
    pub fn reshape(self, rows: usize, columns: usize) -> TractResult<Self> {
        let view = self.view.into_shape_with_order((rows, columns))?;
        let initial = self.initial.map(|v| v.into_shape_with_order((rows, columns))).transpose()?;
        Ok(OutputPart { view, initial, ..self })
    }

    /// Initialises the whole part now, in one pass where it is contiguous (one thread computing
    /// all of it: one fill is cheaper than one per piece); [`OutputPart::initialize`] on it or
    /// on its parts then only hands out views.
    pub fn initialize_now(mut self) -> Self {
        if !self.initialized {
            self.write_initial();
            self.initialized = true;
        }
        self
    }

    /// The part as a view of `O` for the kernels to store into, initialised first unless it
    /// was.
    pub fn initialize(mut self) -> ArrayViewMut2<'a, O> {
        if !self.initialized {
            self.write_initial();
        }
        // SAFETY: every element of the view was written, by `write_initial` here or on a part
        // holding this one (`initialized`).
        unsafe { self.view.assume_init() }
    }

    /// Writes every element's initial value (zero, or its value in `initial`) and counts them.
    fn write_initial(&mut self) {
        let zero = MaybeUninit::new(O::default());
        match &self.initial {
            None => match self.view.as_slice_mut() {
                Some(contiguous) => contiguous.fill(zero),
                None => self.view.rows_mut().into_iter().for_each(|mut row| row.fill(zero)),
            },
            Some(initial) => match (self.view.as_slice_mut(), initial.as_slice()) {
                // One copy of a contiguous run (a whole image's planes, a run of channels).
                (Some(elements), Some(values)) => {
                    elements.iter_mut().zip(values).for_each(|(d, &v)| *d = MaybeUninit::new(v))
                }
                _ => Zip::from(&mut self.view)
                    .and(initial)
                    .for_each(|d, &v| *d = MaybeUninit::new(v)),
            },
        }
        self.counted.fetch_add(self.view.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_initialised_in_any_split_make_the_whole_tensor() {
        let mut output = OutputTensor::<f32>::new(&[2, 3, 4]).unwrap();
        let parts = output.parts(2, None).unwrap();
        let (first, second) = parts.split_at(Axis(0), 1);
        let (left, right) = second.reshape(3, 4).unwrap().split_at(Axis(1), 1);
        let views =
            [(first.initialize(), 1.0), (left.initialize(), 2.0), (right.initialize(), 3.0)];
        for (mut view, value) in views {
            assert!(view.iter().all(|&v| v == 0.0));
            view.fill(value);
        }
        let tensor = output.into_tensor().unwrap();
        let values: Vec<f32> =
            tensor.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
        assert_eq!(&values[..12], &[1.0; 12]);
        assert_eq!(values[12..].iter().filter(|&&v| v == 2.0).count(), 3);
        assert_eq!(values[12..].iter().filter(|&&v| v == 3.0).count(), 9);
        let mut whole = OutputTensor::<f32>::new(&[2, 6]).unwrap();
        let (top, bottom) = whole.parts(2, None).unwrap().initialize_now().split_at(Axis(0), 1);
        assert!(top.initialize().iter().chain(bottom.initialize().iter()).all(|&v| v == 0.0));
        assert_eq!(whole.into_tensor().unwrap().len(), 12);
    }

    #[test]
    fn initial_values_follow_their_elements_through_splits() {
        let initial: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut output = OutputTensor::<f32>::new(&[2, 3, 4]).unwrap();
        let (first, second) = output.parts(2, Some(&initial)).unwrap().split_at(Axis(0), 1);
        let (left, right) = second.reshape(3, 4).unwrap().split_at(Axis(1), 1);
        assert_eq!(left.initialize().iter().copied().collect::<Vec<_>>(), [12.0, 16.0, 20.0]);
        assert_eq!(right.initialize()[(2, 2)], 23.0);
        assert_eq!(first.initialize_now().initialize()[(0, 11)], 11.0);
        let tensor = output.into_tensor().unwrap();
        assert_eq!(
            tensor.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<_>>(),
            initial
        );
        let mut short = OutputTensor::<f32>::new(&[2, 3, 4]).unwrap();
        assert!(short.parts(2, Some(&initial[1..])).is_err(), "initial values of another shape");
    }

    #[test]
    fn a_part_left_uninitialised_keeps_the_tensor_back() {
        let mut output = OutputTensor::<u8>::new(&[4, 4]).unwrap();
        let (first, _never) = output.parts(4, None).unwrap().split_at(Axis(0), 2);
        first.initialize_now().initialize();
        assert!(output.into_tensor().is_err());
        let mut output = OutputTensor::<u8>::new(&[4, 4]).unwrap();
        assert!(output.parts(4, None).is_ok());
        assert!(output.parts(4, None).is_err(), "a second handout could initialise a part twice");
    }
}
