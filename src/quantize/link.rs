//! Linking consecutive int8 convolutions so that int8 data flows between them.
//!
//! Unlinked, an int8 layer stores floats and the next one quantizes them again: a float
//! tensor written and read (4 bytes a value) and a quantize pass per layer, which measured 45 %
//! of MobileNetV2's time. Linked, the producer stores `q = quantize(act(acc · s + b))` with the
//! consumer's input parameters — the very codes the consumer computed from the floats before,
//! so results are bit-identical — and the consumer reads them as they are.

use tract_onnx::prelude::*;

use crate::kernels::ActivationQuant;
use crate::ops::{Int8Conv, MaxPool2d};

/// Links every int8 convolution whose output feeds only int8 convolutions that quantize it the
/// same way (and is not a model output); returns how many outputs now carry u8 codes.
pub fn link_int8_layers(model: &mut TypedModel) -> TractResult<usize> {
    let outputs = model.output_outlets()?.to_vec();
    let mut linked = 0;
    for id in 0..model.nodes().len() {
        // A residual convolution adds floats to floats (`quantize::residual`): no codes.
        if model.node(id).op_as::<Int8Conv>().is_none_or(|conv| conv.residual) {
            continue;
        }
        let outlet = OutletId::new(id, 0);
        let Some(codes) = readers_quant(model, outlet, OtherReaders::Refused) else { continue };
        if outputs.contains(&outlet) {
            continue;
        }
        let consumers: Vec<usize> =
            model.outlet_successors(outlet).iter().map(|inlet| inlet.node).collect();
        store_codes(model, id, codes);
        for consumer in consumers {
            update_conv(model, consumer, |conv| conv.layer.links.input_codes = true);
        }
        linked += 1;
    }
    Ok(linked)
}

/// Whether an outlet read by something else than int8 convolutions may still be linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtherReaders {
    /// Every reader must be an int8 convolution (it then reads codes).
    Refused,
    /// Other readers are ignored (they read floats, as a max pool hands on).
    Ignored,
}

/// The input quantization the int8 convolutions reading `outlet` (as their data input) share:
/// `None` when there is none, when they disagree, or, if `others` are refused, when another op
/// reads it too.
fn readers_quant(
    model: &TypedModel,
    outlet: OutletId,
    others: OtherReaders,
) -> Option<ActivationQuant> {
    let mut shared: Option<ActivationQuant> = None;
    for inlet in model.outlet_successors(outlet) {
        // A residual convolution's second input is read as floats, like other ops' inputs.
        let conv = model.node(inlet.node).op_as::<Int8Conv>().filter(|_| inlet.slot == 0);
        let Some(conv) = conv else {
            match others {
                OtherReaders::Refused => return None,
                OtherReaders::Ignored => continue,
            }
        };
        if shared.is_some_and(|q| q != conv.layer.input) {
            return None;
        }
        shared = Some(conv.layer.input);
    }
    shared
}

/// Makes int8 convolution `id` store u8 codes of `codes`, and its output fact say so.
fn store_codes(model: &mut TypedModel, id: usize, codes: ActivationQuant) {
    update_conv(model, id, |conv| conv.layer.links.output_codes = Some(codes));
    let fact = &mut model.node_mut(id).outputs[0].fact;
    *fact = u8::fact(fact.shape.clone());
}

/// Links each max pool whose input is an int8 convolution's alone (not a model output) and
/// whose int8 readers quantize its output the same way: the convolution stores codes of that
/// quantization and the pool takes the maximum of the codes (quantizing is monotonic, so the
/// readers get the very codes they computed from the floats), handing on their values as
/// floats. Float readers (ResNet's first residual `Add`) then see the pooled values rounded to
/// the readers' lattice and clipped to its range, as a QDQ model quantizes them. Returns how
/// many pools now read codes.
pub fn link_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    let outputs = model.output_outlets()?.to_vec();
    let mut linked = 0;
    for id in 0..model.nodes().len() {
        let Some(pool) = model.node(id).op_as::<MaxPool2d>() else { continue };
        let producer = model.node(id).inputs[0];
        let conv = model.node(producer.node).op_as::<Int8Conv>();
        let sole_reader = model.outlet_successors(producer).len() == 1;
        let pooled = OutletId::new(id, 0);
        if pool.input_codes.is_some()
            || conv.is_none_or(|c| c.layer.links.output_codes.is_some() || c.residual)
            || !sole_reader
            || outputs.contains(&producer)
            || outputs.contains(&pooled)
        {
            continue;
        }
        let Some(codes) = readers_quant(model, pooled, OtherReaders::Ignored) else { continue };
        store_codes(model, producer.node, codes);
        if let Some(pool) = model.node_mut(id).op_as_mut::<MaxPool2d>() {
            pool.input_codes = Some(codes);
        }
        linked += 1;
    }
    Ok(linked)
}

