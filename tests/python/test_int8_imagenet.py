"""EfficientNet-Lite0 (real ImageNet weights) on real photos: jarvis INT8 against onnxruntime's
``quantize_static`` (QDQ, per-channel, u8 activations), both calibrated on the same views and
judged against the float model on other views."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

import jarvis_performance as jp
from jarvis_performance.photos import agreement, photos, views


@pytest.fixture(scope="module")
def photo_views() -> tuple[np.ndarray, np.ndarray]:
    images = photos()
    assert len(images) >= 12, "needs scikit-image, scikit-learn and matplotlib sample photos"
    return views(images, 64, seed=1), views(images, 160, seed=2)


@pytest.fixture(scope="module")
def onnxruntime_int8(model_path: Callable[[str], Path], photo_views: tuple[np.ndarray, np.ndarray],
                     tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """onnxruntime's ``quantize_static`` (QDQ, per-channel, u8 activations) on the same data."""
    calib, x = photo_views
    path = model_path("efficientnet_lite0")

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {"input": batch}

    ort.set_default_logger_severity(3)
    qdq = tmp_path_factory.mktemp("ort") / "effnet_qdq.onnx"
    quantize_static(str(path), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": x[i:i + 16]})[0] for i in range(0, len(x), 16)])
    return agreement(jp.Runtime.load(path).infer(x), logits)


def test_int8_agrees_with_float_at_least_as_well_as_onnxruntime(
    model_path: Callable[[str], Path], photo_views: tuple[np.ndarray, np.ndarray],
    onnxruntime_int8: dict[str, float],
) -> None:
    calib, x = photo_views
    path = model_path("efficientnet_lite0")
    float_logits = jp.Runtime.load(path).infer(x)
    ours = agreement(float_logits, jp.Runtime.load(path, quantize="int8", calibration=calib).infer(x))
    theirs = onnxruntime_int8
    print(f"\njarvis int8 {ours}\nonnxruntime int8 {theirs}")
    assert ours["confident"] >= theirs["confident"]
    assert ours["kl"] <= theirs["kl"]
    # Near-ties flip top-1 on many views either way; within 2 points of onnxruntime.
    assert ours["top1"] >= theirs["top1"] - 0.02


def test_stem_convolution_in_float_beats_onnxruntime(
    model_path: Callable[[str], Path], photo_views: tuple[np.ndarray, np.ndarray],
    onnxruntime_int8: dict[str, float],
) -> None:
    """The per-layer report points at the stem: quantizing the normalised image to u8 costs the
    most. Kept in float (one 3→32 convolution), int8 follows float on every confident view."""
    calib, x = photo_views
    path = model_path("efficientnet_lite0")
    float_logits = jp.Runtime.load(path).infer(x)
    rt = jp.Runtime.load(path, quantize="int8", calibration=calib, exclude=["/_conv_stem/Conv"])
    ours = agreement(float_logits, rt.infer(x))
    print(f"\njarvis int8, stem float {ours}\nonnxruntime int8 {onnxruntime_int8}")
    assert ours["confident"] == 1.0
    assert ours["kl"] <= 0.7 * onnxruntime_int8["kl"]
    assert ours["top1"] > onnxruntime_int8["top1"]
