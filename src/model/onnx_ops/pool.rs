//! Pooling-shaped operators tract lacks: `LpPool` (built on tract's own sum pool), `MaxUnpool`
//! and `Col2Im` (scatters back into an image).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::cnn::HirSumPool;
use tract_onnx::tract_hir::ops::expandable::{expand, Expansion};

use super::computed::{concrete_shape, const_ints, input, typed_output, values, wrap, Compute};
use super::{tract_parser, Parsed};

/// `LpPool`: `(Σ |x|^p)^(1/p)` over each window, padding counting as zero.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct LpPool {
    /// tract's sum pool, parsed from the same attributes as `AveragePool`, not normalised.
    sum: HirSumPool,
    p: i64,
}

pub(super) fn lp_pool(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let p = node.get_attr_opt::<i64>("p")?.unwrap_or(2);
    ensure!(p >= 1, "LpPool {}: p = {p} must be at least 1", node.name);
    // `LpPool` has `AveragePool`'s window attributes, and no `count_include_pad`.
    let (average, closures) = tract_parser("AveragePool", ctx, node)?;
    let sum = average
        .as_op()
        .downcast_ref::<Box<dyn Expansion>>()
        .and_then(|e| e.as_any().downcast_ref::<HirSumPool>())
        .ok_or_else(|| format_err!("tract's AveragePool is no longer a sum pool"))?;
    let sum = HirSumPool { normalize: false, count_include_pad: false, ..sum.clone() };
    Ok((expand(LpPool { sum, p }), closures))
}

impl Expansion for LpPool {
    fn name(&self) -> StaticName {
        "LpPool".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.sum.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?.clone();
        let exponent = |model: &mut TypedModel, name: &str, e: f64| -> TractResult<OutletId> {
            let value = tensor0(e).cast_to_dt(fact.datum_type)?.into_owned();
            model.add_const(format!("{prefix}.{name}"), value.broadcast_into_rank(fact.rank())?)
        };
        let magnitude = model.wire_node(format!("{prefix}.abs"), math::abs(), inputs)?[0];
        let p = exponent(model, "p", self.p as f64)?;
        let powered = model.wire_node(format!("{prefix}.pow"), math::pow(), &[magnitude, p])?;
        let summed = self.sum.wire(&format!("{prefix}.sum"), model, &powered)?[0];
        let root = exponent(model, "root", 1.0 / self.p as f64)?;
        model.wire_node(prefix, math::pow(), &[summed, root])
    }
}

/// `MaxUnpool`: each value back at the flat index `MaxPool` recorded, zeros elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MaxUnpool {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    /// Padding before each spatial axis, then after each.
    pads: Vec<usize>,
}

pub(super) fn max_unpool(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let kernel: Vec<usize> = node.get_attr_vec("kernel_shape")?;
    let strides = node.get_attr_opt_vec("strides")?.unwrap_or_else(|| vec![1; kernel.len()]);
    let pads = node.get_attr_opt_vec("pads")?.unwrap_or_else(|| vec![0; 2 * kernel.len()]);
    ensure!(
        strides.len() == kernel.len() && pads.len() == 2 * kernel.len(),
        "MaxUnpool {}: strides and pads do not match kernel_shape",
        node.name
    );
    Ok((wrap(MaxUnpool { kernel, strides, pads }), vec![]))
}

impl MaxUnpool {
    /// The unpooled shape the attributes imply: MaxPool's output size formula, inverted.
    fn inferred_shape(&self, x: &[usize]) -> TractResult<Vec<usize>> {
        ensure!(x.len() == self.kernel.len() + 2, "MaxUnpool: input rank does not match kernel");
        let mut shape = x[..2].to_vec();
        let spatial = self.kernel.len();
        for (axis, &size) in x[2..].iter().enumerate() {
            let padded = size.saturating_sub(1) * self.strides[axis] + self.kernel[axis];
            let pads = self.pads[axis] + self.pads[spatial + axis];
            shape.push(
                padded.checked_sub(pads).ok_or_else(|| format_err!("MaxUnpool: pads too large"))?,
            );
        }
        Ok(shape)
    }
}

impl Compute for MaxUnpool {
    fn name(&self) -> &'static str {
        "MaxUnpool"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn value_inputs(&self) -> &'static [usize] {
        &[2]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = input(self.name(), inputs, 0)?;
        let shape: Vec<usize> = match inputs.get(2) {
            Some(output_shape) => const_ints(self.name(), output_shape, "output_shape")?
                .into_iter()
                .map(|d| usize::try_from(d).map_err(|_| format_err!("MaxUnpool: size {d}")))
                .collect::<TractResult<_>>()?,
            None => self.inferred_shape(&concrete_shape(self.name(), x)?)?,
        };
        Ok(tvec![x.datum_type.fact(shape)])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let dt = inputs[0].datum_type();
        let inferred = self.inferred_shape(inputs[0].shape())?;
        let (data, indices) = (values::<f64>(&inputs[0])?, values::<i64>(&inputs[1])?);
        ensure!(data.len() == indices.len(), "MaxUnpool: one index per value");
        let mut unpooled = vec![0f64; inferred.iter().product()];
        for (&value, &index) in data.iter().zip(&indices) {
            let slot = usize::try_from(index)
                .ok()
                .and_then(|i| unpooled.get_mut(i))
                .ok_or_else(|| format_err!("MaxUnpool: index {index} outside {inferred:?}"))?;
            *slot = value;
        }
        let unpooled = ndarray::ArrayD::from_shape_vec(inferred.clone(), unpooled)?;
        let shape = match inputs.get(2) {
            Some(shape) => values::<i64>(shape)?,
            None => inferred.iter().map(|&d| d as i64).collect(),
        };
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        ensure!(
            shape.iter().zip(&inferred).all(|(s, i)| s >= i) && shape.len() == inferred.len(),
            "MaxUnpool: output_shape {shape:?} smaller than the unpooled {inferred:?}"
        );
        let mut out = ndarray::ArrayD::<f64>::zeros(shape);
        out.slice_each_axis_mut(|ax| (0..inferred[ax.axis.index()]).into()).assign(&unpooled);
        Ok(tvec![typed_output(out.into_tensor(), dt)?])
    }
}

