//! `Int8Conv`: a 2-D NCHW convolution (strided, padded, dilated, grouped, depthwise) on u8
//! activations and i8 weights.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;

use super::parallel::for_each_chunk;
use super::{Int8Layer, Packed};
use crate::kernels::{
    depthwise_plane, dequantize_plane, gemm_planar, im2col_c4, quantize_c4, quantize_centred,
    ConvGeometry, Isa,
};

/// Output channels per parallel task.
const CHANNELS_PER_TASK: usize = 16;

/// An int8 convolution replacing tract's `Conv` (+ a fused ReLU/Clip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int8Conv {
    pub layer: Int8Layer,
    /// Kernel shape, strides, dilations and padding, as tract analysed them.
    pub pool_spec: PoolSpec,
    pub group: usize,
    /// One filter per channel (run by the direct depthwise kernel).
    pub depthwise: bool,
}

impl Int8Conv {
    fn geometry(&self, shape: &[usize]) -> TractResult<ConvGeometry> {
        ensure!(shape.len() == 4, "Int8Conv expects NCHW input, got shape {shape:?}");
        let kernel = [self.pool_spec.kernel_shape[0], self.pool_spec.kernel_shape[1]];
        let strides = self.pool_spec.strides();
        let dilations = self.pool_spec.dilations();
        let padded = self.pool_spec.padding.compute(&shape[2..4], &kernel, &dilations, &strides);
        Ok(ConvGeometry {
            channels: shape[1],
            height: shape[2],
            width: shape[3],
            kernel,
            stride: [strides[0], strides[1]],
            dilation: [dilations[0], dilations[1]],
            pad: [padded[0].pad_before, padded[1].pad_before],
            out: [padded[0].convoluted, padded[1].convoluted],
        })
    }

    fn run_image(&self, g: &ConvGeometry, image: &[f32], out: &mut [f32]) -> TractResult<()> {
        let layer = &self.layer;
        let w = &*layer.weights;
        let isa = Isa::detect();
        let (pixels_in, pixels) = (g.height * g.width, g.out[0] * g.out[1]);
        let (scale, zp) = (layer.input.scale, layer.input.zero_point);
        if let Packed::Depthwise(codes) = &w.packed {
            let mut x = vec![0i16; g.channels * pixels_in];
            quantize_centred(isa, image, scale, zp, &mut x);
            let taps = g.kernel[0] * g.kernel[1];
            for_each_chunk(out, pixels, |c, plane| {
                let mut acc = vec![0i32; pixels];
                depthwise_plane(
                    isa,
                    g,
                    &x[c * pixels_in..(c + 1) * pixels_in],
                    &codes[c * taps..(c + 1) * taps],
                    &mut acc,
                );
                dequantize_plane(
                    isa,
                    &acc,
                    0,
                    w.output_scales[c],
                    w.bias[c],
                    layer.activation,
                    plane,
                );
            });
            return Ok(());
        }
        let Packed::Planar(groups) = &w.packed else { bail!("Int8Conv holds linear weights") };
        let channel_groups = g.channels.div_ceil(4);
        let mut x = vec![0u32; channel_groups * pixels_in];
        quantize_c4(isa, image, g.channels, pixels_in, scale, zp, &mut x);
        let unit = g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0];
        let per_group_out = w.n / self.group;
        let groups_per_conv_group = channel_groups / self.group;
        for (group, packed) in groups.iter().enumerate() {
            let first_group = group * groups_per_conv_group;
            let patches;
            let operand: &[u32] = if unit {
                &x[first_group * pixels_in..]
            } else {
                let mut buffer = vec![0u32; packed.k4 * pixels];
                im2col_c4(g, &x, first_group..first_group + groups_per_conv_group, zp, &mut buffer);
                patches = buffer;
                &patches
            };
            let group_out =
                &mut out[group * per_group_out * pixels..(group + 1) * per_group_out * pixels];
            // One task per 16 output channels: their NCHW planes are contiguous.
            for_each_chunk(group_out, CHANNELS_PER_TASK * pixels, |task, chunk| {
                let first = task * CHANNELS_PER_TASK;
                let count = chunk.len() / pixels;
                let mut acc = vec![0i32; count * pixels];
                gemm_planar(isa, operand, pixels, packed, first..first + count, &mut acc);
                for (i, plane) in chunk.chunks_mut(pixels).enumerate() {
                    let (local, o) = (first + i, group * per_group_out + first + i);
                    let offset = i32::from(zp) * packed.column_sums[local];
                    let acc = &acc[i * pixels..(i + 1) * pixels];
                    dequantize_plane(
                        isa,
                        acc,
                        offset,
                        w.output_scales[o],
                        w.bias[o],
                        layer.activation,
                        plane,
                    );
                }
            });
        }
        Ok(())
    }
}

impl Op for Int8Conv {
    fn name(&self) -> StaticName {
        "Int8Conv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.pool_spec.info();
        info.push(format!(
            "group {}, input scale {} zero point {}, {:?}",
            self.group, self.layer.input.scale, self.layer.input.zero_point, self.layer.activation
        ));
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for Int8Conv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape().to_vec();
        let g = self.geometry(&shape)?;
        let view = input.to_plain_array_view::<f32>()?;
        let contiguous = view.as_standard_layout();
        let data = contiguous.as_slice().context("Int8Conv input is not contiguous")?;
        let (batch, n) = (shape[0], self.layer.weights.n);
        let image_len = g.channels * g.height * g.width;
        let out_len = n * g.out[0] * g.out[1];
        let mut output = vec![0f32; batch * out_len];
        for (image, out) in data.chunks(image_len.max(1)).zip(output.chunks_mut(out_len.max(1))) {
            self.run_image(&g, image, out)?;
        }
        let tensor = Tensor::from_shape(&[batch, n, g.out[0], g.out[1]], &output)?;
        Ok(tvec!(tensor.into_tvalue()))
    }
}

impl TypedOp for Int8Conv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 4, "Int8Conv expects NCHW input");
        let spatial: Vec<usize> =
            shape.iter().skip(2).map(|d| Ok(d.to_usize()?)).collect::<TractResult<_>>()?;
        let kernel = [self.pool_spec.kernel_shape[0], self.pool_spec.kernel_shape[1]];
        let padded = self.pool_spec.padding.compute(
            &spatial,
            &kernel,
            &self.pool_spec.dilations(),
            &self.pool_spec.strides(),
        );
        Ok(tvec!(f32::fact([
            shape[0].clone(),
            self.layer.weights.n.to_dim(),
            padded[0].convoluted.to_dim(),
            padded[1].convoluted.to_dim()
        ])))
    }

    as_op!();
}