fn update_conv(model: &mut TypedModel, id: usize, change: impl FnOnce(&mut Int8Conv)) {
    let node = model.node_mut(id);
    if let Some(conv) = node.op_as::<Int8Conv>() {
        let mut conv = conv.clone();
        change(&mut conv);
        node.op = Box::new(conv);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    use super::*;
    use crate::kernels::Activation;
    use crate::quantize::{build_op, Candidate, LayerKind, WeightOrder};

    pub(in crate::quantize) fn values(len: usize, seed: u64, amplitude: f32) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amplitude
            })
            .collect()
    }

    /// A conv layer of `channels → n`, `kernel`×`kernel`, stride `stride`, padded by `kernel/2`;
    /// depthwise when `depthwise`.
    pub(in crate::quantize) fn conv(
        name: &str,
        channels: usize,
        n: usize,
        kernel: usize,
        stride: usize,
        depthwise: bool,
        activation: Activation,
    ) -> Candidate {
        let pad = kernel / 2;
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(kernel, kernel),
            padding: PaddingSpec::Explicit(tvec!(pad, pad), tvec!(pad, pad)),
            dilations: None,
            strides: Some(tvec!(stride, stride)),
            input_channels: channels,
            output_channels: n,
        };
        let group = if depthwise { n } else { 1 };
        let per_group = channels / group;
        let k = kernel * kernel * per_group;
        Candidate {
            name: name.into(),
            kind: LayerKind::Conv { pool_spec: Box::new(pool_spec), group, depthwise },
            input: OutletId::new(0, 0),
            output: OutletId::new(0, 0),
            weights: values(n * k, name.len() as u64, 0.5),
            order: WeightOrder::Conv { n, channels: per_group, taps: kernel * kernel },
            n,
            k,
            bias: values(n, 7, 0.2),
            activation,
            input_stats: Default::default(),
        }
    }

    pub(in crate::quantize) fn run(model: &TypedModel, input: &Tensor) -> TractResult<Vec<f32>> {
        let plan = model.clone().into_runnable()?;
        let out = plan.run(tvec!(input.clone().into_tvalue()))?;
        Ok(out[0].to_plain_array_view::<f32>()?.iter().copied().collect())
    }

    /// pointwise (ReLU6) → depthwise 3×3 stride 2 (ReLU6) → {pointwise, 3×3 conv} → add:
    /// both edges into the depthwise and out of it carry codes, and results equal the float
    /// hand-over's (the stored codes multiply by 1/scale where quantizing floats divides, so a
    /// rare near-tie lands one code apart: almost every output is bit-identical).
    #[test]
    fn linked_layers_give_the_float_hand_overs_results() -> TractResult<()> {
        let relu6 = Activation::Clip(0.0, 6.0);
        let q =
            |low: f32, high: f32| crate::quantize::qparams::ActivationQuant::from_range(low, high);
        let (q_in, q_mid, q_dw) = (q(-3.0, 3.0), q(0.0, 6.0), q(0.0, 5.0));
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 8, 9, 9]))?;
        let expand = conv("expand", 8, 16, 1, 1, false, relu6);
        let a = model.wire_node("expand", build_op(&expand, &expand.weights, q_in, true)?, &[x])?;
        let dw = conv("dw", 16, 16, 3, 2, true, relu6);
        let b = model.wire_node("dw", build_op(&dw, &dw.weights, q_mid, true)?, &a)?;
        let project = conv("project", 16, 8, 1, 1, false, Activation::Identity);
        let c =
            model.wire_node("project", build_op(&project, &project.weights, q_dw, true)?, &b)?;
        let full = conv("full", 16, 8, 3, 1, false, Activation::Relu);
        let d = model.wire_node("full", build_op(&full, &full.weights, q_dw, false)?, &b)?;
        let sum =
            model.wire_node("sum", tract_onnx::tract_core::ops::math::add(), &[c[0], d[0]])?;
        model.select_output_outlets(&sum)?;
        let mut linked = model.clone();
        assert_eq!(link_int8_layers(&mut linked)?, 2);
        assert_eq!(linked.outlet_fact(b[0])?.datum_type, u8::datum_type());
        assert_eq!(linked.outlet_fact(c[0])?.datum_type, f32::datum_type());
        let input = Tensor::from_shape(&[2, 8, 9, 9], &values(2 * 8 * 81, 3, 3.5))?;
        let (want, got) = (run(&model, &input)?, run(&linked, &input)?);
        let identical = want.iter().zip(&got).filter(|(w, g)| w.to_bits() == g.to_bits()).count();
        assert!(identical * 100 >= want.len() * 99, "{identical} of {} identical", want.len());
        let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(want.iter().zip(&got).all(|(w, g)| (w - g).abs() <= 0.02 * peak));
        Ok(())
    }

    /// conv (ReLU) → 3×3 stride-2 max pool → {3×3 int8 conv, residual add}: the conv hands
    /// the pool codes, the int8 reader gets exactly the codes it computed from the floats, and
    /// the add sees the pooled floats rounded to the reader's lattice.
    #[test]
    fn a_max_pool_between_int8_layers_pools_codes() -> TractResult<()> {
        let q =
            |low: f32, high: f32| crate::quantize::qparams::ActivationQuant::from_range(low, high);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 12, 12]))?;
        let stem = conv("stem", 3, 8, 3, 1, false, Activation::Relu);
        let a =
            model.wire_node("stem", build_op(&stem, &stem.weights, q(-3.0, 3.0), true)?, &[x])?;
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(3, 3),
            padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
            dilations: None,
            strides: Some(tvec!(2, 2)),
            input_channels: 8,
            output_channels: 8,
        };
        let pool = crate::ops::MaxPool2d { pool_spec, input_codes: None };
        let p = model.wire_node("pool", pool, &a)?;
        let block = conv("block", 8, 8, 3, 1, false, Activation::Identity);
        // Wide enough for every pooled value: none is clipped, only rounded.
        let q_block = q(0.0, 60.0);
        let b = model.wire_node("block", build_op(&block, &block.weights, q_block, true)?, &p)?;
        let sum =
            model.wire_node("sum", tract_onnx::tract_core::ops::math::add(), &[b[0], p[0]])?;
        model.select_output_outlets(&[b[0], sum[0]])?;
        let mut linked = model.clone();
        assert_eq!(link_max_pools(&mut linked)?, 1);
        assert_eq!(linked.outlet_fact(a[0])?.datum_type, u8::datum_type());
        assert_eq!(linked.outlet_fact(p[0])?.datum_type, f32::datum_type());
        assert_eq!(link_max_pools(&mut linked)?, 0, "linked once");
        let input = Tensor::from_shape(&[2, 3, 12, 12], &values(2 * 3 * 144, 5, 3.0))?;
        let run_both = |model: &TypedModel| -> TractResult<(Vec<f32>, Vec<f32>)> {
            let out = model.clone().into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
            let flat = |t: &TValue| -> TractResult<Vec<f32>> {
                Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
            };
            Ok((flat(&out[0])?, flat(&out[1])?))
        };
        let ((want_block, want_sum), (got_block, got_sum)) =
            (run_both(&model)?, run_both(&linked)?);
        assert_eq!(want_block, got_block, "the int8 reader's codes changed");
        let half_step = q_block.scale / 2.0 + 1e-6;
        assert!(want_sum.iter().zip(&got_sum).all(|(w, g)| (w - g).abs() <= half_step));
        assert!(want_sum != got_sum, "the add should see rounded values");
        Ok(())
    }

    /// Readers that quantize differently, or a non-int8 reader, keep the float hand-over.
    #[test]
    fn disagreeing_readers_stay_float() -> TractResult<()> {
        let q =
            |low: f32, high: f32| crate::quantize::qparams::ActivationQuant::from_range(low, high);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 4, 5, 5]))?;
        let first = conv("first", 4, 8, 1, 1, false, Activation::Relu);
        let a = model.wire_node(
            "first",
            build_op(&first, &first.weights, q(-1.0, 1.0), true)?,
            &[x],
        )?;
        let left = conv("left", 8, 8, 1, 1, false, Activation::Identity);
        let l = model.wire_node("left", build_op(&left, &left.weights, q(0.0, 4.0), true)?, &a)?;
        let right = conv("right", 8, 8, 1, 1, false, Activation::Identity);
        let r =
            model.wire_node("right", build_op(&right, &right.weights, q(0.0, 5.0), true)?, &a)?;
        model.select_output_outlets(&[l[0], r[0]])?;
        assert_eq!(link_int8_layers(&mut model)?, 0);
        Ok(())
    }
}
