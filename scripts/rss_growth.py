"""Resident memory over many inferences: does a runtime's RSS stay flat after warm-up?

    python scripts/rss_growth.py mobilenet_v2 --calls 10000 [--float] [--threads 1]

Loads an exported 224×224 image model (exported into the model cache on first use, which needs
the ``export`` extra), int8
calibrated on 16 views of the shipped photos unless ``--float``, runs 500 warm-up calls, waits
two seconds (mimalloc returns freed pages after ``MIMALLOC_PURGE_DELAY``), then prints the RSS
change after every fifth of ``--calls``. Issue #4 asks for ±2 MB over 10,000 calls.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jarvis_performance as jp
from jarvis_performance.export import cached_export

# The photo views are the accuracy tests' fixture (tests/python/photos.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from photos import photos, views  # noqa: E402


def rss_mb() -> float:
    """This process's resident set size in MB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported model name, e.g. mobilenet_v2")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--float", action="store_true", help="keep the model in float")
    args = parser.parse_args()
    calib = views(photos(), 16, seed=1)
    options = {} if args.float else {"quantize": "int8", "calibration": calib}
    path = cached_export(args.model, input_shape=(1, 3, 224, 224))
    rt = jp.Runtime.load(path, threads=args.threads, **options)
    x = calib[:1].copy()
    del calib
    for _ in range(500):
        rt.infer(x)
    time.sleep(2)
    start, marks, step = rss_mb(), [], max(args.calls // 5, 1)
    for call in range(1, args.calls + 1):
        rt.infer(x)
        if call % step == 0:
            marks.append(round(rss_mb() - start, 2))
    kind = "float" if args.float else "int8"
    print(f"{args.model} {kind} b1: RSS after warm-up {start:.1f} MB; change after each "
          f"{step:,} calls (MB): {marks}")


if __name__ == "__main__":
    main()
