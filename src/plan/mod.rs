//! Runnable tract plans, one per concrete input signature, kept in a bounded LRU cache.
//!
//! A plan optimised with a symbolic batch axis works for every batch size, but tract then picks
//! shape-agnostic kernels (measured: MobileNetV2 batch 1 ran 7× slower than with a concrete
//! batch). So the first call at each signature builds a plan for it, and later calls reuse it.
//! A graph that tract could type symbolically is specialised by substituting its symbols; one
//! that types only with concrete inputs ([`Graph::PerSignature`]) is typed anew per signature,
//! then put through the same transforms (the int8 rewrite, calibration outputs) and optimised.

mod cache;
mod optimize;

pub(crate) use cache::Lru;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::RunOptions;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::tract_linalg::mmm::{EagerPackedInput, PackedMatrixStorage};
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use crate::error::{catch_load_panics, catch_panics, chain, Error, Result};
use crate::model::graph::{bind_symbols, specialise, specialises_by_value, Graph, Signature};
use optimize::optimize;

/// Concrete plans kept per runtime unless told otherwise (each holds its own packed weights).
pub const DEFAULT_MAX_PLANS: usize = 8;

pub use crate::model::SymbolBindings;

/// A rewrite applied to each graph typed for a signature, before it is optimised.
pub type Transform = Arc<dyn Fn(TypedModel) -> Result<TypedModel> + Send + Sync>;

/// What a cached plan was built for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PlanKey {
    Symbols(SymbolBindings),
    Signature(Signature),
}

/// Where plans come from.
#[derive(Clone)]
enum Source {
    /// The decluttered graph with symbolic axes, and its symbolic plan.
    Symbolic { decluttered: TypedModel, symbolic: Arc<TypedSimplePlan> },
    /// The graph as decoded, typed per signature, then rewritten by `transforms` in order.
    PerSignature {
        model: Arc<InferenceModel>,
        by_value: Vec<bool>,
        names: Vec<String>,
        transforms: Vec<Transform>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Symbolic { .. } => f.write_str("Symbolic"),
            Source::PerSignature { names, transforms, .. } => {
                write!(f, "PerSignature({names:?}, {} transform(s))", transforms.len())
            }
        }
    }
}

/// The plans of one model.
#[derive(Debug)]
pub struct Plans {
    source: Source,
    options: RunOptions,
    concrete: Mutex<Lru<PlanKey, Arc<TypedSimplePlan>>>,
    name: String,
}

impl Plans {
    /// Declutters `typed` and builds its symbolic plan. With `executor`, the plans always run
    /// on it; with `None`, on the executor of the caller's scope (`multithread_tract_scope`),
    /// which is how the runtime changes thread counts between calls.
    pub fn new(typed: &TypedModel, executor: Option<Executor>, source: &str) -> Result<Self> {
        Self::symbolic(typed, executor, source, DEFAULT_MAX_PLANS)
    }

    /// Plans of `graph`, keeping at most `max_plans` concrete plans.
    pub fn from_graph(
        graph: &Graph,
        executor: Option<Executor>,
        source: &str,
        max_plans: usize,
    ) -> Result<Self> {
        match graph {
            Graph::Symbolic(typed) => Self::symbolic(typed, executor, source, max_plans),
            Graph::PerSignature(model) => {
                Self::per_signature(model.clone(), executor, source, max_plans)
            }
        }
    }

    fn symbolic(
        typed: &TypedModel,
        executor: Option<Executor>,
        source: &str,
        max_plans: usize,
    ) -> Result<Self> {
        let options = RunOptions { executor, ..Default::default() };
        let load_error =
            |e: TractError| Error::ModelLoad { path: source.into(), reason: chain(&e) };
        catch_load_panics(source, || {
            let decluttered = typed.clone().into_decluttered().map_err(load_error)?;
            let symbolic = optimize(decluttered.clone())
                .and_then(|m| m.into_runnable_with_options(&options))
                .map_err(load_error)?;
            Ok(Plans {
                source: Source::Symbolic { decluttered, symbolic },
                options,
                concrete: Mutex::new(Lru::new(max_plans)),
                name: source.into(),
            })
        })
    }

    /// Plans typing `model` anew for each input signature.
    pub fn per_signature(
        model: Arc<InferenceModel>,
        executor: Option<Executor>,
        source: &str,
        max_plans: usize,
    ) -> Result<Self> {
        let load_error =
            |e: TractError| Error::ModelLoad { path: source.into(), reason: chain(&e) };
        let mut by_value = Vec::new();
        let mut names = Vec::new();
        for (ix, outlet) in model.inputs.iter().enumerate() {
            by_value.push(specialises_by_value(model.input_fact(ix).map_err(load_error)?));
            names.push(model.node(outlet.node).name.clone());
        }
        Ok(Plans {
            source: Source::PerSignature { model, by_value, names, transforms: Vec::new() },
            options: RunOptions { executor, ..Default::default() },
            concrete: Mutex::new(Lru::new(max_plans)),
            name: source.into(),
        })
    }

