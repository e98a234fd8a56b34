//! `Int8Conv`: a 2-D NCHW convolution (strided, padded, dilated, grouped, depthwise) on u8
//! activations and i8 weights.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;

use super::parallel::for_each_chunk;
use super::Int8Layer;
use crate::kernels::{
    depthwise_conv, dequantize_to_planes, gemm_u8i8_block, quantize_to_hwc, DepthwiseGeometry, Isa,
    BLOCK_N,
};

/// An int8 convolution replacing tract's `Conv` (+ a fused ReLU/Clip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int8Conv {
    pub layer: Int8Layer,
    /// Kernel shape, strides, dilations and padding, as tract analysed them.
    pub pool_spec: PoolSpec,
    pub group: usize,
    /// Weight k order is (ky, kx, channel-in-group); depthwise weights are (ky, kx, channel).
    pub depthwise: bool,
}

/// Spatial geometry of one evaluation.
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 2],
    out: [usize; 2],
}

impl Int8Conv {
    fn geometry(&self, shape: &[usize]) -> TractResult<Geometry> {
        ensure!(shape.len() == 4, "Int8Conv expects NCHW input, got shape {shape:?}");
        let kernel = [self.pool_spec.kernel_shape[0], self.pool_spec.kernel_shape[1]];
        let strides = self.pool_spec.strides();
        let dilations = self.pool_spec.dilations();
        let padded = self.pool_spec.padding.compute(&shape[2..4], &kernel, &dilations, &strides);
        Ok(Geometry {
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

    fn run_image(&self, g: &Geometry, image: &[f32], out: &mut [f32]) {
        let layer = &self.layer;
        let w = &*layer.weights;
        let (hw, c) = (g.height * g.width, g.channels);
        let zp = layer.input.zero_point;
        // Quantize and go NCHW → HWC in one pass: patches then read channels contiguously.
        let mut x = vec![0u8; hw * c];
        quantize_to_hwc(Isa::detect(), image, c, hw, layer.input.scale, zp, &mut x);
        let pixels = g.out[0] * g.out[1];
        if self.depthwise {
            let geometry = DepthwiseGeometry {
                height: g.height,
                width: g.width,
                channels: c,
                kernel: g.kernel,
                stride: g.stride,
                dilation: g.dilation,
                pad: g.pad,
                out_height: g.out[0],
                out_width: g.out[1],
            };
            let mut acc = vec![0i32; pixels * c];
            depthwise_conv(Isa::detect(), &geometry, &x, i32::from(zp), &w.codes, &mut acc);
            let zeros = vec![0; c];
            dequantize_to_planes(
                Isa::detect(),
                &acc,
                c,
                pixels,
                c,
                0,
                &zeros,
                &w.output_scales,
                &w.bias,
                layer.activation,
                out,
            );
            return;
        }
        let per_group_in = c / self.group;
        let per_group_out = w.n / self.group;
        let isa = Isa::detect();
        for (group, packed) in w.packed.iter().enumerate() {
            let k_padded = packed.k_padded;
            let patches = self.im2col(g, &x, group * per_group_in, per_group_in, k_padded, zp);
            let group_out =
                &mut out[group * per_group_out * pixels..(group + 1) * per_group_out * pixels];
            // One task per block of 16 output channels: its rows of the NCHW output are contiguous.
            for_each_chunk(group_out, BLOCK_N * pixels, |block, chunk| {
                let channels = chunk.len() / pixels;
                let mut acc = vec![0i32; pixels * BLOCK_N];
                gemm_u8i8_block(isa, &patches, k_padded, pixels, packed, block, &mut acc, BLOCK_N);
                let first = group * per_group_out + block * BLOCK_N;
                let sums = &packed.column_sums[block * BLOCK_N..block * BLOCK_N + channels];
                dequantize_to_planes(
                    Isa::detect(),
                    &acc,
                    BLOCK_N,
                    pixels,
                    channels,
                    i32::from(zp),
                    sums,
                    &w.output_scales[first..first + channels],
                    &w.bias[first..first + channels],
                    layer.activation,
                    chunk,
                );
            });
        }
    }

    /// One row of `k_padded` bytes per output pixel: the (ky, kx, channel) patch, padding taps
    /// holding the zero point (so they contribute exactly nothing).
    #[allow(clippy::too_many_arguments)]
    fn im2col(
        &self,
        g: &Geometry,
        x: &[u8],
        first: usize,
        channels: usize,
        k_padded: usize,
        zp: u8,
    ) -> Vec<u8> {
        let pixels = g.out[0] * g.out[1];
        let c = g.channels;
        let unit = g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0] && channels == c;
        if unit && k_padded == c {
            return x.to_vec(); // 1×1 convolution: the HWC image already is the patch matrix
        }
        let mut patches = vec![zp; pixels * k_padded];
        for_each_chunk(&mut patches, k_padded * g.out[1], |oy, row| {
            for ox in 0..g.out[1] {
                let patch = &mut row[ox * k_padded..(ox + 1) * k_padded];
                for ky in 0..g.kernel[0] {
                    let Some(iy) = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad[0])
                    else {
                        continue;
                    };
                    if iy >= g.height {
                        continue;
                    }
                    for kx in 0..g.kernel[1] {
                        let Some(ix) =
                            (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.pad[1])
                        else {
                            continue;
                        };
                        if ix >= g.width {
                            continue;
                        }
                        let src = &x[(iy * g.width + ix) * c + first..][..channels];
                        let at = (ky * g.kernel[1] + kx) * channels;
                        patch[at..at + channels].copy_from_slice(src);
                    }
                }
            }
        });
        patches
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
            self.run_image(&g, image, out);
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
