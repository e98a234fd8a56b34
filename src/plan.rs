//! Runnable tract plans, one per set of concrete dynamic-axis sizes.
//!
//! A plan optimised with a symbolic batch axis works for every batch size, but tract then picks
//! shape-agnostic kernels (measured: MobileNetV2 batch 1 ran 7× slower than with a concrete
//! batch). So the first call at each batch size builds a plan for that size, and later calls
//! reuse it; the symbolic plan serves when the cache is full.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::RunOptions;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::tract_linalg::mmm::{EagerPackedInput, PackedMatrixStorage};
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use crate::error::{catch_load_panics, catch_panics, chain, Error, Result};

/// Most concrete plans kept per runtime (each holds its own packed weights).
const MAX_CONCRETE_PLANS: usize = 8;

/// Values of the model's dynamic-axis symbols, sorted by symbol name.
pub type SymbolBindings = Vec<(String, usize)>;

/// The plans of one model.
#[derive(Debug)]
pub struct Plans {
    decluttered: TypedModel,
    options: RunOptions,
    symbolic: Arc<TypedSimplePlan>,
    concrete: RwLock<HashMap<SymbolBindings, Arc<TypedSimplePlan>>>,
    source: String,
}

impl Plans {
    /// Declutters `typed` and builds its symbolic plan. With `executor`, the plans always run
    /// on it; with `None`, on the executor of the caller's scope (`multithread_tract_scope`),
    /// which is how the runtime changes thread counts between calls.
    pub fn new(typed: &TypedModel, executor: Option<Executor>, source: &str) -> Result<Self> {
        let options = RunOptions { executor, ..Default::default() };
        let load_error =
            |e: TractError| Error::ModelLoad { path: source.into(), reason: chain(&e) };
        catch_load_panics(source, || {
            let decluttered = typed.clone().into_decluttered().map_err(load_error)?;
            let symbolic = decluttered
                .clone()
                .into_optimized()
                .and_then(|m| m.into_runnable_with_options(&options))
                .map_err(load_error)?;
            Ok(Plans {
                decluttered,
                options,
                symbolic,
                concrete: RwLock::new(HashMap::new()),
                source: source.into(),
            })
        })
    }

    /// The decluttered (float, un-optimised) graph the plans are built from.
    pub fn decluttered(&self) -> &TypedModel {
        &self.decluttered
    }

    /// The plan for these symbol values: a cached concrete plan, a newly built one, or the
    /// symbolic plan when the cache is full or the model has no symbols.
    pub fn get(&self, bindings: SymbolBindings) -> Result<Arc<TypedSimplePlan>> {
        if bindings.is_empty() {
            return Ok(self.symbolic.clone());
        }
        if let Some(plan) = self.read_cache().get(&bindings) {
            return Ok(plan.clone());
        }
        if self.read_cache().len() >= MAX_CONCRETE_PLANS {
            return Ok(self.symbolic.clone());
        }
        // Built outside the lock: other calls keep running meanwhile.
        let plan = self.build(&bindings)?;
        let mut cache = self.concrete.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(cache.entry(bindings).or_insert(plan).clone())
    }

