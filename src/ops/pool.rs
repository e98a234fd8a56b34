//! `MaxPool2d`: the 2-D max pooling of int8 graphs (ResNet's stem pool), one plane per parallel
//! task through `kernels::max_pool_plane`, replacing tract's generic pool (see
//! `quantize::tidy`). Fed u8 codes by the int8 layer before it (`quantize::link`), it pools
//! the codes (a quarter of the bytes) and hands on the floats they stand for.

use ndarray::Axis;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;

use super::conv::geometry;
use super::parallel::for_each_part;
use super::scratch;
use crate::kernels::{
    dequantize_codes, max_pool_plane, max_pool_row_len, ActivationQuant, CodePool, Isa, OutputPart,
    OutputTensor,
};

/// Max pooling of an NCHW tensor over a 2-D window (no index output): of f32 values, or of u8
/// codes of `input_codes`, the output then their values as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxPool2d {
    /// Kernel shape, strides, dilations and padding, as tract analysed them.
    pub pool_spec: PoolSpec,
    /// Set when the input is u8 codes of this quantization.
    pub input_codes: Option<ActivationQuant>,
}

// Scales are never NaN (calibration makes them positive and finite), so equality is total.
impl Eq for MaxPool2d {}

impl Op for MaxPool2d {
    fn name(&self) -> StaticName {
        "MaxPool2d".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.pool_spec.info())
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let g = geometry(&self.pool_spec, shape)?;
        let (plane_in, plane_out) = (g.height * g.width, g.out[0] * g.out[1]);
        let mut output = OutputTensor::<f32>::new(&[shape[0], shape[1], g.out[0], g.out[1]])?;
        let isa = Isa::detect();
        let row_len = max_pool_row_len(&g);
        {
            let out = output.parts(shape[0] * shape[1], None)?;
            match self.input_codes {
                None => each_plane::<f32>(&input, plane_in, out, |input, out| {
                    scratch::flat_sums(row_len, |row| max_pool_plane(isa, &g, input, row, out))
                })?,
                Some(q) => {
                    let permuted = CodePool::new(isa, &g);
                    each_plane::<u8>(&input, plane_in, out, |input, out| {
                        scratch::input_bytes(row_len + plane_out, |bytes| {
                            let (row, codes) = bytes.split_at_mut(row_len);
                            match &permuted {
                                Some(pool) => pool.run(input, codes),
                                None => max_pool_plane(isa, &g, input, row, codes),
                            }
                            dequantize_codes(isa, codes, q, out);
                        })
                    })?
                }
            }
        }
        Ok(tvec!(output.into_tensor()?.into_tvalue()))
    }
}

/// `pool(input plane, output plane)` for every plane of `input` (`T` values, `plane_in` each)
/// and of `out` (one plane per row), planes shared among the threads.
fn each_plane<T: Datum>(
    input: &Tensor,
    plane_in: usize,
    out: OutputPart<'_, f32>,
    pool: impl Fn(&[T], &mut [f32]) + Sync,
) -> TractResult<()> {
    let view = input.to_plain_array_view::<T>()?;
    let contiguous = view.as_standard_layout();
    let data = contiguous.as_slice().context("MaxPool2d input is not contiguous")?;
    for_each_part(out, Axis(0), 1, |plane, out| {
        let mut out = out.initialize();
        let out = out.as_slice_mut().context("MaxPool2d output is not contiguous")?;
        pool(&data[plane * plane_in..(plane + 1) * plane_in], out);
        Ok(())
    })
}

impl TypedOp for MaxPool2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let facts = self.pool_spec.output_facts(inputs)?;
        Ok(facts.into_iter().map(|fact| f32::fact(fact.shape)).collect())
    }

    as_op!();
}
