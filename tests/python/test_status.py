"""``get_status()``: every figure is measured — call counts, latency percentiles, process CPU
and memory — and follows what the runtime does."""

from __future__ import annotations

import time

import numpy as np
import pytest

import jarvis_performance as jp
from conftest import MODELS

DIGITS = MODELS / "digits_cnn.onnx"
KEYS = {"cpu_usage", "memory_allocated_mb", "rss_mb", "inferences", "latency_ms_p50",
        "latency_ms_p99", "quantized", "version", "threads", "max_threads", "throttled",
        "cpu_limit", "cpu_budget", "other_cpu_usage", "load_average", "isa", "plans_cached",
        "max_plans", "plan_cache_mb"}


def test_status_counts_calls_and_measures_latency() -> None:
    rt = jp.Runtime.load(DIGITS, threads=1)
    s = rt.get_status()
    assert set(s) == KEYS
    assert s["inferences"] == 0 and s["latency_ms_p50"] is None and s["latency_ms_p99"] is None
    assert (s["quantized"], s["version"], s["threads"], s["throttled"]) == (False, 0, 1, False)
    assert s["isa"] in {"avx512_vnni", "avx_vnni", "avx2", "scalar"}
    x = np.load(MODELS / "digits_test.npy")
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        rt.infer(x)
        timings.append((time.perf_counter() - start) * 1000)
    with pytest.raises(jp.InputError):
        rt.infer(x[:, :, :4])  # refused calls are not counted
    s = rt.get_status()
    assert s["inferences"] == 50
    p50, p99 = s["latency_ms_p50"], s["latency_ms_p99"]
    assert p50 is not None and p99 is not None
    # The model's run time is inside the Python call's time.
    assert 0 < p50 <= p99 <= max(timings)
    assert p50 <= float(np.median(timings))


def test_cpu_usage_follows_this_process() -> None:
    rt = jp.Runtime.load(DIGITS, threads=1)
    x = np.load(MODELS / "digits_test.npy")
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        rt.infer(x)
    busy = rt.get_status()["cpu_usage"]
    time.sleep(2.5)
    idle = rt.get_status()["cpu_usage"]
    assert busy is not None and idle is not None
    # A Python loop calling infer keeps about one core busy (less on a shared machine).
    assert busy > 40, busy
    assert idle < 10, idle


def test_memory_figures() -> None:
    rt = jp.Runtime.load(DIGITS)
    s = rt.get_status()
    params = sum(rt.weights(n).nbytes for n in rt.weight_names)
    # The float masters alone are held, and the plans' (packed) copies besides.
    assert s["memory_allocated_mb"] * 2**20 > 2 * params
    with open("/proc/self/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert s["rss_mb"] == pytest.approx(rss_kb / 1024, rel=0.2)
    # A new version holds new masters; the history keeps the old ones: memory grows by them.
    w = rt.weights("classifier.weight")
    rt.update({"classifier.weight": np.ones_like(w)})
    after = rt.get_status()
    assert after["version"] == 1
    assert (after["memory_allocated_mb"] - s["memory_allocated_mb"]) * 2**20 >= w.nbytes


def test_int8_status(digits_calib: np.ndarray) -> None:
    rt = jp.Runtime.load(DIGITS, quantize="int8", calibration=digits_calib)
    s = rt.get_status()
    assert s["quantized"] is True
    summary = rt.quantization_summary()
    assert summary is not None
    assert s["memory_allocated_mb"] * 2**20 > summary["int8_weight_bytes"]


@pytest.fixture(scope="module")
def digits_calib() -> np.ndarray:
    return np.load(MODELS / "digits_calib.npy")
