"""Continuous learning: ``update`` on live float and int8 models, checked against onnxruntime
running the float model with the same deltas applied; versions, rollback, saving, validation,
the disable switch, concurrency, and the head learner."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import jarvis_performance as jp
from conftest import MODELS
from onnx_builders import conv_batchnorm_classifier

DIGITS = MODELS / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.load(MODELS / "digits_calib.npy"), np.load(MODELS / "digits_test.npy"),
            np.load(MODELS / "digits_test_labels.npy"))


@pytest.fixture(params=["float", "int8"])
def runtime(request: pytest.FixtureRequest, digits: tuple[np.ndarray, ...]) -> jp.Runtime:
    if request.param == "float":
        return jp.Runtime.load(DIGITS)
    return jp.Runtime.load(DIGITS, quantize="int8", calibration=digits[0])


class Reference:
    """onnxruntime on the float model with ``scale * delta`` added to the named initializers."""

    def __init__(self, path: Path, deltas: dict[str, np.ndarray], scale: float = 1.0) -> None:
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            if init.name in deltas:
                value = numpy_helper.to_array(init) + scale * deltas[init.name]
                init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
        self.input = model.graph.input[0].name
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: self.session.run(None, {self.input: x})[0]


def onnxruntime_with(path: Path, deltas: dict[str, np.ndarray], scale: float = 1.0) -> Reference:
    return Reference(path, deltas, scale)


def deltas_for(rt: jp.Runtime, names: list[str], seed: int, size: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (size * rng.standard_normal(rt.weights(n).shape)).astype(np.float32) for n in names}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


# --- update against onnxruntime -------------------------------------------------------------------

def test_update_matches_onnxruntime_with_the_same_delta(runtime: jp.Runtime, digits: tuple[np.ndarray, ...]) -> None:
    _, x, _ = digits
    names = ["classifier.weight", "classifier.bias", "features.6.weight", "onnx::Conv_26"]
    deltas = deltas_for(runtime, names, seed=1)
    before = runtime.infer(x)
    assert runtime.update(deltas, scale=0.5) == 1 and runtime.version == 1
    reference = onnxruntime_with(DIGITS, deltas, scale=0.5).run_fn()(x)
    after = runtime.infer(x)
    assert not np.array_equal(after, before)
    if not runtime.quantized:
        np.testing.assert_allclose(after, reference, rtol=1e-4, atol=1e-4)
    else:
        assert cosine(after, reference) >= 0.999
        assert (after.argmax(1) == reference.argmax(1)).mean() >= 0.98
    for name in names:
        original = numpy_helper.to_array(next(i for i in onnx.load(str(DIGITS)).graph.initializer if i.name == name))
        np.testing.assert_array_equal(runtime.weights(name), original + np.float32(0.5) * deltas[name])


def test_folded_weights_rebuild_the_model(tmp_path: Path) -> None:
    """``bn.scale`` is folded into the convolution by tract: the update rebuilds the plans."""
    path = conv_batchnorm_classifier(tmp_path / "bn.onnx")
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    for rt in (jp.Runtime.load(path), jp.Runtime.load(path, quantize="int8", calibration=x)):
        deltas = deltas_for(rt, ["bn.scale", "bn.mean", "conv.weight", "fc.weight"], seed=2, size=0.2)
        rt.update(deltas)
        reference = onnxruntime_with(path, deltas).run_fn()(x)
        got = rt.infer(x)
        if rt.quantized:
            assert cosine(got, reference) >= 0.99
        else:
            np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)


def test_effnet_classifier_update_agrees_with_onnxruntime(model_path: Callable[[str], Path]) -> None:
    """EfficientNet-Lite0 (ImageNet weights), int8, classifier updated live, against onnxruntime
    running the float model with the same delta on 600 natural-image views (four samples of 150:
    one sample flips on single views). Issue #5's target: top-1 agreement ≥ 95 % overall, and
    every view where float is confident agrees. Measured: 96.3 % overall (93.3–98.7 % per
    sample of 150); before data-aware rounding of the depthwise and stem weights 93.3 %."""
    from photos import agreement, photos, views

    images = photos()
    calib = views(images, 32, seed=1)
    x = np.concatenate([views(images, 150, seed=seed) for seed in (3, 5, 6, 7)])
    path = model_path("efficientnet_lite0")
    # Default options: the stem reads its 8-bit input losslessly, biases are corrected, the
    # depthwise and stem weights are rounded for their inputs.
    rt = jp.Runtime.load(path, quantize="int8", calibration=calib)

    def batched(run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.concatenate([run(x[i:i + 50]) for i in range(0, len(x), 50)])

    before = agreement(batched(onnxruntime_with(path, {}).run_fn()), batched(rt.infer))
    # A delta the size of a few SGD steps on the 1280 × 1000 classifier.
    deltas = deltas_for(rt, ["_fc.weight", "_fc.bias"], seed=4, size=0.02)
    rt.update(deltas)
    after = agreement(batched(onnxruntime_with(path, deltas).run_fn()), batched(rt.infer))
    print(f"\nint8 vs onnxruntime float, before the update {before}, after {after}")
    assert after["confident"] == 1.0
    assert after["top1"] >= 0.95
    assert after["top1"] >= before["top1"] - 0.02


# --- versions, rollback, save ----------------------------------------------------------------------

def test_rollback_is_bit_identical(runtime: jp.Runtime, digits: tuple[np.ndarray, ...]) -> None:
    _, x, _ = digits
    outputs = {0: runtime.infer(x)}
    for v in (1, 2, 3):
        assert runtime.update(deltas_for(runtime, ["classifier.weight", "features.3.weight"], seed=v)) == v
        outputs[v] = runtime.infer(x)
    assert runtime.versions == [0, 1, 2, 3]
    assert runtime.rollback() == 2
    np.testing.assert_array_equal(runtime.infer(x), outputs[2])
    assert runtime.rollback(0) == 0 and runtime.version == 0 and runtime.versions == [0]
    np.testing.assert_array_equal(runtime.infer(x), outputs[0])
    # Numbers are never reused: the next update after a rollback is version 4.
    assert runtime.update(deltas_for(runtime, ["classifier.bias"], seed=9)) == 4
    with pytest.raises(jp.UpdateError, match="version 2 is not in the history"):
        runtime.rollback(2)


def test_history_is_bounded(digits: tuple[np.ndarray, ...]) -> None:
    rt = jp.Runtime.load(DIGITS, quantize="int8", calibration=digits[0])
    for seed in range(12):
        rt.update(deltas_for(rt, ["classifier.weight"], seed=seed))
    assert rt.versions == list(range(5, 13))  # the default keeps 8
    rt.set_history(2)
    assert rt.versions == [11, 12]
    with pytest.raises(jp.ConfigError):
        rt.set_history(0)


def test_save_after_updates_keeps_weights_and_version(
    runtime: jp.Runtime, digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    _, x, _ = digits
    runtime.update(deltas_for(runtime, ["classifier.weight", "onnx::Conv_26"], seed=5))
    runtime.update(deltas_for(runtime, ["features.6.bias"], seed=6))
    path = tmp_path / "updated.onnx"
    runtime.save(path)
    reloaded = jp.Runtime.load(path)
    assert reloaded.version == 2 and reloaded.quantized == runtime.quantized
    # The int8 layers swapped in place equal a full rebuild from the saved masters, bit for bit.
    np.testing.assert_array_equal(reloaded.infer(x), runtime.infer(x))
    for name in runtime.weight_names:
        np.testing.assert_array_equal(reloaded.weights(name), runtime.weights(name))
    # And it keeps learning from there.
    assert reloaded.update(deltas_for(reloaded, ["classifier.bias"], seed=7)) == 3


# --- validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("make_delta", "scale", "message"),
    [
        (lambda w: {"no.such.weight": w}, 1.0, "no float weight of that name"),
        (lambda w: {"classifier.weight": w[:5]}, 1.0, "delta has shape"),
        (lambda w: {"classifier.weight": w.astype(np.float64)}, 1.0, "float64"),
        (lambda w: {"classifier.weight": np.where(np.eye(10, 64) > 0, np.nan, w).astype(np.float32)}, 1.0, "NaN"),
        (lambda w: {"classifier.weight": np.full_like(w, np.inf)}, 1.0, "inf"),
        (lambda w: {"classifier.bias": np.zeros(10, np.float32), "classifier.weight": np.full_like(w, 3e38)}, 2.0,
         "overflows"),
        (lambda w: {"classifier.bias": np.zeros(10, np.float32), 3: w}, 1.0, "names must be strings"),
        (lambda w: {}, 1.0, "no deltas"),
    ],
)
def test_bad_deltas_are_refused_and_change_nothing(
    runtime: jp.Runtime, digits: tuple[np.ndarray, ...], make_delta: Callable[[np.ndarray], dict],
    scale: float, message: str,
) -> None:
    _, x, _ = digits
    before = runtime.infer(x)
    with pytest.raises(jp.UpdateError, match=message):
        runtime.update(make_delta(np.zeros((10, 64), np.float32)), scale=scale)
    assert runtime.version == 0 and runtime.versions == [0]
    np.testing.assert_array_equal(runtime.infer(x), before)


def test_non_finite_scale_is_refused(runtime: jp.Runtime) -> None:
    with pytest.raises(jp.UpdateError, match="scale"):
        runtime.update({"classifier.bias": np.zeros(10, np.float32)}, scale=float("nan"))


def test_disable_switch(runtime: jp.Runtime, digits: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    _, x, y = digits
    before = runtime.infer(x)
    monkeypatch.setenv("DISABLE_CONTINUOUS_LEARNING", "true")
    with pytest.raises(jp.UpdateError, match="DISABLE_CONTINUOUS_LEARNING"):
        runtime.update({"classifier.bias": np.ones(10, np.float32)})
    with pytest.raises(jp.UpdateError, match="disabled"):
        runtime.learn(x[:8], y[:8])
    with pytest.raises(jp.UpdateError, match="disabled"):
        runtime.rollback()
    assert runtime.version == 0
    np.testing.assert_array_equal(runtime.infer(x), before)
    monkeypatch.setenv("DISABLE_CONTINUOUS_LEARNING", "false")
    assert runtime.update({"classifier.bias": np.ones(10, np.float32)}) == 1


# --- concurrency ------------------------------------------------------------------------------------

def test_readers_never_see_a_mix_of_versions(digits: tuple[np.ndarray, ...]) -> None:
    """Four threads infer while one thread makes 1,000 updates of two layers, each followed by a
    rollback: every result equals one version's output exactly."""
    calib, x, _ = digits
    rt = jp.Runtime.load(DIGITS, quantize="int8", calibration=calib)
    batch = x[:16]
    deltas = deltas_for(rt, ["features.6.weight", "classifier.weight"], seed=8, size=0.2)
    expected_old = rt.infer(batch)
    rt.update(deltas)
    expected_new = rt.infer(batch)
    rt.rollback(0)
    # A result mixing the two versions (new conv, old classifier) differs from both.
    assert not np.array_equal(expected_old, expected_new)
    stop = threading.Event()
    seen = {"old": 0, "new": 0, "torn": 0}
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                out = rt.infer(batch)
                key = ("old" if np.array_equal(out, expected_old)
                       else "new" if np.array_equal(out, expected_new) else "torn")
                seen[key] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(1000):
            rt.update(deltas)
            time.sleep(0.0005)  # let readers run on each version
            rt.rollback(0)
            time.sleep(0.0005)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert seen["torn"] == 0, seen
    assert seen["old"] > 0 and seen["new"] > 0, seen


