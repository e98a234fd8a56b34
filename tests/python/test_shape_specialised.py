"""Graphs whose shapes are known only per call: open input axes, graphs typed per input
signature, the plan cache's bound, and the error of a graph no signature can type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import jarvis_performance as jp


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_open_axes_written_as_minus_one_or_zero_become_dynamic(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 0, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "open", [x], [y])
    runtime = jp.Runtime.load(save(graph, tmp_path / "open.onnx"))
    assert runtime.inputs[0].shape == (None, None, 4)
    for shape in [(2, 3, 4), (5, 1, 4)]:
        data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(runtime.infer(data), np.maximum(data, 0))


def test_a_graph_no_signature_can_type_names_the_node_and_the_shapes(tmp_path: Path) -> None:
    """The target shape is an input too big to specialise on: tract cannot type the Reshape
    with symbolic axes nor for the call's shapes, and says so naming node and inputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="the_reshape")
    runtime = jp.Runtime.load(save(helper.make_graph([node], "g", [x, shape], [y]), tmp_path / "r.onnx"))
    feed = {"x": np.ones(6, np.float32), "shape": np.ones(20, np.int64)}
    with pytest.raises(jp.JarvisError) as err:
        runtime.infer(feed)
    message = str(err.value)
    assert "x=6" in message and "shape=20" in message, message
    assert "the_reshape" in message and "Reshape" in message, message
    # Nothing half-built is kept.
    assert runtime.get_status()["plans_cached"] == 0


def test_max_plans_must_hold_a_plan(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = save(graph, tmp_path / "g.onnx")
    with pytest.raises(jp.ConfigError, match="max_plans"):
        jp.Runtime.load(path, max_plans=0)
    runtime = jp.Runtime.load(path, max_plans=1)
    for batch in (1, 2, 3):
        runtime.infer(np.ones((batch, 4), np.float32))
        status = runtime.get_status()
        assert (status["plans_cached"], status["max_plans"]) == (1, 1)
