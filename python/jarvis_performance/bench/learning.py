"""Timing of live weight updates: ``update`` and ``learn`` on int8 and float runtimes.

    python -m jarvis_performance.bench --learning [--models efficientnet_lite0 digits_cnn] [--rounds 5]

For each model and precision: ``update`` of its last linear layer (weight and bias; int8: that
layer re-quantized, re-packed and swapped; float: the plans rebuilt) and ``learn`` steps on a
batch of 8 (the features computed by the model up to that layer, the gradient, then the same
update). Each figure is the median over many calls (``update``: 20 × ``--rounds``, at least 60;
``learn``: 4 × ``--rounds``, at least 12; cut to ``--rounds``, at least 3, after 10 s: a float
update rebuilds the model), in wall time and in CPU time of the whole process
(every thread), with ms per million parameters updated. Inference runs first at batch 1 and 8,
so an update re-makes the plans of both sizes as in a service. ``infer b8`` is one inference on
the same batch: the floor under ``learn``, which runs most of the model to get its features.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._native import Runtime

HEADER = (f"{'model':<20} {'precision':<9} {'params':>9} {'update ms':>9} {'cpu':>6} "
          f"{'ms/Mparam':>9} {'cpu':>6} {'learn ms':>9} {'cpu':>6} {'ms/Mparam':>9} {'cpu':>6} "
          f"{'infer b8 ms':>11} {'cpu':>6}")


def _median_ms(fn: Callable[[], object], calls: int, *, least: int,
               seconds: float = 10.0) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds of ``calls`` calls after one untimed, or of at
    least ``least`` once ``seconds`` have passed (float updates rebuild the model)."""
    fn()
    wall: list[float] = []
    cpu: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(wall) < calls and (len(wall) < least or time.perf_counter() < deadline):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def _head(rt: Runtime, x: np.ndarray) -> tuple[str, str | None]:
    """The weight (and bias) names of the layer ``learn`` trains by default."""
    step = rt.learn(x[:1], np.zeros(1, np.int64), lr=1e-9)
    weight = str(step["weight"])
    bias = weight.rsplit(".", 1)[0] + ".bias"
    return weight, bias if bias in rt.weight_names else None


def measure(path: Path, x: np.ndarray, *, int8: bool, rounds: int) -> dict[str, float]:
    """Median wall and CPU ms of an update of the head, of a learn step and of an inference."""
    rt = (Runtime.load(path, quantize="int8", calibration=x) if int8 else Runtime.load(path))
    weight, bias = _head(rt, x)
    names = [weight] + ([bias] if bias else [])
    rng = np.random.default_rng(0)
    deltas = {n: (1e-4 * rng.standard_normal(rt.weights(n).shape)).astype(np.float32) for n in names}
    params = sum(rt.weights(n).size for n in names)
    classes = rt.weights(weight).shape[0]
    batch = x[:8]
    labels = rng.integers(0, classes, len(batch)).astype(np.int64)
    least = max(rounds, 3)
    # Inference first, at batch 1 and 8, so that an update re-makes the plans a serving
    # runtime holds (one per batch size seen), not only the symbolic one.
    rt.infer(x[:1])
    infer = _median_ms(lambda: rt.infer(batch), max(4 * rounds, 12), least=least)
    update = _median_ms(lambda: rt.update(deltas), max(20 * rounds, 60), least=least)
    learn = _median_ms(lambda: rt.learn(batch, labels, lr=1e-4), max(4 * rounds, 12), least=least)
    return {"params": params, "update_ms": update[0], "update_cpu_ms": update[1],
            "learn_ms": learn[0], "learn_cpu_ms": learn[1], "infer_ms": infer[0],
            "infer_cpu_ms": infer[1]}


def main(models: list[str], *, rounds: int) -> int:
    """Prints one row per model and precision."""
    from .compare import resolve_model

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sys.stdout.write(f"# {os.cpu_count()} cores, load average {load:.1f}; medians in ms (wall, then "
                     f"CPU of every thread); ms/Mparam per million parameters updated\n")
    sys.stdout.write(HEADER + "\n")
    for name in models:
        path = resolve_model(name)
        probe = Runtime.load(path)
        (spec,) = probe.inputs
        shape = tuple(d if d is not None else 8 for d in spec.shape)
        x = np.random.default_rng(1).standard_normal((8, *shape[1:])).astype(np.float32)
        for int8 in (True, False):
            r = measure(path, x, int8=int8, rounds=rounds)
            millions = r["params"] / 1e6
            sys.stdout.write(
                f"{path.stem[:20]:<20} {'int8' if int8 else 'float':<9} {int(r['params']):>9} "
                f"{r['update_ms']:>9.2f} {r['update_cpu_ms']:>6.2f} "
                f"{r['update_ms'] / millions:>9.2f} {r['update_cpu_ms'] / millions:>6.2f} "
                f"{r['learn_ms']:>9.2f} {r['learn_cpu_ms']:>6.2f} "
                f"{r['learn_ms'] / millions:>9.2f} {r['learn_cpu_ms'] / millions:>6.2f} "
                f"{r['infer_ms']:>11.2f} {r['infer_cpu_ms']:>6.2f}\n")
            sys.stdout.flush()
    return 0
