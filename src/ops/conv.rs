//! `Int8Conv`: a 2-D NCHW convolution (strided, padded, dilated, grouped, depthwise) on u8
//! activations and i8 weights, reading floats or u8 codes and writing either (see `Links`).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;

use super::depthwise::{DepthwiseLayout, LayoutCache};
use super::parallel::{for_each_chunk, threads};
use super::{scratch, Int8Layer, Packed};
use crate::kernels::{
    conv_planar, im2col_c4_rows, quantize_c4, quantize_c4_channels, ActivationQuant, ConvGeometry,
    Element, Isa, OutputCodes, PatchFill, PlanarWeights, SimdElement,
};

/// Fewest output channels per parallel task (one kernel block: a 16-channel projection still
/// splits across two threads).
const MIN_CHANNELS_PER_TASK: usize = 8;

/// im2col words built at a time (384 KB: the patches stay in a core's 1 MB L2 while the
/// product reads them).
const PATCH_BLOCK_WORDS: usize = 96 * 1024;

/// An int8 convolution replacing tract's `Conv` (+ a fused ReLU/Clip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int8Conv {
    pub layer: Int8Layer,
    /// Kernel shape, strides, dilations and padding, as tract analysed them.
    pub pool_spec: PoolSpec,
    pub group: usize,
    /// One filter per channel (run by the direct depthwise kernel).
    pub depthwise: bool,
    /// The depthwise kernel's layout for the input shape last seen.
    pub layouts: LayoutCache,
}

