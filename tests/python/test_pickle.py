"""A Runtime pickles by its saved bytes, so it can be shipped to worker processes: float and
int8 copies give bit-identical outputs, keep the learned weights and version, and every load
option (threads, CPU cap, memory limit, ``allow_non_finite``)."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

import jarvis_performance as jp
from jarvis_performance import _native
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


def _nan_batch() -> np.ndarray:
    x = np.load(MODELS / "digits_sample.npy").copy()
    x[0, 0, 0, 0] = np.nan
    return x


def test_pickle_keeps_every_load_option(runtime: jp.Runtime) -> None:
    """Not only the attributes: the copy refuses the oversized batch and lets the NaN through
    exactly as a runtime loaded with those options does."""
    options = {"threads": 1, "max_cpu_percent": 150.0, "max_memory_mb": 1.0,
               "allow_non_finite": True}
    original = jp.Runtime.from_bytes(runtime.to_bytes(), **options)
    copy = pickle.loads(pickle.dumps(original))
    assert copy.quantized == runtime.quantized
    assert (copy.threads, copy.cpu_limit, copy.max_memory_mb, copy.allow_non_finite) == (
        1, 150.0, 1.0, True)
    with pytest.raises(jp.ConfigError, match="over the limit of 1 MB"):
        copy.infer(np.zeros((4096, 1, 8, 8), np.float32))
    x = _nan_batch()
    np.testing.assert_array_equal(copy.infer(x), original.infer(x))
    # A copy of a second copy still carries them (nothing is lost on the way back).
    again = pickle.loads(pickle.dumps(copy))
    assert (again.max_memory_mb, again.allow_non_finite) == (1.0, True)


def test_pickle_keeps_the_defaults(runtime: jp.Runtime) -> None:
    copy = pickle.loads(pickle.dumps(runtime))
    assert copy.max_memory_mb is None and copy.allow_non_finite is False
    assert copy.infer(np.zeros((4096, 1, 8, 8), np.float32)).shape == (4096, 10)
    with pytest.raises(jp.InputError, match="NaN or Inf"):
        copy.infer(_nan_batch())


def test_pickles_written_before_the_options_travelled_still_load() -> None:
    """The restore function's new arguments have defaults: a four-argument pickle from an
    older version loads with the old behaviour."""
    rt = jp.Runtime.load(DIGITS, threads=1)
    old = _native._restore_runtime(rt.to_bytes(), "digits", 1, None)
    assert old.threads == 1 and old.max_memory_mb is None and not old.allow_non_finite
    x = np.load(MODELS / "digits_sample.npy")
    np.testing.assert_array_equal(old.infer(x), rt.infer(x))
    with pytest.raises(jp.ConfigError, match="max_memory_mb"):
        jp.Runtime.from_bytes(rt.to_bytes(), max_memory_mb=0)
