"""Longer reliability runs whose figures go into the issue notes (the test suite runs short ones).

    python scripts/stress.py concurrency --seconds 30   # 4 infer threads + 1 update/rollback thread
    python scripts/stress.py calibration --samples 10000  # calibration memory on a long stream

``concurrency``: the digits CNN in int8; four threads infer one batch in a loop while a fifth
alternates an update of two layers and a rollback. Every result must equal one version's output
bit for bit. Prints calls, updates, torn results (must be 0) and errors (must be 0).
``calibration``: calibrates on a generator of N samples and prints peak RSS every 1,000 samples:
the observers' memory is fixed, so RSS must stay flat.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import jarvis_performance as jp

MODELS = Path(__file__).resolve().parents[1] / "models"


def concurrency(seconds: float) -> int:
    calib = np.load(MODELS / "digits_calib.npy")
    rt = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib)
    batch = np.load(MODELS / "digits_test.npy")[:16]
    rng = np.random.default_rng(0)
    deltas = {n: (0.2 * rng.standard_normal(rt.weights(n).shape)).astype(np.float32)
              for n in ("features.6.weight", "classifier.weight")}
    old = rt.infer(batch)
    rt.update(deltas)
    new = rt.infer(batch)
    rt.rollback(0)
    counts = {"calls": 0, "old": 0, "new": 0, "torn": 0, "errors": 0, "updates": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def reader() -> None:
        while time.monotonic() < deadline:
            try:
                out = rt.infer(batch)
                key = "old" if np.array_equal(out, old) else "new" if np.array_equal(out, new) else "torn"
            except Exception:  # noqa: BLE001 - counted and reported
                key = "errors"
            with lock:
                counts[key] += 1
                counts["calls"] += 1

    def writer() -> None:
        while time.monotonic() < deadline:
            rt.update(deltas)
            time.sleep(0.001)
            rt.rollback(0)
            time.sleep(0.001)
            counts["updates"] += 1

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{seconds:.0f} s: {counts['calls']} inferences ({counts['old']} on the old version, "
          f"{counts['new']} on the new), {counts['updates']} updates + rollbacks, "
          f"{counts['torn']} torn results, {counts['errors']} errors")
    return 0 if counts["torn"] == counts["errors"] == 0 else 1


def calibration(samples: int) -> int:
    def stream() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for i in range(samples):
            if i % 1000 == 0:
                print(f"  {i:>6} samples, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB")
            yield rng.random((1, 1, 8, 8), dtype=np.float32)

    rt = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=jp.Dataset(stream()))
    summary = rt.quantization_summary() or {}
    print(f"calibrated on {summary.get('samples')} samples; observer memory bound "
          f"{summary.get('calibration_bytes', 0) / 1024:.0f} KiB; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("concurrency").add_argument("--seconds", type=float, default=30.0)
    sub.add_parser("calibration").add_argument("--samples", type=int, default=10_000)
    args = parser.parse_args()
    return concurrency(args.seconds) if args.what == "concurrency" else calibration(args.samples)


if __name__ == "__main__":
    raise SystemExit(main())