    /// These plans with `transform` applied to every graph typed from now on (per-signature
    /// plans only; a symbolic graph is rewritten once, before its plans are made).
    pub fn with_transform(&self, transform: Transform) -> Result<Plans> {
        let Source::PerSignature { model, by_value, names, transforms } = &self.source else {
            return Err(Error::Internal("a symbolic graph takes no per-signature rewrite".into()));
        };
        let mut transforms = transforms.clone();
        transforms.push(transform);
        let source = Source::PerSignature {
            model: model.clone(),
            by_value: by_value.clone(),
            names: names.clone(),
            transforms,
        };
        let capacity = self.lock_cache().capacity();
        Ok(Plans {
            source,
            options: self.options.clone(),
            concrete: Mutex::new(Lru::new(capacity)),
            name: self.name.clone(),
        })
    }

    /// The decluttered (float, un-optimised) graph with symbolic axes the plans are built
    /// from; `None` for a graph typed per signature.
    pub fn decluttered(&self) -> Option<&TypedModel> {
        match &self.source {
            Source::Symbolic { decluttered, .. } => Some(decluttered),
            Source::PerSignature { .. } => None,
        }
    }

    /// Whether the graph is typed per signature rather than once.
    pub fn per_signature_typing(&self) -> bool {
        matches!(self.source, Source::PerSignature { .. })
    }

    /// The decluttered graph typed for `inputs`: the symbolic graph as it is, or the graph
    /// typed and transformed for their signature.
    pub fn typed_for(&self, inputs: &[Tensor]) -> Result<TypedModel> {
        match &self.source {
            Source::Symbolic { decluttered, .. } => Ok(decluttered.clone()),
            Source::PerSignature { by_value, .. } => {
                self.type_signature(&Signature::of(inputs, by_value))
            }
        }
    }

    /// The plan for a call with these inputs (whose symbol values are `bindings`): a cached
    /// concrete plan, or a newly built one. A symbolic graph without symbols has one plan.
    pub fn get(
        &self,
        bindings: &SymbolBindings,
        inputs: &[Tensor],
    ) -> Result<Arc<TypedSimplePlan>> {
        let key = match &self.source {
            Source::Symbolic { symbolic, .. } if bindings.is_empty() => return Ok(symbolic.clone()),
            Source::Symbolic { .. } => PlanKey::Symbols(bindings.clone()),
            Source::PerSignature { by_value, .. } => {
                PlanKey::Signature(Signature::of(inputs, by_value))
            }
        };
        if let Some(plan) = self.lock_cache().get(&key) {
            return Ok(plan);
        }
        // Built outside the lock: other calls keep running meanwhile.
        let start = std::time::Instant::now();
        let plan = self.build(&key)?;
        let (plan, evicted) = self.lock_cache().insert(key.clone(), plan);
        log::debug!(
            "{}: plan for {} built in {:?}{}",
            self.name,
            self.describe(&key),
            start.elapsed(),
            evicted.map_or(String::new(), |k| format!(
                ", dropping the plan for {}",
                self.describe(&k)
            ))
        );
        Ok(plan)
    }

    /// The model's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Concrete plans cached now, and the most kept.
    pub fn cached(&self) -> (usize, usize) {
        let cache = self.lock_cache();
        (cache.len(), cache.capacity())
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
        let source = match &self.source {
            Source::Symbolic { decluttered, symbolic } => Source::Symbolic {
                decluttered: replace(decluttered),
                symbolic: runnable(symbolic)?,
            },
            Source::PerSignature { .. } => {
                return Err(Error::Update(
                    "layers of a graph typed per input signature are not swapped in place".into(),
                ))
            }
        };
        let cache = self.lock_cache();
        let mut concrete = Lru::new(cache.capacity());
        for (key, plan) in cache.iter() {
            concrete.insert(key.clone(), runnable(plan)?);
        }
        Ok(Plans {
            source,
            options: self.options.clone(),
            concrete: Mutex::new(concrete),
            name: self.name.clone(),
        })
    }

    /// Whether the graph holds any of the int8 layers named in `ops` (else [`Plans::with_ops`]
    /// would change nothing, and these plans can serve the next version as they are).
    pub fn holds_any(&self, ops: &HashMap<String, Box<dyn TypedOp>>) -> bool {
        self.decluttered().is_some_and(|graph| {
            graph.nodes().iter().any(|node| {
                crate::ops::int8_layer(node.op.as_ref()).is_some_and(|l| ops.contains_key(&l.name))
            })
        })
    }