# --- the head learner -------------------------------------------------------------------------------

def test_learn_lowers_the_loss_and_bumps_the_version(runtime: jp.Runtime, digits: tuple[np.ndarray, ...]) -> None:
    _, x, y = digits
    xb, yb = 0.4 * x[:64], y[:64]
    first = runtime.learn(xb, yb, lr=0.05)
    assert first["version"] == 1 and first["weight"] == "classifier.weight"
    for _ in range(20):
        last = runtime.learn(xb, yb, lr=0.05)
    assert last["loss"] < first["loss"]
    assert runtime.version == 21


def test_learn_equals_the_gradient_step_computed_in_numpy(digits: tuple[np.ndarray, ...]) -> None:
    """One float step: W -= lr * (softmax(F W^T + b) - onehot)^T F / n, F the Gemm's input."""
    _, x, y = digits
    rt = jp.Runtime.load(DIGITS)
    xb, yb = x[:32], y[:32]
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    model = onnx.load(str(DIGITS))
    model.graph.output.append(onnx.helper.make_tensor_value_info("/Flatten_output_0", onnx.TensorProto.FLOAT, None))
    features = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["/Flatten_output_0"], {"input": xb})[0]
    del session
    w, b = rt.weights("classifier.weight"), rt.weights("classifier.bias")
    logits = features @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p - np.eye(10, dtype=np.float32)[yb]
    rt.learn(xb, yb, lr=0.1)
    np.testing.assert_allclose(rt.weights("classifier.weight"), w - 0.1 * g.T @ features / 32, atol=1e-5)
    np.testing.assert_allclose(rt.weights("classifier.bias"), b - 0.1 * g.mean(0), atol=1e-6)


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        (np.full(8, 10), {}, "label 10"),
        (np.full(8, -1), {}, "label -1"),
        (np.zeros(7, np.int64), {}, "7 labels for 8 feature rows"),
        (np.zeros(8, np.float32), {}, "labels must be integers"),
        (np.zeros(8, np.int64), {"lr": 0.0}, "learning rate"),
        (np.zeros(8, np.int64), {"layer": "features.3.weight"}, "not a linear layer"),
    ],
)
def test_bad_learning_steps_are_refused(
    runtime: jp.Runtime, digits: tuple[np.ndarray, ...], labels: np.ndarray, kwargs: dict, message: str
) -> None:
    _, x, _ = digits
    with pytest.raises(jp.UpdateError, match=message):
        runtime.learn(x[:8], labels, **kwargs)
    assert runtime.version == 0


