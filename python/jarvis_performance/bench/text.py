"""A BERT-style sentence encoder, all four ways, in one process with interleaved rounds.

    python -m jarvis_performance.bench --text [--batch 1 8] [--threads 1] [--rounds 5]

all-MiniLM-L6-v2 (6 layers, 384 hidden; :mod:`jarvis_performance.sentence`) on sentences padded
to 128 tokens: onnxruntime fp32, onnxruntime's own dynamic int8 (``quantize_dynamic``, s8
weights), jarvis fp32 and jarvis int8 (its calibration on a few other sentences, per-row input
quantization where it measured closer to float, float fallback where int8 measured slower).
Besides the median latencies and the ratios, each int8 system's worst cosine to onnxruntime fp32
over the batch.
"""

from __future__ import annotations

import statistics
import sys
from functools import partial
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

TOKENS = 128

#: Sentences the int8 encoder calibrates on (the timed batch is other sentences).
CALIBRATION = [
    "The train to the airport leaves every twenty minutes from platform four.",
    "Could you remind me to call my sister tomorrow at noon?",
    "The soup needs more salt and a little pepper before serving.",
    "My laptop fan gets loud whenever I open a video call.",
    "Heavy rain is expected across the region on Sunday evening.",
    "She scored the winning goal in the last minute of the match.",
    "The museum has a new exhibition of early photography.",
    "Interest rates were raised by a quarter of a point this morning.",
]

TIMED = [
    "A man is playing a guitar on the street corner.",
    "The stock market fell sharply after the earnings report.",
    "Set an alarm for six thirty tomorrow morning.",
    "It will be sunny and warm for the rest of the week.",
    "The chef seared the salmon and served it with lemon butter.",
    "My phone battery drains far too quickly since the last update.",
    "The team won the championship after a dramatic penalty shootout.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
]


def _median_ms(fns: dict[str, Callable[[], np.ndarray]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(3):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def _run_session(session: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    out: np.ndarray = session.run(None, feed)[0]
    return out


def _run_jarvis(runtime: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    out: np.ndarray = runtime.infer(feed)["embedding"]
    return out


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.min(cos))


def run(*, batches: list[int], threads: int, rounds: int) -> int:
    """Print the table; returns the exit status."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import jarvis_performance as jp

    from ..sentence import cached_sentence_encoder, tokenize

    path = cached_sentence_encoder()
    folder = Path(tempfile.mkdtemp(prefix="jarvis-bench-text-"))
    dynamic = folder / "minilm_dynamic_int8.onnx"
    quantize_dynamic(str(path), str(dynamic), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for name, p in (("ort fp32", path), ("ort dyn int8", dynamic))}
    calibration = [tokenize(CALIBRATION[i:i + 4], tokens=TOKENS) for i in range(0, len(CALIBRATION), 4)]
    jarvis = {"jarvis fp32": jp.Runtime.load(path, threads=threads),
              "jarvis int8": jp.Runtime.load(path, threads=threads, quantize="int8",
                                             calibration=calibration)}
    fallbacks = [row["name"] for row in jarvis["jarvis int8"].quantization_report()
                 if not row["int8"] and "slower" in (row["reason"] or "")]
    per_row = sum(row["input"] == "per-row" for row in jarvis["jarvis int8"].quantization_report())
    header = (f"all-MiniLM-L6-v2, {TOKENS} tokens, {threads} thread(s), median of {rounds}x3 "
              f"interleaved calls; jarvis int8: {per_row} per-row layers, "
              f"float fallbacks (slower in int8): {fallbacks or 'none'}")
    sys.stdout.write(header + "\n")
    names = ["ort fp32", "ort dyn int8", "jarvis fp32", "jarvis int8"]
    sys.stdout.write(f"{'batch':>5} " + " ".join(f"{n:>13}" for n in names)
                     + f" {'j8/ort32':>9} {'j8/ortdyn':>9} {'cos ortdyn':>10} {'cos j8':>8}\n")
    for batch in batches:
        feed = tokenize((TIMED * (batch // len(TIMED) + 1))[:batch], tokens=TOKENS)
        fns: dict[str, Callable[[], Any]] = {}
        for name, session in sessions.items():
            fns[name] = partial(_run_session, session, feed)
        for name, runtime in jarvis.items():
            fns[name] = partial(_run_jarvis, runtime, feed)
        reference = fns["ort fp32"]()
        cos_dynamic = _min_cosine(fns["ort dyn int8"](), reference)
        cos_int8 = _min_cosine(fns["jarvis int8"](), reference)
        ms = _median_ms(fns, rounds)
        sys.stdout.write(
            f"{batch:>5} " + " ".join(f"{ms[n]:>10.2f} ms" for n in names)
            + f" {ms['jarvis int8'] / ms['ort fp32']:>9.2f} {ms['jarvis int8'] / ms['ort dyn int8']:>9.2f}"
            + f" {cos_dynamic:>10.4f} {cos_int8:>8.4f}\n")
    return 0
