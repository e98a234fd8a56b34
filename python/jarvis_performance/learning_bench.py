"""Timing of live weight updates: ``update`` and ``learn`` on int8 and float runtimes.

    python -m jarvis_performance.bench --learning [--models efficientnet_lite0 digits_cnn]

For each model: one ``update`` of its last linear layer (int8: that layer re-quantized, re-packed
and swapped; float: the plans rebuilt), one ``learn`` step on a batch of 8, median ms and ms per
million parameters touched.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._native import Runtime


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _head(rt: Runtime, x: np.ndarray) -> tuple[str, str | None]:
    """The weight (and bias) names of the layer ``learn`` trains by default."""
    step = rt.learn(x[:1], np.zeros(1, np.int64), lr=1e-9)
    weight = str(step["weight"])
    bias = weight.rsplit(".", 1)[0] + ".bias"
    return weight, bias if bias in rt.weight_names else None


def measure(path: Path, x: np.ndarray, *, int8: bool, rounds: int) -> dict[str, float]:
    """Median ms of an update of the head and of a learn step."""
    rt = (Runtime.load(path, quantize="int8", calibration=x) if int8 else Runtime.load(path))
    weight, bias = _head(rt, x)
    names = [weight] + ([bias] if bias else [])
    rng = np.random.default_rng(0)
    deltas = {n: (1e-4 * rng.standard_normal(rt.weights(n).shape)).astype(np.float32) for n in names}
    params = sum(rt.weights(n).size for n in names)
    classes = rt.weights(weight).shape[0]
    labels = rng.integers(0, classes, len(x[:8])).astype(np.int64)
    update_ms = _median_ms(lambda: rt.update(deltas), rounds)
    learn_ms = _median_ms(lambda: rt.learn(x[:8], labels, lr=1e-4), rounds)
    return {"params": params, "update_ms": update_ms, "learn_ms": learn_ms}


def main(models: list[str], *, rounds: int) -> int:
    """Prints one row per model and precision."""
    from .bench import resolve_model

    sys.stdout.write(f"{'model':<20} {'precision':<9} {'params':>9} {'update ms':>10} {'ms/Mparam':>10} "
                     f"{'learn ms (b8)':>13}\n")
    for name in models:
        path = resolve_model(name)
        probe = Runtime.load(path)
        (spec,) = probe.inputs
        shape = tuple(d if d is not None else 8 for d in spec.shape)
        x = np.random.default_rng(1).standard_normal((8, *shape[1:])).astype(np.float32)
        for int8 in (True, False):
            r = measure(path, x, int8=int8, rounds=rounds)
            per_million = r["update_ms"] / (r["params"] / 1e6)
            sys.stdout.write(f"{path.stem[:20]:<20} {'int8' if int8 else 'float':<9} {int(r['params']):>9} "
                             f"{r['update_ms']:>10.2f} {per_million:>10.2f} {r['learn_ms']:>13.2f}\n")
            sys.stdout.flush()
    return 0
