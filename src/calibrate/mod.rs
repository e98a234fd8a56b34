//! The calibration pass: run the float model over calibration data with chosen tensors observed,
//! and turn the observations into quantization ranges.
//!
//! The observed tensors are made extra outputs of the decluttered graph (tract keeps outputs
//! intact through optimisation), so one run per batch yields every range.

mod lattice;
mod means;
mod observer;
mod patches;

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

pub use lattice::{ChannelLattice, LatticeObserver};
pub use means::{ChannelMeans, MeanLayout};
pub use observer::{Method, Observer, BINS};
pub use patches::{packed_len, PatchLayout, PatchMoments, MAX_PATCH_LEN};

use crate::error::{catch_panics, chain, Error, Result};
use crate::model::TensorSpec;
use crate::model::{bind_inputs, SymbolBindings};
use crate::plan::{Lru, Plans, DEFAULT_MAX_PLANS};

/// Observes chosen outlets of a decluttered graph over calibration batches.
#[derive(Debug)]
pub struct Calibrator {
    plans: Arc<Plans>,
    /// The calibration graph's input shapes (concrete but for symbolic axes).
    fixed: Vec<ShapeFact>,
    /// Where each observed outlet is, by names, to find it in a graph typed for another shape.
    observed_names: Vec<OutletName>,
    /// Calibration plans of graphs typed for batches of other shapes, by input shapes.
    retyped: Lru<Vec<Vec<usize>>, Arc<Plans>>,
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
    /// per signature, `reference` has that batch's shapes (but for a symbolic batch axis);
    /// batches of other shapes go through [`Calibrator::observe_retyped`].
    pub fn new(
        reference: &TypedModel,
        inputs: &[TensorSpec],
        observed: &[OutletId],
        executor: Executor,
    ) -> Result<Self> {
        let observed_names = observed.iter().map(|&o| OutletName::of(reference, o)).collect();
        let model = with_observed_outputs(reference, observed)?;
        let fixed = model
            .input_outlets()
            .and_then(|outlets| {
                outlets.iter().map(|&o| Ok(model.outlet_fact(o)?.shape.clone())).collect()
            })
            .map_err(|e| Error::Calibration(chain(&e)))?;
        let skip = reference.output_outlets().map_err(|e| Error::Calibration(chain(&e)))?.len();
        let plans = Arc::new(Plans::new(&model, Some(executor.clone()), "calibration")?);
        Ok(Calibrator {
            plans,
            fixed,
            observed_names,
            retyped: Lru::new(DEFAULT_MAX_PLANS),
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

    /// Whether `batch` has the shapes the reference graph was typed for.
    fn fits(&self, batch: &[Tensor]) -> bool {
        batch.len() == self.fixed.len()
            && batch.iter().zip(&self.fixed).all(|(tensor, shape)| {
                shape.len() == tensor.rank()
                    && shape
                        .iter()
                        .zip(tensor.shape())
                        .all(|(d, &n)| d.to_i64().map_or(true, |d| d == n as i64))
            })
    }

    /// Runs one batch (inputs in model order) and records every observed tensor. A batch of
    /// the first batch's shapes (the batch size may vary) runs on the reference graph; one of
    /// other shapes on `retype(batch)`, the float graph typed for it (built once per distinct
    /// shape, a few kept), where the observed tensors are found by name, so their statistics
    /// add up across shapes.
    pub fn observe(
        &mut self,
        batch: Vec<Tensor>,
        retype: impl FnOnce(&[Tensor]) -> Result<TypedModel>,
    ) -> Result<()> {
        let bindings =
            bind_inputs(&self.inputs, &batch).map_err(|e| Error::Calibration(e.to_string()))?;
        let plans = if self.fits(&batch) {
            Arc::clone(&self.plans)
        } else {
            self.retyped_plans(&batch, retype)?
        };
        self.record(&plans, &bindings, batch)
    }

    /// The calibration plans of the float graph typed for `batch`'s shapes.
    fn retyped_plans(
        &mut self,
        batch: &[Tensor],
        retype: impl FnOnce(&[Tensor]) -> Result<TypedModel>,
    ) -> Result<Arc<Plans>> {
        let key: Vec<Vec<usize>> = batch.iter().map(|t| t.shape().to_vec()).collect();
        if let Some(plans) = self.retyped.get(&key) {
            return Ok(plans);
        }
        let typed = retype(batch)?;
        let observed = self
            .observed_names
            .iter()
            .map(|name| {
                name.find(&typed).ok_or_else(|| {
                    Error::Calibration(format!(
                        "calibration batch of shapes {key:?}: tensor {:?} of the first batch's \
                         graph is not in the graph typed for these shapes",
                        name.producer.0
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let model = with_observed_outputs(&typed, &observed)?;
        let plans = Plans::new(&model, Some(self.executor.clone()), "calibration")?;
        Ok(self.retyped.insert(key, Arc::new(plans)).0)
    }

    /// Runs `batch` (bound as `bindings`) on `plans` and adds every observed tensor to the
    /// statistics.
    fn record(
        &mut self,
        plans: &Plans,
        bindings: &SymbolBindings,
        batch: Vec<Tensor>,
    ) -> Result<()> {
        self.samples += batch.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let plan = plans.get(bindings, &batch)?;
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

/// `model` with `observed` added after its own outputs.
fn with_observed_outputs(model: &TypedModel, observed: &[OutletId]) -> Result<TypedModel> {
    let mut model = model.clone();
    let mut outputs = model.output_outlets().map_err(|e| Error::Calibration(chain(&e)))?.to_vec();
    outputs.extend_from_slice(observed);
    model.select_output_outlets(&outputs).map_err(|e| Error::Calibration(chain(&e)))?;
    Ok(model)
}

/// An outlet by names: its producer's, and its consumers' with their input slots. tract names
/// the nodes it makes while decluttering after the ONNX node (`….silu.2`), and the numbering
/// can differ between graphs typed for different shapes; the consumers (the int8 layers, named
/// by the file) are found by name when the producer is not.
#[derive(Debug, Clone)]
struct OutletName {
    producer: (String, usize),
    consumers: Vec<(String, usize)>,
}

impl OutletName {
    fn of(model: &TypedModel, outlet: OutletId) -> OutletName {
        let consumers = model
            .outlet_successors(outlet)
            .iter()
            .map(|inlet| (model.node(inlet.node).name.clone(), inlet.slot));
        OutletName {
            producer: (model.node(outlet.node).name.clone(), outlet.slot),
            consumers: consumers.collect(),
        }
    }

    fn find(&self, model: &TypedModel) -> Option<OutletId> {
        if let Ok(node) = model.node_by_name(&self.producer.0) {
            return Some(OutletId::new(node.id, self.producer.1));
        }
        self.consumers.iter().find_map(|(name, slot)| {
            model.node_by_name(name).ok().and_then(|node| node.inputs.get(*slot).copied())
        })
    }
}