/// `Col2Im`: sums the columns of sliding blocks back into an image (the inverse of im2col).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Col2Im {
    dilations: Option<Vec<usize>>,
    pads: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
}

pub(super) fn col2im(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let op = Col2Im {
        dilations: node.get_attr_opt_vec("dilations")?,
        pads: node.get_attr_opt_vec("pads")?,
        strides: node.get_attr_opt_vec("strides")?,
    };
    Ok((wrap(op), vec![]))
}

/// The geometry of one `Col2Im` call.
struct Blocks {
    image: Vec<usize>,
    block: Vec<usize>,
    dilations: Vec<usize>,
    pads: Vec<usize>,
    strides: Vec<usize>,
    /// Block positions along each axis.
    positions: Vec<usize>,
}

impl Col2Im {
    fn blocks(&self, image: &[i64], block: &[i64]) -> TractResult<Blocks> {
        let sizes = |v: &[i64], what: &str| -> TractResult<Vec<usize>> {
            v.iter()
                .map(|&d| usize::try_from(d).map_err(|_| format_err!("Col2Im: {what} {d}")))
                .collect()
        };
        let (image, block) = (sizes(image, "image size")?, sizes(block, "block size")?);
        let n = image.len();
        ensure!(block.len() == n, "Col2Im: image_shape and block_shape differ in length");
        let dilations = self.dilations.clone().unwrap_or_else(|| vec![1; n]);
        let pads = self.pads.clone().unwrap_or_else(|| vec![0; 2 * n]);
        let strides = self.strides.clone().unwrap_or_else(|| vec![1; n]);
        ensure!(
            dilations.len() == n && strides.len() == n && pads.len() == 2 * n,
            "Col2Im: attribute lengths"
        );
        let positions = (0..n)
            .map(|i| {
                let span = dilations[i] * (block[i].max(1) - 1) + 1;
                let padded = image[i] + pads[i] + pads[n + i];
                padded
                    .checked_sub(span)
                    .map(|room| room / strides[i].max(1) + 1)
                    .ok_or_else(|| format_err!("Col2Im: block larger than the padded image"))
            })
            .collect::<TractResult<_>>()?;
        Ok(Blocks { image, block, dilations, pads, strides, positions })
    }
}

impl Compute for Col2Im {
    fn name(&self) -> &'static str {
        "Col2Im"
    }

    fn min_inputs(&self) -> usize {
        3
    }

    fn value_inputs(&self) -> &'static [usize] {
        &[1, 2]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = concrete_shape(self.name(), input(self.name(), inputs, 0)?)?;
        let image = const_ints(self.name(), input(self.name(), inputs, 1)?, "image_shape")?;
        let block = const_ints(self.name(), input(self.name(), inputs, 2)?, "block_shape")?;
        let g = self.blocks(&image, &block)?;
        let kernel: usize = g.block.iter().product();
        ensure!(
            x.len() == 3 && kernel > 0 && x[1].is_multiple_of(kernel),
            "Col2Im: input {x:?} is not [N, C·block, L]"
        );
        let mut shape = vec![x[0], x[1] / kernel];
        shape.extend(&g.image);
        Ok(tvec![input(self.name(), inputs, 0)?.datum_type.fact(shape)])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.blocks(&values::<i64>(&inputs[1])?, &values::<i64>(&inputs[2])?)?;
        let x = inputs[0].shape();
        let kernel: usize = g.block.iter().product();
        let columns: usize = g.positions.iter().product();
        ensure!(
            x.len() == 3 && kernel > 0 && x[1].is_multiple_of(kernel) && x[2] == columns,
            "Col2Im: input {x:?} does not hold {kernel}-element blocks at {columns} positions"
        );
        let (batch, channels) = (x[0], x[1] / kernel);
        let pixels: usize = g.image.iter().product();
        let data = values::<f64>(&inputs[0])?;
        let mut out = vec![0f64; batch * channels * pixels];
        let n = g.image.len();
        for plane in 0..batch * channels {
            let (source, target) = (&data[plane * kernel * columns..], &mut out[plane * pixels..]);
            for offset in 0..kernel {
                let tap = unravel(offset, &g.block);
                for column in 0..columns {
                    let at = unravel(column, &g.positions);
                    let mut pixel = 0usize;
                    let inside = (0..n).all(|i| {
                        let coord = (at[i] * g.strides[i] + tap[i] * g.dilations[i]) as isize
                            - g.pads[i] as isize;
                        pixel = pixel * g.image[i] + coord.max(0) as usize;
                        (0..g.image[i] as isize).contains(&coord)
                    });
                    if inside {
                        target[pixel] += source[offset * columns + column];
                    }
                }
            }
        }
        let mut shape = vec![batch, channels];
        shape.extend(&g.image);
        let out = ndarray::ArrayD::from_shape_vec(shape, out)?.into_tensor();
        Ok(tvec![typed_output(out, inputs[0].datum_type())?])
    }
}

/// The multi-index of `flat` in a row-major array of `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        *slot = flat % dim.max(1);
        flat /= dim.max(1);
    }
    index
}
