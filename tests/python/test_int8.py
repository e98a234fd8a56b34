"""INT8 quantization: accuracy against float on real models, calibration inputs, options, errors."""

from __future__ import annotations

import re

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXPORTED, MODELS, random_input
from onnxruntime.quantization import CalibrationDataReader

import jarvis_performance as jp

METHODS = ["minmax", "percentile", "entropy", "mse"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.load(MODELS / "digits_calib.npy"), np.load(MODELS / "digits_test.npy"),
            np.load(MODELS / "digits_test_labels.npy"))


def test_digits_cnn_int8_accuracy_within_half_a_point(digits: tuple[np.ndarray, ...]) -> None:
    calib, x, y = digits
    float_rt = jp.Runtime.load(MODELS / "digits_cnn.onnx")
    # The speed check off: the 1-channel stem's int8 op can measure slower than float here.
    int8_rt = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib,
                              speed_fallback=False)
    assert int8_rt.quantized and not float_rt.quantized
    float_acc = (float_rt.infer(x).argmax(1) == y).mean()
    int8_acc = (int8_rt.infer(x).argmax(1) == y).mean()
    assert float_acc - int8_acc <= 0.005, (float_acc, int8_acc)
    report = int8_rt.quantization_report()
    assert [r["kind"] for r in report if r["int8"]].count("conv") == 3
    assert all(r["int8"] for r in report), report  # every layer runs int8
    assert all(r["cosine"] > 0.999 for r in report)
    summary = int8_rt.quantization_summary()
    assert summary is not None and summary["samples"] == 256 and summary["batches"] == 16
    assert summary["int8_weight_bytes"] < summary["float_weight_bytes"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_digits_accurate(method: str, digits: tuple[np.ndarray, ...]) -> None:
    calib, x, y = digits
    rt = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib, method=method)
    assert (rt.infer(x).argmax(1) == y).mean() >= 0.97
    assert rt.quantization_summary()["method"].startswith(method)  # type: ignore[index]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_cnn_output_cosine_vs_float(name: str, model_path: Callable[[str], Path]) -> None:
    path = model_path(name)
    calib = random_input(EXPORTED[name], 16, seed=1)
    x = random_input(EXPORTED[name], 4, seed=2)
    expected = jp.Runtime.load(path).infer(x)
    # Every layer int8 (no timing-based fallback: that depends on the machine's load).
    rt = jp.Runtime.load(path, quantize="int8", calibration=calib, speed_fallback=False)
    assert all(r["int8"] for r in rt.quantization_report())
    # Consecutive int8 convolutions hand u8 codes to each other: ResNet18's conv → conv inside
    # each basic block (8) and its stem → max pool (1, the pool takes the maximum of the codes);
    # MobileNetV2's stem → depthwise, every expand → depthwise → project, and the projects that
    # feed the next block without a residual (36).
    summary = rt.quantization_summary()
    assert summary is not None and summary["linked_outputs"] == {"resnet18": 9, "mobilenet_v2": 36}[name]
    got = rt.infer(x)
    assert cosine(got, expected) >= 0.99
    assert rt.infer(x[:1]).shape == (1, 1000)  # the batch axis stays dynamic


class EncoderBlock(torch.nn.Module):
    """A pre-norm transformer encoder block written out in plain ops (torch's fused
    ``TransformerEncoderLayer`` has no TorchScript ONNX export): multi-head self-attention and a
    GELU feed-forward, each with a residual."""

    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.ff1 = torch.nn.Linear(dim, hidden)
        self.ff2 = torch.nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.norm2(x))))


