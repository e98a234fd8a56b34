//! `Int8Conv`: a 2-D NCHW convolution (strided, padded, dilated, grouped, depthwise) on u8
//! activations and i8 weights, reading floats or u8 codes and writing either (see `Links`).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;

use super::depthwise::{DepthwiseLayout, LayoutCache};

use super::parallel::{for_each_item, threads};
use super::{scratch, Int8Layer, Packed};
use crate::kernels::{
    ActivationQuant, ConvGeometry, Element, FloatStore, OutputCodes, OutputPart, OutputTensor,
    SimdElement,
};

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
    /// A second input of the output's shape (f32) is added to the layer's results before its
    /// activation: the residual `Add` (and the ReLU after it) fused into the store
    /// (`quantize::residual`). The layer then stores floats.
    pub residual: bool,
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
    /// One image into `out` (output channels × pixels); `depthwise` is the layout when the
    /// layer is depthwise.
    fn run_image<I: Element, O: SimdElement>(
        &self,
        g: &ConvGeometry,
        depthwise: Option<&DepthwiseLayout>,
        image: &[I],
        store: O::Store,
        out: OutputPart<'_, O>,
    ) -> TractResult<()> {
        match (&self.layer.weights.packed, depthwise) {
            (Packed::Depthwise(taps), Some(layout)) => {
                self.run_depthwise(g, layout, taps, image, store, out)
            }
            (Packed::Planar(groups), _) => {
                let words = match self.shifted_layout(g) {
                    Some(layout) => layout.len(),
                    None => g.channels.div_ceil(4) * g.height * g.width,
                };
                scratch::input_words(words, |x| self.run_planar(g, groups, image, x, store, out))
            }
            _ => bail!("{}: weights not packed for a convolution", self.layer.name),
        }
    }

    /// How this layer stores codes of `q`: its activation's code bounds computed once.
    fn output_codes(&self, q: ActivationQuant) -> OutputCodes {
        OutputCodes::from(q).with_activation(self.layer.activation)
    }

    /// The whole batch, read as `I` and stored as `O`, into outputs starting as zeros or as
    /// `initial` (the residual branch a float store adds to).
    fn run_batch<I: Element + Datum, O: SimdElement + Datum>(
        &self,
        input: &Tensor,
        initial: Option<&Tensor>,
        store: O::Store,
    ) -> TractResult<Tensor> {
        let shape = input.shape();
        let g = geometry(&self.pool_spec, shape)?;
        let view = input.to_plain_array_view::<I>()?;
        let contiguous = view.as_standard_layout();
        let data = contiguous.as_slice().context("Int8Conv input is not contiguous")?;
        let (batch, n) = (shape[0], self.layer.weights.n);
        let image_len = g.channels * g.height * g.width;
        let depthwise = match &self.layer.weights.packed {
            Packed::Depthwise(_) => {
                Some(self.layouts.get(&g, I::as_codes(&[]).is_some(), || {
                    format!("{}: no depthwise layout for {g:?}", self.layer.name)
                })?)
            }
            Packed::Rows(_) => bail!("Int8Conv holds linear weights"),
            Packed::Planar(_) => None,
        };
        let out_shape = [batch, n, g.out[0], g.out[1]];
        let initial = match initial {
            Some(residual) => {
                ensure!(
                    residual.shape() == out_shape,
                    "{}: residual input of shape {:?}, expected {out_shape:?}",
                    self.layer.name,
                    residual.shape()
                );
                Some(residual.try_as_plain_ram()?.as_slice::<O>()?)
            }
            None => None,
        };
        let mut output = OutputTensor::<O>::new(&out_shape)?;
        for_each_item(output.parts(batch, initial)?, |i, out| {
            let image = &data[i * image_len..(i + 1) * image_len];
            let out = out.reshape(n, g.out[0] * g.out[1])?;
            // One thread on the whole image (one thread, or a batch shared out by images): its
            // output initialised in one pass; otherwise each thread initialises the parts it stores.
            let out = if threads() == 1 { out.initialize_now() } else { out };
            self.run_image(&g, depthwise.as_deref(), image, store, out)
        })?;
        output.into_tensor()
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

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let links = self.layer.links;
        let wanted = if self.residual { 2 } else { 1 };
        let name = &self.layer.name;
        ensure!(inputs.len() == wanted, "{name}: {} inputs, expected {wanted}", inputs.len());
        let residual = if self.residual { inputs.pop() } else { None };
        let input = args_1!(inputs);
        if let Some(residual) = &residual {
            ensure!(
                residual.datum_type() == f32::datum_type() && links.output_codes.is_none(),
                "{name}: a residual input is added to float outputs (got {:?})",
                residual.datum_type()
            );
        }
        let (residual, floats) = match residual.as_deref() {
            Some(r) => (Some(r), FloatStore::AddTo),
            None => (None, FloatStore::Replace),
        };
        let expected = if links.input_codes { u8::datum_type() } else { f32::datum_type() };
        ensure!(
            input.datum_type() == expected,
            "{}: input is {:?}, expected {expected:?}",
            self.layer.name,
            input.datum_type()
        );
        let output = match (links.input_codes, links.output_codes) {
            (false, None) => self.run_batch::<f32, f32>(&input, residual, floats)?,
            (false, Some(codes)) => {
                self.run_batch::<f32, u8>(&input, None, self.output_codes(codes))?
            }
            (true, None) => self.run_batch::<u8, f32>(&input, residual, floats)?,
            (true, Some(codes)) => {
                self.run_batch::<u8, u8>(&input, None, self.output_codes(codes))?
            }
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Int8Conv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 4, "Int8Conv expects NCHW input");
        // Symbolic sizes stay symbolic (a width known only per call); the kernels see numbers.
        let spatial: Vec<TDim> = shape.iter().skip(2).cloned().collect();
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
        let fact = dt.fact([
            shape[0].clone(),
            self.layer.weights.n.to_dim(),
            padded[0].convoluted.clone(),
            padded[1].convoluted.clone(),
        ]);
        if self.residual {
            let residual = inputs.get(1).context("Int8Conv: residual input missing")?;
            ensure!(
                residual.datum_type == f32::datum_type()
                    && residual.shape == fact.shape
                    && dt == f32::datum_type(),
                "Int8Conv {}: residual {residual:?} does not match the float output {fact:?}",
                self.layer.name
            );
        }
        Ok(tvec!(fact))
    }

    as_op!();
}
