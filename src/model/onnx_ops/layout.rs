//! Operators that only move elements (`CenterCropPad`, `ReverseSequence`, `BitCast`,
//! `Compress`, `TensorScatter`): they work on the raw bytes of any fixed-size element type, viewed as an array
//! with one more axis for the bytes of an element.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::computed::{concrete_shape, const_ints, input, normalise_axis, values, wrap, Compute};
use super::Parsed;

/// A tensor's elements as bytes, with a last axis for the bytes of one element.
fn byte_view(tensor: &Tensor) -> TractResult<ArrayViewD<'_, u8>> {
    ensure!(tensor.datum_type() != DatumType::String, "strings have no fixed element size");
    let mut shape = tensor.shape().to_vec();
    shape.push(tensor.datum_type().size_of());
    Ok(ArrayViewD::from_shape(IxDyn(&shape), tensor.as_bytes())?)
}

/// Bytes laid out as [`byte_view`] back into a tensor of `dt`.
fn from_bytes(dt: DatumType, bytes: ArrayD<u8>) -> TractResult<TValue> {
    let shape = &bytes.shape()[..bytes.ndim() - 1];
    let shape = shape.to_vec();
    let bytes = bytes.as_standard_layout();
    let slice = bytes.as_slice().ok_or_else(|| format_err!("bytes not contiguous"))?;
    let mut tensor = Tensor::zero_dt(dt, &shape)?;
    ensure!(
        tensor.as_bytes().len() == slice.len(),
        "{} bytes do not make {dt:?} {shape:?}",
        slice.len()
    );
    tensor.as_bytes_mut().copy_from_slice(slice);
    Ok(tensor.into_tvalue())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct CenterCropPad {
    /// The axes `shape` gives sizes for (all, in order, when the node has none).
    axes: Option<Vec<i64>>,
}

pub(super) fn center_crop_pad(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    Ok((wrap(CenterCropPad { axes: node.get_attr_opt_vec("axes")? }), vec![]))
}

impl CenterCropPad {
    /// For each axis: the output size, and the input and output ranges copied.
    fn plan(&self, input: &[usize], sizes: &[i64]) -> TractResult<Vec<(usize, Slice, Slice)>> {
        let rank = input.len();
        let axes: Vec<usize> = match &self.axes {
            Some(axes) => axes
                .iter()
                .map(|&a| normalise_axis("CenterCropPad", a, rank))
                .collect::<TractResult<_>>()?,
            None => (0..rank).collect(),
        };
        ensure!(
            axes.len() == sizes.len(),
            "CenterCropPad: {} sizes for {} axes",
            sizes.len(),
            axes.len()
        );
        let mut plan: Vec<(usize, Slice, Slice)> =
            input.iter().map(|&dim| (dim, Slice::from(..), Slice::from(..))).collect();
        for (&axis, &size) in axes.iter().zip(sizes) {
            let size = usize::try_from(size)
                .map_err(|_| format_err!("CenterCropPad: negative size {size}"))?;
            let dim = input[axis];
            // The larger extent loses (or gains) floor(d / 2) before and the rest after.
            let margin = |big: usize, small: usize| {
                let start = (big - small) / 2;
                Slice::from(start as isize..(start + small) as isize)
            };
            plan[axis] = match size.cmp(&dim) {
                std::cmp::Ordering::Equal => (dim, Slice::from(..), Slice::from(..)),
                std::cmp::Ordering::Less => (size, margin(dim, size), Slice::from(..)),
                std::cmp::Ordering::Greater => (size, Slice::from(..), margin(size, dim)),
            };
        }
        Ok(plan)
    }
}

impl Compute for CenterCropPad {
    fn name(&self) -> &'static str {
        "CenterCropPad"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn value_inputs(&self) -> &'static [usize] {
        &[1]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let data = input(self.name(), inputs, 0)?;
        let sizes = const_ints(self.name(), input(self.name(), inputs, 1)?, "shape")?;
        let plan = self.plan(&concrete_shape(self.name(), data)?, &sizes)?;
        Ok(tvec![data.datum_type.fact(plan.iter().map(|p| p.0).collect::<TVec<_>>())])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let plan = self.plan(inputs[0].shape(), &values::<i64>(&inputs[1])?)?;
        let bytes = byte_view(&inputs[0])?;
        let mut out_shape: Vec<usize> = plan.iter().map(|p| p.0).collect();
        out_shape.push(inputs[0].datum_type().size_of());
        let mut out = ArrayD::<u8>::zeros(IxDyn(&out_shape));
        let whole = |ax: usize, pick: fn(&(usize, Slice, Slice)) -> Slice| {
            plan.get(ax).map_or(Slice::from(..), pick)
        };
        let source = bytes.slice_each_axis(|ax| whole(ax.axis.index(), |p| p.1));
        out.slice_each_axis_mut(|ax| whole(ax.axis.index(), |p| p.2)).assign(&source);
        Ok(tvec![from_bytes(inputs[0].datum_type(), out)?])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ReverseSequence {
    batch_axis: usize,
    time_axis: usize,
}

pub(super) fn reverse_sequence(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let batch_axis = node.get_attr_opt::<i64>("batch_axis")?.unwrap_or(1);
    let time_axis = node.get_attr_opt::<i64>("time_axis")?.unwrap_or(0);
    let axis = |a: i64| {
        usize::try_from(a).map_err(|_| format_err!("ReverseSequence: axis {a} must be 0 or 1"))
    };
    let op = ReverseSequence { batch_axis: axis(batch_axis)?, time_axis: axis(time_axis)? };
    Ok((wrap(op), vec![]))
}

impl Compute for ReverseSequence {
    fn name(&self) -> &'static str {
        "ReverseSequence"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec![input(self.name(), inputs, 0)?.without_value()])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let bytes = byte_view(&inputs[0])?;
        let lens = values::<i64>(&inputs[1])?;
        let (batch, time) = (Axis(self.batch_axis), Axis(self.time_axis));
        ensure!(
            self.batch_axis != self.time_axis
                && self.batch_axis.max(self.time_axis) + 1 < bytes.ndim(),
            "ReverseSequence needs distinct batch and time axes of a rank >= 2 tensor"
        );
        let steps = bytes.len_of(time);
        ensure!(lens.len() == bytes.len_of(batch), "ReverseSequence: one length per batch item");
        let mut out = bytes.to_owned();
        for (item, &len) in lens.iter().enumerate() {
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= steps)
                .ok_or_else(|| format_err!("ReverseSequence: length {len} out of 0..={steps}"))?;
            let source = bytes.index_axis(batch, item);
            let mut target = out.index_axis_mut(batch, item);
            // Removing the batch axis shifts the time axis down when it came after it.
            let time =
                if self.time_axis > self.batch_axis { Axis(self.time_axis - 1) } else { time };
            for t in 0..len {
                target.index_axis_mut(time, t).assign(&source.index_axis(time, len - 1 - t));
            }
        }
        Ok(tvec![from_bytes(inputs[0].datum_type(), out)?])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BitCast {
    to: DatumType,
}

pub(super) fn bit_cast(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let code = node.get_attr::<i64>("to")?;
    let to = i32::try_from(code)
        .ok()
        .and_then(|c| DataType::try_from(c).ok())
        .ok_or_else(|| format_err!("BitCast: unknown type code {code}"))?;
    Ok((wrap(BitCast { to: DatumType::try_from(to)? }), vec![]))
}

impl Compute for BitCast {
    fn name(&self) -> &'static str {
        "BitCast"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = input(self.name(), inputs, 0)?;
        ensure!(
            x.datum_type.size_of() == self.to.size_of() && self.to != DatumType::String,
            "BitCast from {:?} to {:?}: the types must have the same size",
            x.datum_type,
            self.to
        );
        Ok(tvec![self.to.fact(x.shape.clone())])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let bytes = byte_view(&inputs[0])?;
        // A bool holds 0 or 1 only: reinterpreting other bytes as bool would be undefined.
        if self.to == DatumType::Bool {
            ensure!(bytes.iter().all(|&b| b <= 1), "BitCast to bool of a byte other than 0 or 1");
        }
        Ok(tvec![from_bytes(self.to, bytes.to_owned())?])
    }
}

