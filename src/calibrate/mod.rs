//! The calibration pass: run the float model over calibration data with chosen tensors observed,
//! and turn the observations into quantization ranges.
//!
//! The observed tensors are made extra outputs of the decluttered graph (tract keeps outputs
//! intact through optimisation), so one run per batch yields every range.

mod observer;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

pub use observer::{Method, Observer, BINS};

use crate::error::{catch_panics, chain, Error, Result};
use crate::model::TensorSpec;
use crate::plan::Plans;
use crate::runtime::bind_inputs;

/// Observes chosen outlets of a decluttered graph over calibration batches.
#[derive(Debug)]
pub struct Calibrator {
    plans: Plans,
    inputs: Vec<TensorSpec>,
    observers: Vec<Observer>,
    /// Outputs of the original model, which stay first in the calibration plan's outputs.
    skip: usize,
    batches: usize,
    samples: usize,
}

impl Calibrator {
    /// Prepares a plan of `decluttered` whose outputs are the model's own plus `observed`.
    pub fn new(
        decluttered: &TypedModel,
        inputs: &[TensorSpec],
        observed: &[OutletId],
        executor: Executor,
    ) -> Result<Self> {
        let mut model = decluttered.clone();
        let mut outputs =
            model.output_outlets().map_err(|e| Error::Calibration(chain(&e)))?.to_vec();
        let skip = outputs.len();
        outputs.extend_from_slice(observed);
        model.select_output_outlets(&outputs).map_err(|e| Error::Calibration(chain(&e)))?;
        let plans = Plans::new(&model, Some(executor), "calibration")?;
        Ok(Calibrator {
            plans,
            inputs: inputs.to_vec(),
            observers: vec![Observer::default(); observed.len()],
            skip,
            batches: 0,
            samples: 0,
        })
    }

    /// Runs one batch (inputs in model order) and records every observed tensor.
    pub fn observe(&mut self, batch: Vec<Tensor>) -> Result<()> {
        let bindings =
            bind_inputs(&self.inputs, &batch).map_err(|e| Error::Calibration(e.to_string()))?;
        self.samples += batch.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let plan = self.plans.get(bindings)?;
        let values: TVec<TValue> = batch.into_iter().map(TValue::from).collect();
        let outputs = catch_panics("calibration", || {
            plan.run(values).map_err(|e| Error::Calibration(chain(&e)))
        })?;
        for (observer, value) in self.observers.iter_mut().zip(outputs.iter().skip(self.skip)) {
            let view = value
                .to_plain_array_view::<f32>()
                .map_err(|e| Error::Calibration(format!("observed tensor is not float: {e:#}")))?;
            match view.as_slice() {
                Some(slice) => observer.observe(slice),
                None => observer.observe(&view.iter().copied().collect::<Vec<_>>()),
            }
        }
        self.batches += 1;
        Ok(())
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
