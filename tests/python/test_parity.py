"""Float parity: jarvis-performance against onnxruntime and PyTorch on real models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import EXPORTED, SHIPPED, random_input

import jarvis_performance as jp

ALL_MODELS = {**SHIPPED, **EXPORTED}


def relative_max_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-12))


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_matches_onnxruntime_at_batch_1_and_8(name: str, model_path: Callable[[str], Path]) -> None:
    path = model_path(name)
    rt = jp.Runtime.load(path)
    session = ort_session(path)
    input_name = session.get_inputs()[0].name
    for batch in (1, 8):  # one plan serves both: the batch axis stays dynamic
        x = random_input(ALL_MODELS[name], batch, seed=batch)
        got = rt.infer(x)
        (expected,) = session.run(None, {input_name: x})
        assert got.shape == expected.shape
        assert got.dtype == np.float32
        assert relative_max_error(got, expected) <= 1e-4, name


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_pytorch_to_onnx_to_runtime_matches_pytorch(
    name: str, model_path: Callable[[str], Path]
) -> None:
    from jarvis_performance.export import load_module

    torch.manual_seed(0)  # the same seeded random init as the cached export
    module = load_module(name).eval()
    rt = jp.Runtime.load(model_path(name))
    x = random_input(EXPORTED[name], 2, seed=7)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert relative_max_error(rt.infer(x), expected) <= 1e-4


def test_digits_cnn_classifies_held_out_digits(model_path: Callable[[str], Path]) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    _, x_test, _, y_test = train_test_split(
        images, data.target, test_size=0.2, random_state=0, stratify=data.target
    )
    rt = jp.Runtime.load(model_path("digits_cnn"))
    accuracy = float((rt.infer(x_test).argmax(1) == y_test).mean())
    assert accuracy >= 0.95  # models/README.md records the exact figure


def test_weights_stored_as_constant_nodes(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    model = onnx.load(str(model_path("digits_mlp")))
    graph = model.graph
    constants = [
        onnx.helper.make_node("Constant", [], [init.name], value=init, name=f"const_{init.name}")
        for init in graph.initializer
    ]
    assert constants, "the MLP must have weights to move"
    del graph.initializer[:]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(constants + nodes)
    path = tmp_path / "mlp_constants.onnx"
    onnx.save(model, str(path))
    x = random_input(SHIPPED["digits_mlp"], 5)
    expected = ort_session(path).run(None, {"input": x})[0]
    assert relative_max_error(jp.Runtime.load(path).infer(x), expected) <= 1e-4