/// `Compress`: the slices along an axis (or elements of the flattened tensor) whose condition
/// is true; typed once the condition is known, since it decides the output size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Compress {
    axis: Option<i64>,
}

pub(super) fn compress(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    Ok((wrap(Compress { axis: node.get_attr_opt("axis")? }), vec![]))
}

impl Compress {
    /// The kept indices along the axis (or the flattened tensor) of `len` positions.
    fn kept(condition: &[i64], len: usize) -> Vec<usize> {
        condition.iter().take(len).enumerate().filter(|(_, &c)| c != 0).map(|(i, _)| i).collect()
    }
}

impl Compute for Compress {
    fn name(&self) -> &'static str {
        "Compress"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn value_inputs(&self) -> &'static [usize] {
        &[1]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let data = input(self.name(), inputs, 0)?;
        let shape = concrete_shape(self.name(), data)?;
        let condition = const_ints(self.name(), input(self.name(), inputs, 1)?, "condition")?;
        let out: TVec<usize> = match self.axis {
            None => tvec![Self::kept(&condition, shape.iter().product()).len()],
            Some(axis) => {
                let axis = normalise_axis(self.name(), axis, shape.len())?;
                let mut out = shape.clone();
                out[axis] = Self::kept(&condition, shape[axis]).len();
                out
            }
        };
        Ok(tvec![data.datum_type.fact(out)])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let condition = values::<i64>(&inputs[1])?;
        let bytes = byte_view(&inputs[0])?;
        let (bytes, axis) = match self.axis {
            Some(axis) => (bytes.to_owned(), normalise_axis(self.name(), axis, inputs[0].rank())?),
            None => {
                let elements = inputs[0].len();
                let size = inputs[0].datum_type().size_of();
                let flat = bytes.as_standard_layout().into_owned();
                (flat.into_shape_with_order(IxDyn(&[elements, size]))?, 0)
            }
        };
        let kept = Self::kept(&condition, bytes.len_of(Axis(axis)));
        let out = bytes.select(Axis(axis), &kept);
        Ok(tvec![from_bytes(inputs[0].datum_type(), out)?])
    }
}