def test_transformer_block(tmp_path: Path) -> None:
    from jarvis_performance.export import export_model

    torch.manual_seed(0)
    path = export_model(EncoderBlock(), tmp_path / "encoder.onnx", input_shape=(1, 16, 64)).path
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 16, 64)).astype(np.float32)
    x = rng.standard_normal((4, 16, 64)).astype(np.float32)
    expected = jp.Runtime.load(path).infer(x)
    rt = jp.Runtime.load(path, quantize="int8", calibration=calib)
    report = rt.quantization_report()
    # qkv, proj, ff1, ff2: each in int8 unless its int8 op measured slower than float here
    # (these layers are small: 16 tokens of 64 features); the report then gives both times.
    linear = [r for r in report if r["name"].endswith("MatMul") and "operand" not in (r["reason"] or "")]
    assert len(linear) == 4, report
    for r in linear:
        assert r["int8"] or re.fullmatch(
            r"int8 measured slower than float \(\d+\.\d{3} ms against \d+\.\d{3} ms\)", r["reason"]), r
    assert cosine(rt.infer(x), expected) >= 0.99


def test_calibration_sources_agree(digits: tuple[np.ndarray, ...]) -> None:
    calib, x, _ = digits
    batches = [calib[i:i + 16] for i in range(0, len(calib), 16)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {"input": batch}

    sources = {
        "array": calib,
        "list of arrays": batches,
        "generator of dicts": ({"input": b} for b in batches),
        "dataset with transform": jp.Dataset(batches, transform=lambda b: {"input": b}),
        "onnxruntime reader": Reader(),
    }
    # Timing-based fallback off: it may keep another layer float on each load.
    outputs = {name: jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8",
                                      calibration=source, speed_fallback=False).infer(x)
               for name, source in sources.items()}
    for name, out in outputs.items():
        np.testing.assert_array_equal(out, outputs["array"], err_msg=name)


def test_exclude_keeps_a_layer_in_float(digits: tuple[np.ndarray, ...]) -> None:
    calib = digits[0]
    rt = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib,
                         exclude=["/classifier/Gemm.ab"])
    rows = {r["name"]: r for r in rt.quantization_report()}
    assert not rows["/classifier/Gemm.ab"]["int8"]
    assert rows["/classifier/Gemm.ab"]["reason"] == "excluded by the caller"
    # An ONNX tensor name works too.
    rt = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib,
                         exclude=["output"])
    assert not {r["name"]: r for r in rt.quantization_report()}["/classifier/Gemm.ab"]["int8"]


def test_bad_quantization_requests(digits: tuple[np.ndarray, ...]) -> None:
    calib = digits[0]
    path = MODELS / "digits_cnn.onnx"
    with pytest.raises(jp.ConfigError, match="int4"):
        jp.Runtime.load(path, quantize="int4", calibration=calib)  # type: ignore[arg-type]
    with pytest.raises(jp.CalibrationError, match="needs calibration data"):
        jp.Runtime.load(path, quantize="int8")
    with pytest.raises(jp.ConfigError, match="unknown calibration method"):
        jp.Runtime.load(path, quantize="int8", calibration=calib, method="kl")
    with pytest.raises(jp.ConfigError, match="calibration"):
        jp.Runtime.load(path, calibration=calib)
    with pytest.raises(jp.CalibrationError, match="no calibration data"):
        jp.Runtime.load(path, quantize="int8", calibration=[])
    with pytest.raises(jp.CalibrationError, match='input "input": axis 1 must be 1'):
        jp.Runtime.load(path, quantize="int8", calibration=[np.zeros((2, 3, 8, 8), np.float32)])
    with pytest.raises(jp.CalibrationError, match="lacks input"):
        jp.Runtime.load(path, quantize="int8", calibration=[{"image": calib[:4]}])
    with pytest.raises(jp.CalibrationError, match="calibration must be"):
        jp.Runtime.load(path, quantize="int8", calibration=42)

    def failing() -> Iterator[np.ndarray]:
        yield calib[:16]
        raise RuntimeError("camera unplugged")

    with pytest.raises(jp.CalibrationError, match="camera unplugged"):
        jp.Runtime.load(path, quantize="int8", calibration=failing())
