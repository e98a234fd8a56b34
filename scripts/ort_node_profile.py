"""onnxruntime's own per-node profile of a model, to set beside ``jarvis-perf bench --profile``.

    python scripts/ort_node_profile.py MODEL.onnx [--threads 1] [--runs 300] [--top 40]

Runs the model on one standard-normal batch-1 input with onnxruntime's profiler on
(``SessionOptions.enable_profiling``), drops the warm-up runs, and prints the median kernel time
of each node (slowest first) and the total per operator type. Node names are those of
onnxruntime's optimised graph: a QDQ model's ``Conv`` node ``/x/Conv`` appears as the
``QLinearConv`` ``/x/Conv_token_N``. Used for the layer-by-layer comparison in the README's
benchmark section, with the int8 file ``python -m jarvis_performance.bench --int8`` caches
(``~/.cache/jarvis-performance/models/*-qdq-u8s8-*.onnx``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort

WARM_UP = 50


def node_medians(path: str, *, threads: int, runs: int) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms per node over ``runs`` profiled runs, and each node's operator type."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    (first,) = session.get_inputs()[:1]
    shape = [1 if not isinstance(d, int) else d for d in first.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(WARM_UP + runs):
        session.run(None, {first.name: x})
    trace = session.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    os.remove(trace)
    times: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            times[node].append(event["dur"] / 1000)
            ops[node] = event["args"].get("op_name", "?")
    medians = {node: float(np.median(v[WARM_UP:] or v)) for node, v in times.items()}
    return medians, ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    medians, ops = node_medians(args.model, threads=args.threads, runs=args.runs)
    total = sum(medians.values())
    print(f"total {total:.3f} ms in {len(medians)} nodes")
    for node, ms in sorted(medians.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{ms:8.3f} ms {100 * ms / total:5.1f} %  {ops[node]:16s} {node}")
    by_op: dict[str, float] = collections.defaultdict(float)
    for node, ms in medians.items():
        by_op[ops[node]] += ms
    print("by operator:")
    for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"{ms:8.3f} ms  {op}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
