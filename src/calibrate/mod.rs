//! The calibration pass: run the float model over calibration data with chosen tensors observed,
//! and turn the observations into quantization ranges.
//!
//! The observed tensors are made extra outputs of the decluttered graph (tract keeps outputs
//! intact through optimisation), so one run per batch yields every range.

mod lattice;
mod means;
mod observer;
mod patches;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

pub use lattice::{ChannelLattice, LatticeObserver};
pub use means::{ChannelMeans, MeanLayout};
pub use observer::{Method, Observer, BINS};
pub use patches::{packed_len, PatchLayout, PatchMoments, MAX_PATCH_LEN};

use crate::error::{catch_panics, chain, Error, Result};
use crate::model::bind_inputs;
use crate::model::TensorSpec;
use crate::plan::Plans;

/// Observes chosen outlets of a decluttered graph over calibration batches.
#[derive(Debug)]
pub struct Calibrator {
    plans: Plans,
    /// The calibration graph's input shapes (concrete but for symbolic axes).
    fixed: Vec<ShapeFact>,
    inputs: Vec<TensorSpec>,
    observers: Vec<Observer>,
    /// Per-channel means of the observed tensors (bias correction), once `track_means` ran.
    means: Vec<ChannelMeans>,
    /// Distinct values of the observed tensors `track_lattices` chose (8-bit inputs).
    lattices: Vec<Option<LatticeObserver>>,
    /// Input-patch second moments of the observed tensors `track_patches` chose (rounding).
    patches: Vec<Option<PatchMoments>>,
    /// The pool calibration runs on, shared with the patch statistics.
    executor: Executor,
    /// Outputs of the original model, which stay first in the calibration plan's outputs.
    skip: usize,
    batches: usize,
    samples: usize,
}

impl Calibrator {
    /// Prepares plans of the float model whose outputs are the model's own plus `observed`,
    /// outlets of `reference` (the float graph typed for the first batch). For a graph typed
    /// per signature, `reference` has that batch's shapes (but for a symbolic batch axis), and
    /// every later batch must have them too.
    pub fn new(
        reference: &TypedModel,
        inputs: &[TensorSpec],
        observed: &[OutletId],
        executor: Executor,
    ) -> Result<Self> {
        let mut model = reference.clone();
        let mut outputs =
            model.output_outlets().map_err(|e| Error::Calibration(chain(&e)))?.to_vec();
        let skip = outputs.len();
        outputs.extend_from_slice(observed);
        model.select_output_outlets(&outputs).map_err(|e| Error::Calibration(chain(&e)))?;
        let fixed = model
            .input_outlets()
            .and_then(|outlets| {
                outlets.iter().map(|&o| Ok(model.outlet_fact(o)?.shape.clone())).collect()
            })
            .map_err(|e| Error::Calibration(chain(&e)))?;
        let plans = Plans::new(&model, Some(executor.clone()), "calibration")?;
        Ok(Calibrator {
            plans,
            fixed,
            inputs: inputs.to_vec(),
            observers: vec![Observer::default(); observed.len()],
            means: Vec::new(),
            lattices: Vec::new(),
            patches: Vec::new(),
            executor,
            skip,
            batches: 0,
            samples: 0,
        })
    }