    /// Plans computing the input of the layer called `layer` (the features a head learner
    /// trains on) instead of the model's outputs.
    pub fn features_of(&self, layer: &str) -> Result<Plans> {
        let fail = |reason: String| Error::Update(format!("features of {layer}: {reason}"));
        let Some(decluttered) = self.decluttered() else {
            return Err(fail(
                "the model is typed per input signature; head learning needs a graph tract \
                 types with symbolic axes"
                    .into(),
            ));
        };
        let node = decluttered
            .nodes()
            .iter()
            .find(|n| {
                crate::ops::int8_layer(n.op.as_ref()).is_some_and(|l| l.name == layer)
                    || n.name == layer
            })
            .ok_or_else(|| fail("no such layer in the graph".into()))?;
        let input = *node.inputs.first().ok_or_else(|| fail("the layer has no input".into()))?;
        let mut model = decluttered.clone();
        model.select_output_outlets(&[input]).map_err(|e| fail(chain(&e)))?;
        Plans::new(&model, self.options.executor.clone(), &self.name)
    }

    /// Bytes of weights held by these plans (constants, plain or packed, and int8 layer
    /// weights, in the decluttered graph and every runnable plan), counting only those whose
    /// address is not yet in `seen` — shared with another version or plan — and adding them.
    pub fn held_bytes(&self, seen: &mut HashSet<usize>) -> usize {
        let mut bytes = match &self.source {
            Source::Symbolic { decluttered, symbolic } => {
                graph_bytes(decluttered, seen) + graph_bytes(symbolic.model(), seen)
            }
            Source::PerSignature { .. } => 0,
        };
        bytes += self.cache_bytes(seen);
        bytes
    }

    /// Bytes of the cached concrete plans' weights not already in `seen`.
    pub fn cache_bytes(&self, seen: &mut HashSet<usize>) -> usize {
        self.lock_cache().values().map(|plan| graph_bytes(plan.model(), seen)).sum()
    }

    /// An upper bound on the bytes of all tensors one run computes with these inputs (every
    /// node output, no reuse), from the graph's shapes: before any plan is built for a
    /// symbolic graph; from the signature's plan for a graph typed per signature.
    pub fn tensor_bytes(&self, bindings: &SymbolBindings, inputs: &[Tensor]) -> Result<u128> {
        let (graph, values) = match &self.source {
            Source::Symbolic { decluttered, .. } => {
                let values =
                    bindings.iter().fold(SymbolValues::default(), |values, (name, size)| {
                        values.with(&decluttered.symbols.sym(name), *size as i64)
                    });
                (decluttered.clone(), values)
            }
            Source::PerSignature { .. } => {
                (self.get(bindings, inputs)?.model().clone(), SymbolValues::default())
            }
        };
        let mut total: u128 = 0;
        for node in graph.nodes() {
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
        Ok(total)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Lru<PlanKey, Arc<TypedSimplePlan>>> {
        // A panic while holding the lock cannot leave the map half-updated (single insert).
        self.concrete.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn describe(&self, key: &PlanKey) -> String {
        match (key, &self.source) {
            (PlanKey::Symbols(bindings), _) => format!("{bindings:?}"),
            (PlanKey::Signature(signature), Source::PerSignature { names, .. }) => {
                signature.describe(names)
            }
            (PlanKey::Signature(signature), _) => format!("{signature:?}"),
        }
    }

    /// The graph typed and transformed for `signature`; the error names the signature and,
    /// through tract's message, the node that could not be typed.
    fn type_signature(&self, signature: &Signature) -> Result<TypedModel> {
        let Source::PerSignature { model, names, transforms, .. } = &self.source else {
            return Err(Error::Internal("typing a symbolic graph per signature".into()));
        };
        let fail = |reason: String| {
            Error::Inference(format!(
                "the model cannot be typed for inputs {}: {reason}",
                signature.describe(names)
            ))
        };
        let mut typed = catch_panics("typing the model", || {
            specialise(model, signature).map_err(|e| fail(chain(&e)))
        })?;
        for transform in transforms {
            typed = transform(typed)?;
        }
        Ok(typed)
    }

    fn build(&self, key: &PlanKey) -> Result<Arc<TypedSimplePlan>> {
        let typed = match (key, &self.source) {
            (PlanKey::Symbols(bindings), Source::Symbolic { decluttered, .. }) => {
                let subs: HashMap<Symbol, TDim> = bindings
                    .iter()
                    .map(|(name, value)| (decluttered.symbols.sym(name), TDim::Val(*value as i64)))
                    .collect();
                catch_panics("specialising the model", || {
                    decluttered.set_symbols(&subs).map_err(|e| {
                        Error::Inference(format!("preparing {bindings:?}: {}", chain(&e)))
                    })
                })?
            }
            (PlanKey::Signature(signature), _) => {
                let typed = self.type_signature(signature)?;
                bind_symbols(typed, signature).map_err(|e| {
                    Error::Inference(format!("preparing {}: {}", self.describe(key), chain(&e)))
                })?
            }
            (PlanKey::Symbols(_), Source::PerSignature { .. }) => {
                return Err(Error::Internal("symbol bindings for a per-signature graph".into()))
            }
        };
        catch_panics("optimising the model", || {
            optimize(typed).and_then(|m| m.into_runnable_with_options(&self.options)).map_err(|e| {
                Error::Inference(format!("preparing {}: {}", self.describe(key), chain(&e)))
            })
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
