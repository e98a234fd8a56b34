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
