"""A Runtime pickles by its saved bytes, so it can be shipped to worker processes: float and
int8 copies give bit-identical outputs, keep the learned weights and version, and the CPU cap."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

import jarvis_performance as jp
from conftest import MODELS

DIGITS = MODELS / "digits_cnn.onnx"


def _infer_in_child(rt: jp.Runtime, x: np.ndarray) -> np.ndarray:
    return np.asarray(rt.infer(x)).copy()


@pytest.fixture(params=["float", "int8"])
def runtime(request: pytest.FixtureRequest) -> jp.Runtime:
    if request.param == "float":
        return jp.Runtime.load(DIGITS)
    return jp.Runtime.load(DIGITS, quantize="int8", calibration=np.load(MODELS / "digits_calib.npy"))


def test_pickled_copy_is_bit_identical(runtime: jp.Runtime) -> None:
    x = np.load(MODELS / "digits_test.npy")
    w = runtime.weights("classifier.bias")
    runtime.update({"classifier.bias": np.full_like(w, 0.25)})
    runtime.set_cpu_limit(80)
    copy = pickle.loads(pickle.dumps(runtime))
    assert isinstance(copy, jp.Runtime)
    assert copy.quantized == runtime.quantized
    assert copy.version == runtime.version == 1
    assert copy.cpu_limit == 80
    np.testing.assert_array_equal(copy.infer(x), runtime.infer(x))
    np.testing.assert_array_equal(copy.weights("classifier.bias"), w + 0.25)


def test_bytes_round_trip_and_errors(runtime: jp.Runtime) -> None:
    x = np.load(MODELS / "digits_sample.npy")
    data = runtime.to_bytes()
    copy = jp.Runtime.from_bytes(data, source="digits", threads=1)
    assert copy.threads == 1 and "digits" in repr(copy)
    np.testing.assert_array_equal(copy.infer(x), runtime.infer(x))
    with pytest.raises(jp.ModelLoadError):
        jp.Runtime.from_bytes(data[: len(data) // 2])
    with pytest.raises(jp.ModelLoadError):
        jp.Runtime.from_bytes(b"")


def test_runs_in_a_spawned_worker_process(runtime: jp.Runtime) -> None:
    x = np.load(MODELS / "digits_sample.npy")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(_infer_in_child, (runtime, x))
    np.testing.assert_array_equal(got, runtime.infer(x))
