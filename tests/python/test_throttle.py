"""The adaptive CPU throttle: a caller saturating ``infer`` for ~8 s keeps this process's CPU
at or under the cap (+5 points), measured independently with ``getrusage``."""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest

import jarvis_performance as jp
from conftest import MODELS

DIGITS = MODELS / "digits_cnn.onnx"


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def saturate(rt: jp.Runtime, x: np.ndarray, seconds: float) -> tuple[float, float]:
    """Calls ``infer`` back to back; returns (process CPU percent, calls per second)."""
    rt.infer(x)  # plans built before measuring
    cpu0, wall0, calls = process_cpu(), time.monotonic(), 0
    while time.monotonic() - wall0 < seconds:
        rt.infer(x)
        calls += 1
    wall = time.monotonic() - wall0
    return (process_cpu() - cpu0) / wall * 100, calls / wall


@pytest.mark.parametrize("cap", [25, 50])
def test_cpu_stays_under_the_cap(cap: int) -> None:
    x = np.repeat(np.load(MODELS / "digits_test.npy"), 4, axis=0)  # 1,440 digits per call
    rt = jp.Runtime.load(DIGITS, max_cpu_percent=cap)
    cpu, rate = saturate(rt, x, 8.0)
    s = rt.get_status()
    print(f"\ncap {cap}%: process CPU {cpu:.1f}%, {rate:.1f} calls/s ({rate * len(x):.0f} "
          f"images/s), status cpu_usage {s['cpu_usage']:.1f}, budget {s['cpu_budget']:.1f}, "
          f"others {s['other_cpu_usage']}")
    assert cpu <= cap + 5, f"{cpu:.1f}% with a {cap}% cap"
    assert s["throttled"] is True and s["cpu_limit"] == cap
    assert s["threads"] == 1  # a cap under one core runs single-threaded first


def test_uncapped_reference_and_removing_the_cap() -> None:
    """Without a cap the same loop uses well over 25 % (so the test above can fail); the cap
    can be set and removed at run time."""
    x = np.repeat(np.load(MODELS / "digits_test.npy"), 4, axis=0)
    rt = jp.Runtime.load(DIGITS)
    cpu, rate = saturate(rt, x, 3.0)
    print(f"\nno cap: process CPU {cpu:.1f}%, {rate:.1f} calls/s ({rate * len(x):.0f} images/s)")
    assert cpu > 40
    rt.set_cpu_limit(100)
    assert rt.cpu_limit == 100
    cpu100, rate100 = saturate(rt, x, 3.0)
    print(f"cap 100%: process CPU {cpu100:.1f}%, {rate100:.1f} calls/s")
    assert cpu100 <= 105
    rt.set_cpu_limit(None)
    assert rt.cpu_limit is None and rt.get_status()["cpu_limit"] is None


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf")])
def test_invalid_caps_are_refused(bad: float) -> None:
    with pytest.raises(jp.ConfigError, match="max_cpu_percent"):
        jp.Runtime.load(DIGITS, max_cpu_percent=bad)
    rt = jp.Runtime.load(DIGITS)
    with pytest.raises(jp.ConfigError):
        rt.set_cpu_limit(bad)
    assert rt.cpu_limit is None
