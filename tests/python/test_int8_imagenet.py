"""EfficientNet-Lite0 (real ImageNet weights) on real photos: jarvis INT8 against onnxruntime's
``quantize_static`` (QDQ, per-channel, u8 activations), both calibrated on the same views and
judged against the float model on other views."""

from __future__ import annotations

import os
import subprocess
import sys
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
from photos import agreement, photos, views


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


def test_int8_halves_onnxruntimes_error_with_default_options(
    model_path: Callable[[str], Path], photo_views: tuple[np.ndarray, np.ndarray],
    onnxruntime_int8: dict[str, float],
) -> None:
    """Issue #3's targets, default options: int8 follows float on every view where float is
    confident, with at most half onnxruntime's mean KL divergence and a higher overall top-1
    agreement. Without the stem's lossless 8-bit input and bias correction this model gave
    97.1 % / KL 0.047 / 80.0 % (onnxruntime 97.1 % / 0.050 / 80.0 %)."""
    calib, x = photo_views
    path = model_path("efficientnet_lite0")
    float_logits = jp.Runtime.load(path).infer(x)
    ours = agreement(float_logits, jp.Runtime.load(path, quantize="int8", calibration=calib).infer(x))
    theirs = onnxruntime_int8
    print(f"\njarvis int8 {ours}\nonnxruntime int8 {theirs}")
    assert ours["confident"] == 1.0
    assert ours["kl"] <= 0.5 * theirs["kl"]
    assert ours["top1"] > theirs["top1"]