/// The 2-D geometry of `pool_spec` (a convolution's or a pool's) on an NCHW input of `shape`.
pub(super) fn geometry(pool_spec: &PoolSpec, shape: &[usize]) -> TractResult<ConvGeometry> {
    ensure!(shape.len() == 4, "expected an NCHW input, got shape {shape:?}");
    ensure!(pool_spec.kernel_shape.len() == 2, "expected a 2-D kernel");
    let kernel = [pool_spec.kernel_shape[0], pool_spec.kernel_shape[1]];
    let strides = pool_spec.strides();
    let dilations = pool_spec.dilations();
    let padded = pool_spec.padding.compute(&shape[2..4], &kernel, &dilations, &strides);
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

impl Int8Conv {
    /// One image; `depthwise` is the layout when the layer is depthwise (checked in `eval`).
    fn run_image<I: Element, O: SimdElement>(
        &self,
        g: &ConvGeometry,
        depthwise: Option<&DepthwiseLayout>,
        image: &[I],
        store: O::Store,
        out: &mut [O],
    ) {
        match (&self.layer.weights.packed, depthwise) {
            (Packed::Depthwise(taps), Some(layout)) => {
                self.run_depthwise(g, layout, taps, image, store, out)
            }
            (Packed::Planar(groups), _) => {
                let words = g.channels.div_ceil(4) * g.height * g.width;
                scratch::input_words(words, |x| self.run_planar(g, groups, image, x, store, out));
            }
            // `eval` refuses these combinations before any image runs.
            _ => {}
        }
    }

    /// Quantize the whole input into C4 words, then per group (im2col unless 1×1) one GEMM
    /// task per block of output channels, whose NCHW planes are contiguous.
    fn run_planar<I: Element, O: SimdElement>(
        &self,
        g: &ConvGeometry,
        groups: &[PlanarWeights],
        image: &[I],
        x: &mut [u32],
        store: O::Store,
        out: &mut [O],
    ) {
        let layer = &self.layer;
        let w = &*layer.weights;
        let isa = Isa::detect();
        let (pixels_in, pixels) = (g.height * g.width, g.out[0] * g.out[1]);
        let zp = layer.input.zero_point;
        // An 8-bit input on per-channel lattices: each channel its own scale and zero point
        // (their accumulator offsets are in the layer's epilogues).
        let channel_input = w.channel_input.as_ref();
        // Channel groups split across threads: on one thread this pass and im2col below were
        // a fifth of a 3×3 layer's time at two threads.
        let groups_per_task = g.channels.div_ceil(4).div_ceil(2 * threads()).max(1);
        for_each_chunk(x, groups_per_task * pixels_in, |task, words| {
            let first = 4 * task * groups_per_task;
            let channels = (g.channels - first).min(4 * groups_per_task);
            let image = &image[first * pixels_in..];
            match channel_input {
                Some(c) => {
                    let (scales, zps) = (&c.scales[first..], &c.zero_points[first..]);
                    quantize_c4_channels(
                        isa,
                        image,
                        pixels_in,
                        &scales[..channels],
                        &zps[..channels],
                        words,
                    )
                }
                None => quantize_c4(isa, image, channels, pixels_in, layer.input, words),
            }
        });
        let unit = g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0];
        let per_group_out = w.n / self.group;
        let groups_per_conv_group = g.channels.div_ceil(4) / self.group;
        for (group, packed) in groups.iter().enumerate() {
            let first_group = group * groups_per_conv_group;
            let group_out =
                &mut out[group * per_group_out * pixels..(group + 1) * per_group_out * pixels];
            // As few tasks as keep every thread busy: each task streams its patches once, so
            // more channels per task means fewer passes over them.
            // Multiples of 4 rather than of the kernel's 8-channel block: a 24-channel layer
            // splits 12 + 12 on two threads, not 16 + 8.
            let per_task = per_group_out.div_ceil(threads()).next_multiple_of(4);
            let per_task = per_task.max(MIN_CHANNELS_PER_TASK);
            // The product of `operand` (patches of `columns` output pixels from pixel `start`)
            // into those pixels of every output plane.
            let mut gemm = |operand: &[u32], columns: usize, start: usize| {
                for_each_chunk(group_out, per_task * pixels, |task, chunk| {
                    let first = task * per_task;
                    let count = chunk.len() / pixels;
                    let channels = group * per_group_out + first;
                    let epilogues = &w.epilogues[channels..channels + count];
                    let range = first..first + count;
                    let out = &mut chunk[start..];
                    conv_planar(
                        isa, operand, columns, packed, range, epilogues, store, out, pixels,
                    );
                });
            };
            if unit {
                gemm(&x[first_group * pixels_in..], pixels, 0);
                continue;
            }
            // Patches for a block of output rows at a time, so that the product reads them from
            // cache rather than memory (the whole matrix was 1.8 MB for a 56×56 3×3 layer).
            let row_words = (packed.k4 * g.out[1]).max(1);
            let rows_per_block = (PATCH_BLOCK_WORDS / row_words).clamp(1, g.out[0].max(1));
            scratch::patch_words(packed.k4 * rows_per_block * g.out[1], |patches| {
                let channel_groups = first_group..first_group + groups_per_conv_group;
                let fill = match channel_input {
                    Some(c) => PatchFill::PerGroup(&c.fills),
                    None => PatchFill::ZeroPoint(zp),
                };
                for first_row in (0..g.out[0]).step_by(rows_per_block) {
                    let out_rows = first_row..(first_row + rows_per_block).min(g.out[0]);
                    let columns = out_rows.len() * g.out[1];
                    let patches = &mut patches[..packed.k4 * columns];
                    let rows_per_task = packed.k4.div_ceil(2 * threads()).max(1);
                    for_each_chunk(patches, rows_per_task * columns, |task, part| {
                        let first = task * rows_per_task;
                        let rows = first..first + part.len() / columns.max(1);
                        let group = channel_groups.clone();
                        im2col_c4_rows(g, x, group, fill, rows, out_rows.clone(), part);
                    });
                    gemm(patches, columns, first_row * g.out[1]);
                }
            });
        }
    }

    /// How this layer stores codes of `q`: its activation's code bounds computed once.
    fn output_codes(&self, q: ActivationQuant) -> OutputCodes {
        OutputCodes::from(q).with_activation(self.layer.activation)
    }

    /// The whole batch, read as `I` and stored as `O`.
    fn run_batch<I: Element + Datum, O: SimdElement + Datum>(
        &self,
        input: &Tensor,
        store: O::Store,
    ) -> TractResult<Tensor> {
        let shape = input.shape();
        let g = geometry(&self.pool_spec, shape)?;
        let view = input.to_plain_array_view::<I>()?;
        let contiguous = view.as_standard_layout();
        let data = contiguous.as_slice().context("Int8Conv input is not contiguous")?;
        let (batch, n) = (shape[0], self.layer.weights.n);
        let image_len = g.channels * g.height * g.width;
        let out_len = n * g.out[0] * g.out[1];
        let depthwise = match &self.layer.weights.packed {
            Packed::Depthwise(_) => {
                Some(self.layouts.get(&g, I::as_codes(&[]).is_some(), || {
                    format!("{}: no depthwise layout for {g:?}", self.layer.name)
                })?)
            }
            Packed::Rows(_) => bail!("Int8Conv holds linear weights"),
            Packed::Planar(_) => None,
        };
        let mut tensor = Tensor::zero_dt(O::datum_type(), &[batch, n, g.out[0], g.out[1]])?;
        {
            let mut plain = tensor.try_as_plain_ram_mut()?;
            let output = plain.as_slice_mut::<O>()?;
            // Images in parallel too (each one's channels still split across threads): one
            // image's layer is often too small to keep every thread busy.
            for_each_chunk(output, out_len.max(1), |i, out| {
                let image = &data[i * image_len..(i + 1) * image_len];
                self.run_image(&g, depthwise.as_deref(), image, store, out);
            });
        }
        Ok(tensor)
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
        let links = self.layer.links;
        let expected = if links.input_codes { u8::datum_type() } else { f32::datum_type() };
        ensure!(
            input.datum_type() == expected,
            "{}: input is {:?}, expected {expected:?}",
            self.layer.name,
            input.datum_type()
        );
        let output = match (links.input_codes, links.output_codes) {
            (false, None) => self.run_batch::<f32, f32>(&input, ())?,
            (false, Some(codes)) => self.run_batch::<f32, u8>(&input, self.output_codes(codes))?,
            (true, None) => self.run_batch::<u8, f32>(&input, ())?,
            (true, Some(codes)) => self.run_batch::<u8, u8>(&input, self.output_codes(codes))?,
        };
        Ok(tvec!(output.into_tvalue()))
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
        let dt = if self.layer.links.output_codes.is_some() {
            u8::datum_type()
        } else {
            f32::datum_type()
        };
        Ok(tvec!(dt.fact([
            shape[0].clone(),
            self.layer.weights.n.to_dim(),
            padded[0].convoluted.to_dim(),
            padded[1].convoluted.to_dim()
        ])))
    }

    as_op!();
}