    /// Runs one batch (inputs in model order) and records every observed tensor.
    pub fn observe(&mut self, batch: Vec<Tensor>) -> Result<()> {
        let bindings =
            bind_inputs(&self.inputs, &batch).map_err(|e| Error::Calibration(e.to_string()))?;
        for ((spec, tensor), shape) in self.inputs.iter().zip(&batch).zip(&self.fixed) {
            let fits = shape.len() == tensor.rank()
                && shape
                    .iter()
                    .zip(tensor.shape())
                    .all(|(d, &n)| d.to_i64().map_or(true, |d| d == n as i64));
            if !fits {
                return Err(Error::Calibration(format!(
                    "input {:?} has shape {:?}, but the graph is typed per input shape and was \
                     typed for {shape:?}: give every calibration batch the first batch's shape \
                     (the batch size may vary)",
                    spec.name,
                    tensor.shape()
                )));
            }
        }
        self.samples += batch.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let plan = self.plans.get(&bindings, &batch)?;
        let values: TVec<TValue> = batch.into_iter().map(TValue::from).collect();
        let outputs = catch_panics("calibration", || {
            plan.run(values).map_err(|e| Error::Calibration(chain(&e)))
        })?;
        for (i, (observer, value)) in
            self.observers.iter_mut().zip(outputs.iter().skip(self.skip)).enumerate()
        {
            let view = value
                .to_plain_array_view::<f32>()
                .map_err(|e| Error::Calibration(format!("observed tensor is not float: {e:#}")))?;
            let owned;
            let slice = match view.as_slice() {
                Some(slice) => slice,
                None => {
                    owned = view.iter().copied().collect::<Vec<_>>();
                    &owned
                }
            };
            observer.observe(slice);
            if let Some(means) = self.means.get_mut(i) {
                means.observe(view.shape(), slice);
            }
            if let Some(Some(lattice)) = self.lattices.get_mut(i) {
                lattice.observe(view.shape(), slice);
            }
            if let Some(Some(patches)) = self.patches.get_mut(i) {
                patches.observe(view.shape(), slice, &self.executor);
            }
        }
        self.batches += 1;
        Ok(())
    }

    /// Also records per-channel means of each observed tensor, laid out as `layouts` says (one
    /// per observed outlet, in order).
    pub fn track_means(&mut self, layouts: &[MeanLayout]) {
        self.means = layouts.iter().map(|&l| ChannelMeans::new(l)).collect();
    }

    /// Also looks for per-channel 8-bit lattices in the observed tensors `which` selects (one
    /// flag per observed outlet, in order).
    pub fn track_lattices(&mut self, which: &[bool]) {
        self.lattices = which.iter().map(|&w| w.then(LatticeObserver::default)).collect();
    }

    /// Also records input-patch second moments of the observed tensors read by the layouts
    /// given (one entry per observed outlet, in order; `None`: not tracked).
    pub fn track_patches(&mut self, layouts: Vec<Option<PatchLayout>>) {
        self.patches = layouts.into_iter().map(|l| l.map(PatchMoments::new)).collect();
    }

    /// Per observed tensor, its centred patch moments (packed, per group; see
    /// [`PatchMoments::centred`]), empty where not tracked or not usable. Needs `track_means`.
    pub fn patch_moments(&self) -> Vec<Vec<f32>> {
        let means = self.means();
        (0..self.observers.len())
            .map(|i| match (self.patches.get(i), means.get(i)) {
                (Some(Some(patches)), Some(means)) => patches.centred(means),
                _ => Vec::new(),
            })
            .collect()
    }

    /// The lattice of each observed tensor, where one was tracked and found.
    pub fn lattices(&self) -> Vec<Option<ChannelLattice>> {
        (0..self.observers.len())
            .map(|i| self.lattices.get(i).and_then(|l| l.as_ref()?.lattice()))
            .collect()
    }

    /// The per-channel means of each observed tensor (empty vectors without `track_means`).
    pub fn means(&self) -> Vec<Vec<f32>> {
        (0..self.observers.len())
            .map(|i| self.means.get(i).map(ChannelMeans::means).unwrap_or_default())
            .collect()
    }

    /// Batches and samples (leading-axis items) observed so far.
    pub fn seen(&self) -> (usize, usize) {
        (self.batches, self.samples)
    }

    /// The observers, in the order the outlets were given.
    pub fn observers(&self) -> &[Observer] {
        &self.observers
    }

    /// Upper bound of the observers' memory, whatever the amount of data.
    pub fn memory_bound_bytes(&self) -> usize {
        self.observers.len() * Observer::bytes()
    }
}
