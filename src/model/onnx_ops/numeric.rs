//! Numeric operators tract lacks: `CumProd`, `Det` and `AffineGrid`.

use ndarray::{ArrayD, Axis};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::computed::{const_ints, input, normalise_axis, typed_output, values, wrap, Compute};
use super::Parsed;

/// `CumProd`: the running product along an axis (optionally exclusive, optionally reversed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CumProd {
    exclusive: bool,
    reverse: bool,
}

pub(super) fn cum_prod(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let flag = |name: &str| -> TractResult<bool> { Ok(node.get_attr_opt::<i64>(name)? == Some(1)) };
    Ok((wrap(CumProd { exclusive: flag("exclusive")?, reverse: flag("reverse")? }), vec![]))
}

impl CumProd {
    fn run<T: Copy>(&self, data: &mut ArrayD<T>, axis: usize, one: T, mul: impl Fn(T, T) -> T) {
        for mut lane in data.lanes_mut(Axis(axis)) {
            let len = lane.len();
            let mut product = one;
            for step in 0..len {
                let at = if self.reverse { len - 1 - step } else { step };
                let value = lane[at];
                if self.exclusive {
                    lane[at] = product;
                    product = mul(product, value);
                } else {
                    product = mul(product, value);
                    lane[at] = product;
                }
            }
        }
    }
}

impl Compute for CumProd {
    fn name(&self) -> &'static str {
        "CumProd"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec![input(self.name(), inputs, 0)?.without_value()])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2, "CumProd takes x and axis");
        let dt = inputs[0].datum_type();
        let axis = inputs[1].cast_to_scalar::<i64>()?;
        let axis = normalise_axis(self.name(), axis, inputs[0].rank())?;
        let out = if dt.is_float() {
            let mut data = inputs[0].cast_to::<f64>()?.into_owned().into_plain_array::<f64>()?;
            self.run(&mut data, axis, 1.0, |a, b| a * b);
            data.into_tensor()
        } else {
            // Integers multiply in 64 bits and wrap, as the element type would.
            let mut data = inputs[0].cast_to::<i64>()?.into_owned().into_plain_array::<i64>()?;
            self.run(&mut data, axis, 1, i64::wrapping_mul);
            data.into_tensor()
        };
        Ok(tvec![typed_output(out, dt)?])
    }
}

/// `Det`: the determinant of each square matrix in the last two axes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Det;

pub(super) fn det(_ctx: &ParsingContext, _node: &NodeProto) -> Parsed {
    Ok((wrap(Det), vec![]))
}

impl Compute for Det {
    fn name(&self) -> &'static str {
        "Det"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = input(self.name(), inputs, 0)?;
        let rank = x.rank();
        ensure!(rank >= 2 && x.shape[rank - 1] == x.shape[rank - 2], "Det needs square matrices");
        Ok(tvec![x.datum_type.fact(&x.shape[..rank - 2])])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let n = shape[shape.len() - 1];
        ensure!(n > 0, "Det of empty matrices");
        let data = values::<f64>(&inputs[0])?;
        let dets: Vec<f64> = data.chunks(n * n).map(|m| determinant(m, n)).collect();
        let out = ArrayD::from_shape_vec(&shape[..shape.len() - 2], dets)?.into_tensor();
        Ok(tvec![typed_output(out, inputs[0].datum_type())?])
    }
}

/// LU decomposition with partial pivoting, in f64.
fn determinant(matrix: &[f64], n: usize) -> f64 {
    let mut a = matrix.to_vec();
    let mut det = 1.0;
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap_or(col);
        if a[pivot * n + col] == 0.0 {
            return 0.0;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(pivot * n + k, col * n + k);
            }
            det = -det;
        }
        det *= a[col * n + col];
        for row in col + 1..n {
            let factor = a[row * n + col] / a[col * n + col];
            for k in col..n {
                a[row * n + k] -= factor * a[col * n + k];
            }
        }
    }
    det
}

/// `AffineGrid`: sampling coordinates in [-1, 1] for `GridSample`, moved by affine matrices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AffineGrid {
    align_corners: bool,
}

pub(super) fn affine_grid(_ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let align_corners = node.get_attr_opt::<i64>("align_corners")?.unwrap_or(0) == 1;
    Ok((wrap(AffineGrid { align_corners }), vec![]))
}

impl AffineGrid {
    /// The normalised coordinate of each position along an axis of `size` positions.
    fn coordinates(&self, size: usize) -> Vec<f64> {
        (0..size)
            .map(|i| {
                if self.align_corners {
                    if size == 1 {
                        -1.0
                    } else {
                        -1.0 + 2.0 * i as f64 / (size - 1) as f64
                    }
                } else {
                    -1.0 + (2 * i + 1) as f64 / size as f64
                }
            })
            .collect()
    }
}

impl Compute for AffineGrid {
    fn name(&self) -> &'static str {
        "AffineGrid"
    }

    fn min_inputs(&self) -> usize {
        2
    }

    fn value_inputs(&self) -> &'static [usize] {
        &[1]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let theta = input(self.name(), inputs, 0)?;
        let size = const_ints(self.name(), input(self.name(), inputs, 1)?, "size")?;
        ensure!(size.len() == 4 || size.len() == 5, "AffineGrid: size must be N,C,(D,)H,W");
        let mut shape: TVec<TDim> = size.iter().map(|&d| TDim::from(d)).collect();
        shape.remove(1);
        shape.push(TDim::from(size.len() - 2));
        Ok(tvec![theta.datum_type.fact(shape)])
    }

    fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let size: Vec<usize> =
            values::<i64>(&inputs[1])?.iter().map(|&d| d.max(0) as usize).collect();
        let dims = size.len().saturating_sub(2);
        ensure!(dims == 2 || dims == 3, "AffineGrid: size must be N,C,(D,)H,W");
        let theta = values::<f64>(&inputs[0])?;
        let (batch, spatial) = (size[0], &size[2..]);
        ensure!(
            theta.len() == batch * dims * (dims + 1),
            "AffineGrid: theta must be [N, {dims}, {}]",
            dims + 1
        );
        // Axes are given outermost first (D, H, W); the point is (x, y[, z]), innermost first.
        let axes: Vec<Vec<f64>> = spatial.iter().map(|&s| self.coordinates(s)).collect();
        let pixels: usize = spatial.iter().product();
        let mut out: Vec<f64> = Vec::with_capacity(batch * pixels * dims);
        for matrix in theta.chunks(dims * (dims + 1)) {
            for pixel in 0..pixels {
                let mut rest = pixel;
                let mut point = vec![0f64; dims + 1];
                point[dims] = 1.0;
                for (axis, coords) in axes.iter().enumerate().rev() {
                    point[dims - 1 - axis] = coords[rest % spatial[axis]];
                    rest /= spatial[axis];
                }
                for row in matrix.chunks(dims + 1) {
                    out.push(row.iter().zip(&point).map(|(a, b)| a * b).sum());
                }
            }
        }
        let mut shape = vec![batch];
        shape.extend(spatial);
        shape.push(dims);
        let out = ArrayD::from_shape_vec(shape, out)?.into_tensor();
        Ok(tvec![typed_output(out, inputs[0].datum_type())?])
    }
}