/// `TensorScatter`: writes a block of new steps into a fixed-size cache (a key/value cache) at
/// each batch item's write position, wrapping around in `circular` mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TensorScatter {
    axis: i64,
    circular: bool,
}

pub(super) fn tensor_scatter(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let circular = match node.get_attr_opt("mode")?.unwrap_or("linear") {
        "linear" => false,
        "circular" => true,
        other => bail!("TensorScatter {}: unknown mode {other:?}", node.name),
    };
    let axis = node.get_attr_opt("axis")?.unwrap_or(-2);
    Ok((wrap(TensorScatter { axis, circular }), vec![]))
}

impl Compute for TensorScatter {
    fn name(&self) -> &'static str {
        "TensorScatter"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec![input(self.name(), inputs, 0)?.without_value()])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (cache, update) = (inputs[0].shape(), inputs[1].shape());
        let axis = normalise_axis(self.name(), self.axis, cache.len())?;
        let compatible = cache.len() == update.len()
            && (0..cache.len()).all(|i| {
                if i == axis {
                    update[i] <= cache[i]
                } else {
                    update[i] == cache[i]
                }
            });
        ensure!(
            compatible,
            "{}: update {update:?} does not fit cache {cache:?} on axis {axis}",
            self.name()
        );
        let positions = match inputs.get(2) {
            Some(indices) => values::<i64>(indices)?,
            None => vec![0; cache[0]],
        };
        ensure!(positions.len() == cache[0], "{}: one write index per batch item", self.name());
        // [outer, steps, inner bytes] views of both; the batch item is the outer index's lead.
        let outer: usize = cache[..axis].iter().product();
        let per_batch = outer / cache[0].max(1);
        let inner = cache[axis + 1..].iter().product::<usize>() * inputs[0].datum_type().size_of();
        let (max_steps, steps) = (cache[axis], update[axis]);
        let mut present = byte_view(&inputs[0])?.as_standard_layout().into_owned();
        let mut present_3d =
            present.view_mut().into_shape_with_order(IxDyn(&[outer, max_steps, inner]))?;
        let new = byte_view(&inputs[1])?.as_standard_layout().into_owned();
        let new = new.into_shape_with_order(IxDyn(&[outer, steps, inner]))?;
        for o in 0..outer {
            let start = positions[o / per_batch.max(1)];
            for step in 0..steps {
                let at = start + step as i64;
                let at = if self.circular { at.rem_euclid(max_steps as i64) } else { at };
                let at = usize::try_from(at).ok().filter(|&a| a < max_steps).ok_or_else(|| {
                    format_err!("{}: write position {at} outside the cache", self.name())
                })?;
                present_3d.slice_mut(ndarray::s![o, at, ..]).assign(&new.slice(ndarray::s![
                    o,
                    step,
                    ..
                ]));
            }
        }
        Ok(tvec![from_bytes(inputs[0].datum_type(), present)?])
    }
}