def test_stem_input_is_lossless_and_biases_corrected_in_report_and_saved_file(
    model_path: Callable[[str], Path], photo_views: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """The normalised image is 8-bit data on a per-channel lattice: calibration finds it, the
    stem quantizes each channel on its own step (its codes are the pixels), the report says so,
    and the saved QDQ file carries it as a per-axis QuantizeLinear that onnxruntime runs to the
    same result; the reload is bit-identical without calibration data."""
    calib, x = photo_views
    path = model_path("efficientnet_lite0")
    rt = jp.Runtime.load(path, quantize="int8", calibration=calib)
    report = {row["name"]: row for row in rt.quantization_report()}
    assert report["/_conv_stem/Conv"]["input"] == "per-channel lattice"
    int8_rows = [row for row in report.values() if row["int8"]]
    assert all(row["bias_corrected"] for row in int8_rows)
    # Filters of at most 32 weights are rounded for their inputs: the stem's 27, every depthwise
    # 3×3/5×5, the four pointwise convolutions reading 16–32 channels; the rest (and the
    # classifier) to nearest.
    aware = {row["name"] for row in int8_rows if row["rounding"] == "data-aware"}
    assert {row["name"] for row in int8_rows if row["kind"] in ("depthwise", "conv")} <= aware
    assert len(aware) == 21 and report["/_fc/Gemm.ab"]["rounding"] == "nearest"
    assert sum(row["input"] == "per-channel lattice" for row in int8_rows) == 1
    # The stem's own output is now close to float: error from its weights only.
    assert report["/_conv_stem/Conv"]["sqnr_db"] > 28

    ours = rt.infer(x[:32])
    # A live update re-quantizes the stem and the classifier from their masters: the lattice and
    # the bias correction come along (a zero delta leaves the outputs bit-identical).
    stem_weight = next(n for n in rt.weight_names if rt.weights(n).shape == (32, 3, 3, 3))
    rt.update({name: np.zeros_like(rt.weights(name)) for name in [stem_weight, "_fc.weight"]})
    np.testing.assert_array_equal(rt.infer(x[:32]), ours)

    saved = tmp_path / "effnet_int8.onnx"
    rt.save(saved)
    np.testing.assert_array_equal(jp.Runtime.load(saved).infer(x[:32]), ours)
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(saved)).graph
    per_axis = [n for n in graph.node
                if n.op_type == "QuantizeLinear" and any(a.name == "axis" for a in n.attribute)]
    assert [n.name for n in per_axis] == ["/_conv_stem/Conv_jp_Q"]
    assert [a.i for a in per_axis[0].attribute if a.name == "axis"] == [1]
    # Each data-aware layer's patch moments travel with it (one packed 25×25 triangle per
    # channel of a 5×5 depthwise conv), and its codes in the file are the chosen ones, not
    # round-to-nearest of the master: onnxruntime computes what this runtime does.
    names = {t.name: t for t in graph.initializer}
    moments = numpy_helper.to_array(names["/_blocks.4/_depthwise_conv/Conv_jp_input_moments"])
    assert moments.shape == (240 * 25 * 26 // 2,)
    dw = next(n for n in graph.node if n.name == "/_blocks.4/_depthwise_conv/Conv")
    dq = next(n for n in graph.node if n.output[0] == dw.input[1])
    codes = numpy_helper.to_array(names[dq.input[0]]).reshape(240, 25).astype(np.float64)
    master = numpy_helper.to_array(names[dq.input[0].removesuffix("_jp_quantized")])
    master = master.reshape(240, 25)
    nearest = np.round(master / (np.abs(master).max(1, keepdims=True) / 127))
    assert 0 < (codes != nearest).mean() < 0.5
    session = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
    theirs = np.concatenate([session.run(None, {"input": x[i:i + 16]})[0] for i in range(0, 32, 16)])
    assert agreement(ours, theirs)["kl"] < 0.005


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_two_threads_compute_the_same_bits_as_one(
    name: str, model_path: Callable[[str], Path], photo_views: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """Threads split each int8 layer by pixels (bands of output rows, each with its own im2col
    patches) or by output channels, and a batch by images (4 on 2 threads: each image on one
    thread alone; 3: images and their layers split): every split computes each output exactly
    as one thread does. Both runtimes load the same saved int8 plan."""
    calib, x = photo_views
    saved = tmp_path / f"{name}_int8.onnx"
    jp.Runtime.load(model_path(name), quantize="int8", calibration=calib[:16]).save(saved)
    one, two = (jp.Runtime.load(saved, threads=t) for t in (1, 2))
    assert (one.get_status()["threads"], two.get_status()["threads"]) == (1, 2)
    for batch in (x[:4], x[4:7], x[7:8]):
        np.testing.assert_array_equal(two.infer(batch), one.infer(batch))


_INFER_WITH_ISA = """
import sys, numpy as np, jarvis_performance as jp
runtime = jp.Runtime.load(sys.argv[1], threads=1)
np.save(sys.argv[3], runtime.infer(np.load(sys.argv[2])))
print(runtime.get_status()["isa"])
"""


@pytest.mark.parametrize("isa", ["avx_vnni", "avx2", "scalar"])
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_every_instruction_set_computes_the_same_bits(
    name: str, isa: str, model_path: Callable[[str], Path],
    photo_views: tuple[np.ndarray, np.ndarray], tmp_path: Path,
) -> None:
    """The 256-bit kernels (laptops without AVX-512: AVX-VNNI, or AVX2 alone) and the scalar
    reference compute every output bit for bit as the CPU's best instruction set does, on a
    saved int8 model of real photos. ``JARVIS_PERF_ISA`` picks the instruction set, in a process
    of its own (the choice is made once per process)."""
    calib, x = photo_views
    saved, images = tmp_path / f"{name}_int8.onnx", tmp_path / "x.npy"
    jp.Runtime.load(model_path(name), quantize="int8", calibration=calib[:16]).save(saved)
    batch = x[:3] if isa != "scalar" else x[:1]  # the scalar reference is ~150x slower
    np.save(images, batch)
    expected = jp.Runtime.load(saved, threads=1).infer(batch)
    out = tmp_path / "out.npy"
    env = {**os.environ, "JARVIS_PERF_ISA": isa}
    result = subprocess.run([sys.executable, "-c", _INFER_WITH_ISA, str(saved), str(images), str(out)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    ran = result.stdout.split()[-1]
    if ran != isa:
        pytest.skip(f"this CPU cannot run {isa} (the runtime used {ran})")
    np.testing.assert_array_equal(np.load(out), expected)
