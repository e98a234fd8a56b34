//! `MaxPool2d`: the 2-D max pooling of int8 graphs (ResNet's stem pool), one plane per parallel
//! task through `kernels::max_pool_plane`, replacing tract's generic pool (see
//! `quantize::pools`).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;

use super::conv::geometry;
use super::parallel::for_each_chunk;
use super::scratch;
use crate::kernels::{max_pool_plane, max_pool_row_len, Isa};

/// Max pooling of an f32 NCHW tensor over a 2-D window (no index output).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    /// Kernel shape, strides, dilations and padding, as tract analysed them.
    pub pool_spec: PoolSpec,
}

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
        let view = input.to_plain_array_view::<f32>()?;
        let contiguous = view.as_standard_layout();
        let data = contiguous.as_slice().context("MaxPool2d input is not contiguous")?;
        let (plane_in, plane_out) = (g.height * g.width, g.out[0] * g.out[1]);
        let mut output = Tensor::zero::<f32>(&[shape[0], shape[1], g.out[0], g.out[1]])?;
        let isa = Isa::detect();
        {
            let mut plain = output.try_as_plain_ram_mut()?;
            let out = plain.as_slice_mut::<f32>()?;
            for_each_chunk(out, plane_out.max(1), |plane, out| {
                let input = &data[plane * plane_in..(plane + 1) * plane_in];
                scratch::flat_sums(max_pool_row_len(&g), |row| {
                    max_pool_plane(isa, &g, input, row, out)
                });
            });
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MaxPool2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }

    as_op!();
}
