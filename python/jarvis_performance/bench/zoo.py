"""Load time, first-call and steady latency of the third-party model zoo, system by system.

    python -m jarvis_performance.bench --zoo [--zoo-models ID ...] [--threads 1] [--calls 30]

For each zoo model (see :mod:`jarvis_performance.zoo`; fetched on first use) and each system —
jarvis fp32, jarvis int8, onnxruntime fp32, onnxruntime int8 — a fresh process loads the model
and times it alone (nothing else running): the load, the first call (for jarvis, the call that
builds the plan of that input signature) and the median of the next ``--calls`` calls, on the
inputs of the model's first zoo test. The int8 files are made beforehand, both calibrated on the
same four inputs: jarvis's own calibration and int8 kernels (saved, then loaded like any file),
and onnxruntime's ``quantize_static`` (QDQ, per-channel s8 weights, u8 activations). A model a
system cannot run or quantize gets ``n/a`` and the reason. Ratios are jarvis / onnxruntime fp32
and jarvis int8 / onnxruntime int8 (below 1.0: jarvis is faster).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import zoo

SYSTEMS = ("jarvis fp32", "jarvis int8", "onnxruntime fp32", "onnxruntime int8")

#: Inputs each int8 file is calibrated on.
CALIBRATION_SAMPLES = 4


@dataclass
class Timing:
    """One system on one model: seconds to load, ms of the first and of later calls."""

    load_s: float | None = None
    first_ms: float | None = None
    steady_ms: float | None = None
    error: str | None = None


@dataclass
class ZooRow:
    model: str
    family: str
    shape: str
    timings: dict[str, Timing] = field(default_factory=dict)
    #: jarvis int8's load time includes calibration (no saved file for this model).
    calibrated_in_process: bool = False

    def ratio(self, numerator: str, denominator: str) -> float | None:
        a, b = self.timings.get(numerator), self.timings.get(denominator)
        if a is None or b is None or a.steady_ms is None or b.steady_ms is None:
            return None
        return a.steady_ms / b.steady_ms


def _time_in_process(system: str, path: str, feed: dict[str, np.ndarray], threads: int,
                     calls: int, calibration: list[dict[str, np.ndarray]] | None) -> dict[str, Any]:
    """Runs in a fresh process: load ``path`` with ``system`` (calibrating on ``calibration``
    when given), time the calls."""
    try:
        start = time.perf_counter()
        if system.startswith("jarvis"):
            from .._native import Runtime

            if calibration is None:
                runtime = Runtime.load(path, threads=threads)
            else:
                runtime = Runtime.load(path, threads=threads, quantize="int8",
                                       calibration=calibration)

            def call() -> object:
                return runtime.infer(feed)
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

            def call() -> object:
                return session.run(None, feed)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        call()
        first_ms = (time.perf_counter() - start) * 1e3
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        return {"load_s": load_s, "first_ms": first_ms, "steady_ms": statistics.median(times)}
    except Exception as err:  # noqa: BLE001 - reported as the system's n/a reason
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}


def time_alone(system: str, path: Path, feed: dict[str, np.ndarray], *, threads: int,
               calls: int, calibration: list[dict[str, np.ndarray]] | None = None) -> Timing:
    """``system`` timed in a process of its own (spawned: no state shared with this one)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result = pool.apply(_time_in_process,
                            (system, str(path), feed, threads, calls, calibration))
    return Timing(**result)


def jarvis_int8_file(model: zoo.ZooModel, path: Path, folder: Path) -> Path:
    """jarvis's int8 file of ``model``, calibrated on the zoo's first test inputs."""
    from .._native import Runtime

    calibration = [zoo.make_feed(model, 0, seed=s) for s in range(CALIBRATION_SAMPLES)]
    runtime = Runtime.load(path, quantize="int8", calibration=calibration)
    out = folder / f"{model.id}.jarvis-int8.onnx"
    runtime.save(out)
    return out


def ort_int8_file(model: zoo.ZooModel, path: Path, folder: Path) -> Path:
    """onnxruntime's QDQ int8 file of ``model`` (``quantize_static``), same calibration inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = [zoo.make_feed(model, 0, seed=s) for s in range(CALIBRATION_SAMPLES)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    out = folder / f"{model.id}.ort-int8.onnx"
    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def bench_model(model: zoo.ZooModel, *, threads: int, calls: int, folder: Path) -> ZooRow:
    """Every system on ``model``, one after the other."""
    path, _ = zoo.fetch_one(model)
    feed = zoo.make_feed(model, 0)
    shape = ", ".join(f"{k}={'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feed.items())
    row = ZooRow(model.id, model.family, shape)
    files: dict[str, Path | str] = {"jarvis fp32": path, "onnxruntime fp32": path}
    for system, make in (("jarvis int8", jarvis_int8_file), ("onnxruntime int8", ort_int8_file)):
        try:
            files[system] = make(model, path, folder)
        except Exception as err:  # noqa: BLE001 - the system's n/a reason
            files[system] = f"quantizing: {type(err).__name__}: {str(err).splitlines()[0][:100]}"
    for system in SYSTEMS:
        target = files[system]
        if system == "jarvis int8" and isinstance(target, str) and "cannot save" in target:
            # No QDQ file could be saved for this model: calibrate in the timed process, so its
            # load time includes calibration.
            calibration = [zoo.make_feed(model, 0, seed=s) for s in range(CALIBRATION_SAMPLES)]
            row.timings[system] = time_alone(system, path, feed, threads=threads, calls=calls,
                                             calibration=calibration)
            row.calibrated_in_process = True
        elif isinstance(target, str):
            row.timings[system] = Timing(error=target)
        else:
            row.timings[system] = time_alone(system, target, feed, threads=threads, calls=calls)
    return row


def _cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[ZooRow]) -> str:
    """A Markdown table: per model, each system's load s / first ms / steady ms, and ratios."""
    head = ["model", "family", "inputs"]
    for system in SYSTEMS:
        head.append(f"{system} load s / first ms / steady ms")
    head += ["jarvis fp32 / ort fp32", "jarvis int8 / ort int8", "best jarvis / ort fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for row in rows:
        cells = [row.model, row.family, row.shape]
        for system in SYSTEMS:
            t = row.timings[system]
            if t.error:
                cells.append("n/a")
                notes.append(f"{row.model} / {system}: {t.error}")
            else:
                mark = "*" if system == "jarvis int8" and row.calibrated_in_process else ""
                cells.append(f"{_cell(t.load_s, 2)}{mark} / {_cell(t.first_ms)} / "
                             f"{_cell(t.steady_ms, 2)}")
        best = min(
            (t.steady_ms for s, t in row.timings.items() if s.startswith("jarvis") and t.steady_ms),
            default=None,
        )
        reference = row.timings["onnxruntime fp32"].steady_ms
        cells += [
            _cell(row.ratio("jarvis fp32", "onnxruntime fp32"), 2),
            _cell(row.ratio("jarvis int8", "onnxruntime int8"), 2),
            _cell(best / reference if best and reference else None, 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row.calibrated_in_process for row in rows):
        notes.insert(0, "* jarvis int8 load includes calibration on 4 inputs (no QDQ file could be saved)")
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def run(model_ids: list[str] | None, *, threads: int, calls: int) -> list[ZooRow]:
    """Benchmarks the chosen zoo models (default: all of the default set)."""
    models = zoo.selected(only=model_ids)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for model in models:
            rows.append(bench_model(model, threads=threads, calls=calls, folder=Path(work)))
            print(format_table(rows[-1:]).splitlines()[2], flush=True)  # noqa: T201 - progress
    return rows
