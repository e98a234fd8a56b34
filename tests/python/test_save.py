"""`Runtime.save`: standard QDQ ONNX that onnxruntime runs, reloaded bit-identically without
calibration data, written atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import EXPORTED, MODELS, random_input

import jarvis_performance as jp


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def digits_int8() -> jp.Runtime:
    # All four layers int8 (the file's structure is checked node by node), whatever the timing.
    return jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8",
                           calibration=np.load(MODELS / "digits_calib.npy"), speed_fallback=False)


def test_int8_round_trip_is_bit_identical_and_runs_in_onnxruntime(digits_int8: jp.Runtime,
                                                                   tmp_path: Path) -> None:
    x = np.load(MODELS / "digits_test.npy")
    path = tmp_path / "digits_int8.onnx"
    digits_int8.save(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 8
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) == 8  # 4 weights + their zero points

    reloaded = jp.Runtime.load(path)  # no calibration data
    assert reloaded.quantized
    np.testing.assert_array_equal(reloaded.infer(x), digits_int8.infer(x))
    assert all(r["int8"] for r in reloaded.quantization_report())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": x})[0]
    ours = digits_int8.infer(x)
    assert cosine(theirs, ours) > 0.9999
    assert (theirs.argmax(1) == ours.argmax(1)).mean() >= 0.99

    reloaded.save(tmp_path / "again.onnx")  # a reloaded int8 model saves again, identically
    again = jp.Runtime.load(tmp_path / "again.onnx")
    np.testing.assert_array_equal(again.infer(x), ours)


def test_mobilenet_round_trip(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    path = model_path("mobilenet_v2")
    rt = jp.Runtime.load(path, quantize="int8", calibration=random_input(EXPORTED["mobilenet_v2"], 8, seed=1))
    x = random_input(EXPORTED["mobilenet_v2"], 2, seed=2)
    rt.save(tmp_path / "mnv2_int8.onnx")
    np.testing.assert_array_equal(jp.Runtime.load(tmp_path / "mnv2_int8.onnx").infer(x), rt.infer(x))
    session = ort.InferenceSession(str(tmp_path / "mnv2_int8.onnx"), providers=["CPUExecutionProvider"])
    assert cosine(session.run(None, {"input": x})[0], rt.infer(x)) > 0.99


def test_float_runtime_saves_its_float_model(tmp_path: Path) -> None:
    rt = jp.Runtime.load(MODELS / "digits_mlp.onnx")
    rt.save(tmp_path / "mlp.onnx")
    assert (tmp_path / "mlp.onnx").read_bytes() == (MODELS / "digits_mlp.onnx").read_bytes()


def test_save_is_atomic_and_reports_io_errors(digits_int8: jp.Runtime, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    digits_int8.save(target)
    assert jp.Runtime.load(target).quantized
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left
    with pytest.raises(OSError, match="missing"):
        digits_int8.save(tmp_path / "missing" / "model.onnx")


def test_corrupt_int8_metadata_is_refused(digits_int8: jp.Runtime, tmp_path: Path) -> None:
    path = tmp_path / "digits_int8.onnx"
    digits_int8.save(path)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "jarvis_performance.int8_layers":
            prop.value = "conv\tnot-a-number\t3"
    onnx.save(model, str(path))
    with pytest.raises(jp.ModelLoadError, match="corrupt int8 metadata"):
        jp.Runtime.load(path)


def test_onnxruntime_qdq_file_runs_on_the_int8_ops(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.load(MODELS / "digits_calib.npy")
    batches = iter([{"input": calib[i:i + 16]} for i in range(0, len(calib), 16)])

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    path = tmp_path / "ort_qdq.onnx"
    quantize_static(str(MODELS / "digits_cnn.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    rt = jp.Runtime.load(path)
    assert rt.quantized
    assert [r["int8"] for r in rt.quantization_report()] == [True] * 4
    x = np.load(MODELS / "digits_test.npy")
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    ours = rt.infer(x)
    assert cosine(ours, theirs) > 0.9999
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99
