"""Small ONNX graphs written with ``onnx.helper`` for API and error tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def gather_where(path: Path) -> Path:
    """Inputs ``table`` float32 [batch, 4], ``index`` int64 [2], ``mask`` bool [batch, 2]:
    ``picked = Gather(table, index, axis=1)``, ``out = Where(mask, picked, 0)``; outputs
    ``out`` and ``picked``."""
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "index"], ["picked"], axis=1, name="gather"),
            helper.make_node("Where", ["mask", "picked", "zero"], ["out"], name="where"),
        ],
        "gather_where",
        [
            helper.make_tensor_value_info("table", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("index", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["batch", 2]),
        ],
        initializer=[zero],
    )
    return save(graph, path)


def unsupported_op(path: Path) -> Path:
    """A graph whose second node is an operator nobody implements."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("FrobnicateTensor", ["r"], ["y"], name="frobnicate_1", domain="example.custom"),
        ],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)],
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def conv_batchnorm_classifier(path: Path, seed: int = 0) -> Path:
    """``x`` [batch, 3, 16, 16] → Conv(8, 3×3) → BatchNormalization → Relu → GlobalAveragePool →
    Flatten → Gemm(→ 5) = ``logits``, with the BatchNorm as a separate node (as TensorFlow and
    other exporters leave it), so tract folds ``bn.scale`` & co. into the convolution."""
    rng = np.random.default_rng(seed)

    def weight(name: str, shape: tuple[int, ...], low: float = -0.5, high: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    initializers = [
        weight("conv.weight", (8, 3, 3, 3)), weight("conv.bias", (8,)),
        weight("bn.scale", (8,), 0.5, 1.5), weight("bn.bias", (8,)),
        weight("bn.mean", (8,), -0.1, 0.1), weight("bn.var", (8,), 0.5, 1.5),
        weight("fc.weight", (5, 8)), weight("fc.bias", (5,)),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
            helper.make_node("Relu", ["b"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc"),
        ],
        "conv_batchnorm_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        initializer=initializers,
    )
    return save(graph, path)


def class_loss(path: Path) -> Path:
    """Inputs ``scores`` float32 [batch, 5] and ``labels`` int64 [batch]: the per-sample
    ``SoftmaxCrossEntropyLoss`` ``loss`` and its ``log_prob`` (an operator tract lacks, computed
    by the project), as a model exported with its training head evaluates it."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "SoftmaxCrossEntropyLoss",
                ["scores", "labels"],
                ["loss", "log_prob"],
                reduction="none",
                name="cross_entropy",
            )
        ],
        "class_loss",
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 5]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("loss", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("log_prob", TensorProto.FLOAT, ["batch", 5]),
        ],
    )
    return save(graph, path)
