//! ONNX operators parsed by the project instead of tract: where tract's translation gives up on
//! files real exporters write (falling back to tract's own wherever that one works), and
//! operators tract has no implementation of.
//!
//! - `If` whose condition is known once the inputs are ([`constant_if`]).
//! - `BatchNormalization` with computed statistics ([`batch_norm`]).
//! - `Squeeze` of opset < 13 without `axes`: squeezes every unit axis, as the spec says.
//! - `Attention` options tract refuses ([`attention`]), and `LinearAttention`
//!   ([`linear_attention`]).
//! - Operators tract lacks, each a [`computed::Compute`]: losses ([`loss`]), element moves
//!   ([`layout`]), pooling shapes ([`pool`]), numeric ones ([`numeric`]) and a streaming
//!   convolution ([`causal_conv`]).

mod attention;
mod batch_norm;
mod causal_conv;
mod computed;
mod constant_if;
mod layout;
mod linear_attention;
mod loss;
mod numeric;
mod pool;

use std::sync::LazyLock;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceOp;
use tract_onnx::tract_hir::internal::*;

type Parsed = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own parsers, which the project's delegate to.
static TRACT_OPS: LazyLock<OnnxOpRegister> = LazyLock::new(|| tract_onnx::onnx().op_register);

/// Puts the project's parsers in front of tract's.
pub fn register(ops: &mut OnnxOpRegister) {
    ops.insert("If", constant_if::constant_if);
    ops.insert("BatchNormalization", batch_norm::batch_normalization);
    ops.insert("Squeeze", squeeze);
    ops.insert("NegativeLogLikelihoodLoss", loss::negative_log_likelihood_loss);
    ops.insert("SoftmaxCrossEntropyLoss", loss::softmax_cross_entropy_loss);
    ops.insert("CenterCropPad", layout::center_crop_pad);
    ops.insert("ReverseSequence", layout::reverse_sequence);
    ops.insert("BitCast", layout::bit_cast);
    ops.insert("Compress", layout::compress);
    ops.insert("TensorScatter", layout::tensor_scatter);
    ops.insert("LpPool", pool::lp_pool);
    ops.insert("MaxUnpool", pool::max_unpool);
    ops.insert("Col2Im", pool::col2im);
    ops.insert("CumProd", numeric::cum_prod);
    ops.insert("Det", numeric::det);
    ops.insert("AffineGrid", numeric::affine_grid);
    ops.insert("Attention", attention::attention);
    ops.insert("LinearAttention", linear_attention::linear_attention);
    ops.insert("CausalConvWithState", causal_conv::causal_conv_with_state);
}

fn tract_parser(op_type: &str, ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let parse =
        TRACT_OPS.0.get(op_type).ok_or_else(|| format_err!("tract has no parser for {op_type}"))?;
    parse(ctx, node)
}

fn squeeze(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let no_axes = node.get_attr_opt_vec::<i64>("axes")?.is_none();
    if ctx.onnx_operator_set_version < 13 && no_axes {
        return Ok((expand(tract_onnx::tract_hir::ops::array::Squeeze::new(None)), vec![]));
    }
    tract_parser("Squeeze", ctx, node)
}