    /// A copy of these plans in which the int8 ops of the layers named in `ops` are replaced
    /// (new weights after an update). Nothing is re-optimised: the graphs are cloned, sharing
    /// every other op's weights, and the cached concrete plans carry over.
    pub fn with_ops(&self, ops: &HashMap<String, Box<dyn TypedOp>>) -> Result<Plans> {
        let replace = |model: &TypedModel| -> TypedModel {
            let mut model = model.clone();
            for node in model.nodes_mut() {
                let name = crate::ops::int8_layer(node.op.as_ref()).map(|l| l.name.as_str());
                let new = name.and_then(|name| ops.get(name));
                if let Some(layer) = new.and_then(|op| crate::ops::int8_layer(op.as_ref())) {
                    // The new weights, with the old op's links to its neighbours (u8 codes in
                    // or out), which an update does not change.
                    if let Some(op) = crate::ops::with_layer(node.op.as_ref(), layer) {
                        node.op = op;
                    }
                }
            }
            model
        };
        let runnable = |plan: &TypedSimplePlan| -> Result<Arc<TypedSimplePlan>> {
            replace(plan.model())
                .into_runnable_with_options(&self.options)
                .map_err(|e| Error::Update(format!("re-planning: {}", chain(&e))))
        };
        let concrete = self
            .read_cache()
            .iter()
            .map(|(bindings, plan)| Ok((bindings.clone(), runnable(plan)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Plans {
            decluttered: replace(&self.decluttered),
            options: self.options.clone(),
            symbolic: runnable(&self.symbolic)?,
            concrete: RwLock::new(concrete),
            source: self.source.clone(),
        })
    }

    /// Whether the graph holds any of the int8 layers named in `ops` (else [`Plans::with_ops`]
    /// would change nothing, and these plans can serve the next version as they are).
    pub fn holds_any(&self, ops: &HashMap<String, Box<dyn TypedOp>>) -> bool {
        self.decluttered.nodes().iter().any(|node| {
            crate::ops::int8_layer(node.op.as_ref()).is_some_and(|l| ops.contains_key(&l.name))
        })
    }

    /// Plans computing the input of the layer called `layer` (the features a head learner
    /// trains on) instead of the model's outputs.
    pub fn features_of(&self, layer: &str) -> Result<Plans> {
        let fail = |reason: String| Error::Update(format!("features of {layer}: {reason}"));
        let node = self
            .decluttered
            .nodes()
            .iter()
            .find(|n| {
                crate::ops::int8_layer(n.op.as_ref()).is_some_and(|l| l.name == layer)
                    || n.name == layer
            })
            .ok_or_else(|| fail("no such layer in the graph".into()))?;
        let input = *node.inputs.first().ok_or_else(|| fail("the layer has no input".into()))?;
        let mut model = self.decluttered.clone();
        model.select_output_outlets(&[input]).map_err(|e| fail(chain(&e)))?;
        Plans::new(&model, self.options.executor.clone(), &self.source)
    }

    /// Bytes of weights held by these plans (constants, plain or packed, and int8 layer
    /// weights, in the decluttered graph and every runnable plan), counting only those whose
    /// address is not yet in `seen` — shared with another version or plan — and adding them.
    pub fn held_bytes(&self, seen: &mut HashSet<usize>) -> usize {
        let mut bytes = graph_bytes(&self.decluttered, seen);
        bytes += graph_bytes(self.symbolic.model(), seen);
        for plan in self.read_cache().values() {
            bytes += graph_bytes(plan.model(), seen);
        }
        bytes
    }

    /// An upper bound on the bytes of all tensors one run computes with these symbol values
    /// (every node output, no reuse), from the graph's shapes alone; unknown dims count as huge.
    pub fn tensor_bytes(&self, bindings: &SymbolBindings) -> u128 {
        let values = bindings.iter().fold(SymbolValues::default(), |values, (name, size)| {
            values.with(&self.decluttered.symbols.sym(name), *size as i64)
        });
        let mut total: u128 = 0;
        for node in self.decluttered.nodes() {
            for output in &node.outputs {
                let elements = output.fact.shape.iter().fold(1u128, |acc, dim| {
                    let size =
                        dim.eval(&values).to_i64().map_or(u64::MAX as u128, |d| d.max(0) as u128);
                    acc.saturating_mul(size)
                });
                total = total.saturating_add(
                    elements.saturating_mul(output.fact.datum_type.size_of() as u128),
                );
            }
        }
        total
    }

    fn read_cache(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<SymbolBindings, Arc<TypedSimplePlan>>> {
        // A panic while holding the lock cannot leave the map half-updated (single insert).
        self.concrete.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn build(&self, bindings: &SymbolBindings) -> Result<Arc<TypedSimplePlan>> {
        let subs: HashMap<Symbol, TDim> = bindings
            .iter()
            .map(|(name, value)| (self.decluttered.symbols.sym(name), TDim::Val(*value as i64)))
            .collect();
        catch_panics("specialising the model", || {
            let start = std::time::Instant::now();
            let plan = self
                .decluttered
                .set_symbols(&subs)
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable_with_options(&self.options))
                .map_err(|e| Error::Inference(format!("preparing {bindings:?}: {}", chain(&e))))?;
            log::debug!("{}: plan for {bindings:?} built in {:?}", self.source, start.elapsed());
            Ok(plan)
        })
    }
}

/// Bytes of the constants and int8 weights of `model` not already in `seen` (by address).
pub fn graph_bytes(model: &TypedModel, seen: &mut HashSet<usize>) -> usize {
    let mut bytes = 0;
    for node in model.nodes() {
        if let Some(konst) = node.op_as::<Const>() {
            if seen.insert(Arc::as_ptr(konst.val()) as usize) {
                bytes += tensor_bytes(konst.val());
            }
        } else if let Some(layer) = crate::ops::int8_layer(node.op.as_ref()) {
            if seen.insert(Arc::as_ptr(&layer.weights) as usize) {
                bytes += layer.weights.bytes();
            }
        }
    }
    bytes
}

/// Bytes a tensor holds: its plain buffer, or the panels of weights tract packed for its
/// matrix-multiplication kernels.
pub fn tensor_bytes(tensor: &Tensor) -> usize {
    if let Some(plain) = tensor.as_plain_ram_storage() {
        return plain.as_bytes().len();
    }
    tensor.storage_as::<PackedMatrixStorage>().map_or(0, |packed| {
        packed
            .values()
            .iter()
            .filter_map(|v| v.downcast_ref::<EagerPackedInput>())
            .map(|eager| eager.packed.len())
            .sum()
    })
}
