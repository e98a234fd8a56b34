"""Bad input gets a typed exception naming the culprit, never a crash, and leaves the runtime usable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SHIPPED, random_input
from onnx_builders import class_loss, gather_where, unsupported_op

import jarvis_performance as jp


@pytest.fixture()
def cnn(model_path: Callable[[str], Path]) -> jp.Runtime:
    return jp.Runtime.load(model_path("digits_cnn"))


def test_hierarchy() -> None:
    for cls in (jp.ModelLoadError, jp.InputError, jp.ConfigError, jp.UpdateError,
                jp.CalibrationError, jp.ImageError):
        assert issubclass(cls, jp.JarvisError)
    assert issubclass(jp.UnsupportedOpError, jp.ModelLoadError)
    assert jp.JarvisError.__module__ == "jarvis_performance"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((1, 8, 8), np.float32), r'input "input": expected rank 4 .*got rank 3'),
        (np.zeros((1, 3, 8, 8), np.float32), r'input "input": axis 1 must be 1'),
        (np.zeros((1, 1, 8, 9), np.float32), r'input "input": axis 3 must be 8'),
        (np.zeros((1, 1, 8, 8), np.float64), r'input "input": expected dtype float32, got float64'),
        (np.zeros((1, 1, 8, 8), np.int64), r'input "input": expected dtype float32, got int64'),
        (np.array([["a"]]), r'input "input": expected dtype float32, got <U1'),
    ],
)
def test_wrong_rank_shape_or_dtype(cnn: jp.Runtime, bad: np.ndarray, message: str) -> None:
    with pytest.raises(jp.InputError, match=message):
        cnn.infer(bad)
    # The runtime is unchanged and still answers.
    assert cnn.infer(random_input(SHIPPED["digits_cnn"], 2)).shape == (2, 10)


def test_wrong_names(cnn: jp.Runtime) -> None:
    x = random_input(SHIPPED["digits_cnn"], 1)
    with pytest.raises(jp.InputError, match=r'input "image": the model has no such input; its inputs are input'):
        cnn.infer({"image": x})
    with pytest.raises(jp.InputError, match=r'output "logits": the model has no such output'):
        cnn.run(["logits"], {"input": x})
    with pytest.raises(jp.InputError, match="input names must be strings"):
        cnn.infer({3: x})


def test_missing_input_and_multi_input_array(tmp_path: Path) -> None:
    rt = jp.Runtime.load(gather_where(tmp_path / "gw.onnx"))
    with pytest.raises(jp.InputError, match=r'input "mask": missing from the feed'):
        rt.infer({"table": np.zeros((1, 4), np.float32), "index": np.zeros(2, np.int64)})
    with pytest.raises(jp.InputError, match="takes 3 inputs; pass a dict"):
        rt.infer(np.zeros((1, 4), np.float32))
    with pytest.raises(jp.InputError, match=r'input "index": expected dtype int64, got int32'):
        rt.infer({"table": np.zeros((1, 4), np.float32), "index": np.zeros(2, np.int32),
                  "mask": np.zeros((1, 2), bool)})


def test_inputs_disagreeing_on_a_dynamic_axis(tmp_path: Path) -> None:
    rt = jp.Runtime.load(gather_where(tmp_path / "gw.onnx"))
    feed = {"table": np.zeros((3, 4), np.float32), "index": np.array([0, 1]),
            "mask": np.zeros((2, 2), bool)}
    with pytest.raises(jp.InputError, match=r'input "mask": axis "batch" is 2 here but 3 in input "table"'):
        rt.infer(feed)


def test_a_panic_inside_tract_becomes_an_exception(tmp_path: Path) -> None:
    rt = jp.Runtime.load(gather_where(tmp_path / "gw.onnx"))
    feed = {"table": np.zeros((3, 4), np.float32), "index": np.array([0, 7]),  # 7 is out of range
            "mask": np.zeros((3, 2), bool)}
    with pytest.raises(jp.JarvisError, match="panicked"):
        rt.infer(feed)
    feed["index"] = np.array([0, 3])
    assert rt.infer(feed)["out"].shape == (3, 2)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="no/such/model.onnx"):
        jp.Runtime.load("no/such/model.onnx")


def test_random_bytes_and_empty_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(jp.ModelLoadError, match="junk.onnx"):
        jp.Runtime.load(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(jp.ModelLoadError, match="empty"):
        jp.Runtime.load(empty)


@pytest.mark.parametrize("fraction", [1 / 16, 1 / 4, 1 / 2, 3 / 4, 15 / 16])
def test_truncated_model(model_path: Callable[[str], Path], tmp_path: Path, fraction: float) -> None:
    data = model_path("digits_cnn").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(jp.ModelLoadError, match="cut.onnx"):
        jp.Runtime.load(cut)


def test_unsupported_op_names_node_and_op(tmp_path: Path) -> None:
    with pytest.raises(jp.UnsupportedOpError, match=r'FrobnicateTensor at node "frobnicate_1"'):
        jp.Runtime.load(unsupported_op(tmp_path / "unsupported.onnx"))


def test_project_op_bad_data_names_the_operator(tmp_path: Path) -> None:
    """An operator the project computes (tract has none) checks its data: a label outside the
    classes is an error naming the operator, and the runtime keeps working."""
    path = class_loss(tmp_path / "loss.onnx")
    rt = jp.Runtime.load(path)
    scores = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    with pytest.raises(jp.JarvisError, match=r"SoftmaxCrossEntropyLoss: target 7 is not a class index"):
        rt.infer({"scores": scores, "labels": np.array([0, 7, 1])})
    labels = np.array([0, 4, 1])
    got = rt.infer({"scores": scores, "labels": labels})
    want = ort.InferenceSession(str(path)).run(None, {"scores": scores, "labels": labels})
    np.testing.assert_allclose(got["loss"], want[0], rtol=1e-5)
    np.testing.assert_allclose(got["log_prob"], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [0, 5000])
def test_bad_thread_count(model_path: Callable[[str], Path], threads: int) -> None:
    with pytest.raises(jp.ConfigError, match="threads"):
        jp.Runtime.load(model_path("digits_mlp"), threads=threads)


def test_bad_thread_env(model_path: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JARVIS_PERF_THREADS", "many")
    with pytest.raises(jp.ConfigError, match="JARVIS_PERF_THREADS"):
        jp.Runtime.load(model_path("digits_mlp"))
