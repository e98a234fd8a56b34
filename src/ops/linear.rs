//! `Int8Linear`: `y = x · Wᵀ + b` over the last axis, on u8 activations and i8 weights
//! (replaces tract's EinSum for Gemm/MatMul with a constant weight, + bias add + ReLU/Clip).
//! Activations are quantized with the calibrated per-tensor parameters, or row by row on each
//! row's own range (transformer layers, whose tokens' ranges differ by orders of magnitude).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::parallel::for_each_chunk;
use super::{scratch, Int8Layer, Packed};
use crate::kernels::{gemm_u8i8, min_max, quantize_u8, ActivationQuant, EpilogueColumns, Isa};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 32;

/// An int8 fully connected layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int8Linear {
    pub layer: Int8Layer,
    /// Leading input axes kept in the output; the axes after them hold the k reduced elements
    /// (several axes when tract folded a reshape into the weight).
    pub kept_axes: usize,
    /// Each row quantized on its own range when the op runs (the layer's epilogues then hold
    /// the weight scales alone); else the layer's calibrated input parameters.
    pub per_row: bool,
}

impl Op for Int8Linear {
    fn name(&self) -> StaticName {
        "Int8Linear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.layer.weights;
        let input = if self.per_row {
            "input quantized per row".to_string()
        } else {
            format!(
                "input scale {} zero point {}",
                self.layer.input.scale, self.layer.input.zero_point
            )
        };
        Ok(vec![format!("{}x{}, {input}, {:?}", w.k, w.n, self.layer.activation)])
    }

    op_as_typed_op!();
}

impl EvalOp for Int8Linear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(self.run(&input)?.into_tvalue()))
    }
}

impl Int8Linear {
    /// The layer's float output for float `input`.
    pub fn run(&self, input: &Tensor) -> TractResult<Tensor> {
        let shape = input.shape().to_vec();
        let w = &*self.layer.weights;
        let k_elements: usize = shape[self.kept_axes.min(shape.len())..].iter().product();
        ensure!(
            shape.len() > self.kept_axes && k_elements == w.k,
            "Int8Linear: input {shape:?} does not end in {} elements after axis {}",
            w.k,
            self.kept_axes
        );
        let view = input.to_plain_array_view::<f32>()?;
        let contiguous = view.as_standard_layout();
        let data = contiguous.as_slice().context("Int8Linear input is not contiguous")?;
        let Packed::Rows(packed) = &w.packed else { bail!("Int8Linear holds convolution weights") };
        let (k, k_padded, n, n_padded) = (w.k, packed.k_padded, w.n, packed.n_padded());
        let mut out_shape = shape[..self.kept_axes].to_vec();
        out_shape.push(n);
        let mut tensor = Tensor::zero::<f32>(&out_shape)?;
        let isa = Isa::detect();
        let columns = EpilogueColumns::new(&w.epilogues, &packed.column_sums);
        {
            let mut plain = tensor.try_as_plain_ram_mut()?;
            let output = plain.as_slice_mut::<f32>()?;
            for_each_chunk(output, ROWS_PER_TASK * n.max(1), |task, out| {
                let first = task * ROWS_PER_TASK;
                let count = out.len() / n.max(1);
                let mut rows_quant = [self.layer.input; ROWS_PER_TASK];
                scratch::input_bytes(count * k_padded, |x| {
                    for (r, quant) in rows_quant.iter_mut().enumerate().take(count) {
                        let src = &data[(first + r) * k..(first + r + 1) * k];
                        if self.per_row {
                            let (low, high) = min_max(isa, src);
                            *quant = ActivationQuant::from_range(low, high);
                        }
                        let row = &mut x[r * k_padded..(r + 1) * k_padded];
                        quantize_u8(isa, src, quant.scale, quant.zero_point, &mut row[..k]);
                        row[k..].fill(quant.zero_point);
                    }
                    scratch::accumulators(count * n_padded, |acc| {
                        gemm_u8i8(isa, x, k_padded, count, packed, acc);
                        for (r, out_row) in out.chunks_exact_mut(n.max(1)).enumerate() {
                            let sums = &acc[r * n_padded..][..n];
                            let row_quant = self.per_row.then_some(rows_quant[r]);
                            columns.finish_row(isa, sums, row_quant, out_row);
                        }
                    })
                })
            });
        }
        Ok(tensor)
    }
}

impl TypedOp for Int8Linear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().take(self.kept_axes).cloned().collect();
        shape.push(self.layer.weights.n.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}