def test_learn_by_layer_name(runtime: jp.Runtime, digits: tuple[np.ndarray, ...]) -> None:
    _, x, y = digits
    assert runtime.learn(x[:8], y[:8], layer="classifier.weight")["weight"] == "classifier.weight"
    assert runtime.learn(x[:8], y[:8], layer="/classifier/Gemm")["weight"] == "classifier.weight"


# --- recalibration -----------------------------------------------------------------------------------

def test_recalibrate_after_a_large_update(digits: tuple[np.ndarray, ...], tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Scaling a conv layer 6x moves every activation range after it: the update warns, and int8
    drifts from float until ``recalibrate`` measures the ranges again (a new version; rollback
    restores the old)."""
    calib, x, _ = digits
    fp32 = jp.Runtime.load(DIGITS)
    rt = jp.Runtime.load(DIGITS, quantize="int8", calibration=calib)
    grow = {"features.3.weight": 5.0 * rt.weights("features.3.weight"),
            "features.3.bias": 5.0 * rt.weights("features.3.bias")}
    fp32.update(grow)
    with caplog.at_level(logging.WARNING, logger="jarvis_performance"):
        rt.update(grow)
    assert [r.getMessage() for r in caplog.records if "weights grew 6.0x" in r.getMessage()]
    reference = fp32.infer(x)
    stale = rt.infer(x)
    assert rt.recalibrate(calib) == 2 and rt.version == 2
    fresh = rt.infer(x)
    error = lambda out: float(np.abs(out - reference).mean())  # noqa: E731
    print(f"\nmean |int8 - float| before recalibration {error(stale):.4f}, after {error(fresh):.4f}")
    assert error(fresh) < 0.5 * error(stale)
    assert rt.quantization_summary()["samples"] == len(calib)
    path = tmp_path / "recalibrated.onnx"
    rt.save(path)
    np.testing.assert_array_equal(jp.Runtime.load(path).infer(x), fresh)
    assert rt.rollback() == 1
    np.testing.assert_array_equal(rt.infer(x), stale)
    with pytest.raises(jp.UpdateError, match="float runtime"):
        fp32.recalibrate(calib)
