//! The shape of every operator the project computes itself (tract has no implementation): a
//! [`Compute`] says what its outputs are from its inputs' facts and computes them from
//! tensors; [`wrap`] turns it into both a typed op and the inference rules the ONNX loader
//! needs, so each operator is written once.

use std::fmt::Debug;
use std::hash::Hash;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceOp;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::{expand, Expansion};

/// An operator the project computes on plain tensors.
pub(super) trait Compute:
    Debug + Clone + PartialEq + Eq + Hash + Send + Sync + 'static
{
    /// The ONNX operator name, shown in plans and errors.
    fn name(&self) -> &'static str;

    /// How many inputs the node needs at least (the rest are optional).
    fn min_inputs(&self) -> usize {
        1
    }

    /// How many outputs the node has.
    fn outputs(&self) -> usize {
        1
    }

    /// Inputs whose values (not only their shapes) decide the output shapes: the graph is
    /// typed once they are known (they usually are constants, or specialise per signature).
    fn value_inputs(&self) -> &'static [usize] {
        &[]
    }

    /// The output facts, from the input facts (value inputs carry `konst`).
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;

    /// The outputs, from the input tensors.
    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// A [`Compute`] as a tract op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Computed<C: Compute>(pub C);

impl<C: Compute> Op for Computed<C> {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    op_as_typed_op!();
}

impl<C: Compute> EvalOp for Computed<C> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        check_arity(&self.0, inputs.len())?;
        self.0.compute(inputs)
    }
}

impl<C: Compute> TypedOp for Computed<C> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        check_arity(&self.0, inputs.len())?;
        self.0.output_facts(inputs)
    }

    as_op!();
}

/// The op and its inference rules: once every input's type and shape (and the values of
/// [`Compute::value_inputs`]) are known, the outputs are what [`Compute::output_facts`] says.
pub(super) fn wrap<C: Compute>(op: C) -> Box<dyn InferenceOp> {
    expand(Computed(op))
}

impl<C: Compute> Expansion for Computed<C> {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.outputs())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        let op = &self.0;
        s.given_all(inputs.iter().map(|input| &input.datum_type), move |s, types| {
            s.given_all(inputs.iter().map(|input| &input.shape), move |s, shapes| {
                let facts: TVec<TypedFact> =
                    types.iter().zip(shapes).map(|(dt, shape)| dt.fact(shape)).collect();
                let value_ixs: Vec<usize> =
                    op.value_inputs().iter().copied().filter(|&ix| ix < inputs.len()).collect();
                if value_ixs.is_empty() {
                    return settle_outputs(op, s, &facts, outputs);
                }
                let value_exps: Vec<_> = value_ixs.iter().map(|&ix| &inputs[ix].value).collect();
                s.given_all(value_exps, move |s, values| {
                    let mut facts = facts.clone();
                    for (&ix, value) in value_ixs.iter().zip(values) {
                        facts[ix] = TypedFact::try_from(value)?;
                    }
                    settle_outputs(op, s, &facts, outputs)
                })
            })
        })
    }
}

fn settle_outputs<C: Compute>(
    op: &C,
    s: &mut Solver,
    inputs: &[TypedFact],
    outputs: &[TensorProxy],
) -> InferenceResult {
    let refs: TVec<&TypedFact> = inputs.iter().collect();
    let facts = op.output_facts(&refs)?;
    ensure!(
        facts.len() == outputs.len(),
        "{} computes {} outputs, the node has {}",
        op.name(),
        facts.len(),
        outputs.len()
    );
    for (proxy, fact) in outputs.iter().zip(facts) {
        s.equals(&proxy.datum_type, fact.datum_type)?;
        s.equals(&proxy.shape, fact.shape.to_tvec())?;
    }
    Ok(())
}

fn check_arity<C: Compute>(op: &C, inputs: usize) -> TractResult<()> {
    ensure!(
        inputs >= op.min_inputs(),
        "{} needs {} inputs, has {inputs}",
        op.name(),
        op.min_inputs()
    );
    Ok(())
}

/// The input at `ix`, or an error naming the operator.
pub(super) fn input<'a>(
    name: &str,
    inputs: &'a [&TypedFact],
    ix: usize,
) -> TractResult<&'a TypedFact> {
    inputs.get(ix).copied().ok_or_else(|| format_err!("{name} needs input #{ix}"))
}

/// Every dim of a fact, concrete (the operator needs sizes, not symbols).
pub(super) fn concrete_shape(name: &str, fact: &TypedFact) -> TractResult<TVec<usize>> {
    fact.shape
        .as_concrete()
        .map(|shape| shape.into())
        .ok_or_else(|| format_err!("{name} needs concrete input sizes, got {:?}", fact.shape))
}

/// The value of a constant input, as integers.
pub(super) fn const_ints(name: &str, fact: &TypedFact, what: &str) -> TractResult<Vec<i64>> {
    let value = fact
        .konst
        .as_ref()
        .ok_or_else(|| format_err!("{name}: {what} must be known to type it"))?;
    values::<i64>(value)
}

/// An axis attribute in `[-rank, rank)` as an index.
pub(super) fn normalise_axis(name: &str, axis: i64, rank: usize) -> TractResult<usize> {
    let signed = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(signed)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| format_err!("{name}: axis {axis} is out of range for rank {rank}"))
}

/// A tensor's elements converted to `T`, in row-major order.
pub(super) fn values<T: Datum>(tensor: &Tensor) -> TractResult<Vec<T>> {
    Ok(tensor.cast_to::<T>()?.to_plain_array_view::<T>()?.iter().cloned().collect())
}

/// A result computed in f64 (or i64) back in the element type the node outputs.
pub(super) fn typed_output(tensor: Tensor, dt: DatumType) -> TractResult<TValue> {
    Ok(tensor.cast_to_dt(dt)?.into_owned().into_tvalue())
}

/// Row-major f64 results of `shape` as an output of element type `dt`.
pub(super) fn output_from(data: Vec<f64>, shape: &[usize], dt: DatumType) -> TractResult<TValue> {
    typed_output(ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor(), dt)
}
