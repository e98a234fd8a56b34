"""Side-by-side latency benchmark: jarvis-performance against onnxruntime and PyTorch eager
(``python -m jarvis_performance.bench``).

    python -m jarvis_performance.bench                       # shipped digits models, float
    python -m jarvis_performance.bench --models resnet18 mobilenet_v2 efficientnet_lite0 \\
        --batch 1 8 --threads 1 2 --int8 --torch [--json]
    python -m jarvis_performance.bench --learning            # update/learn (bench.learning)
    python -m jarvis_performance.bench --vision              # image preprocessing (bench.vision)
    python -m jarvis_performance.bench --zoo [--zoo-models ID ...]  # third-party models (bench.zoo)

Model names are shipped models (``digits_cnn``, ``digits_mlp``), ``.onnx`` paths, or names that
:func:`jarvis_performance.export.load_module` understands (exported once into the model cache;
needs the ``export`` extra).

Systems: ``onnxruntime fp32`` and ``jarvis fp32`` always; with ``--int8``, ``onnxruntime int8``
(``quant_pre_process`` then ``quantize_static``: QDQ, per-channel s8 weights, u8 activations —
onnxruntime's fast path) and ``jarvis int8`` (the project's calibration and int8 kernels), both
calibrated on the same 32 samples; with ``--torch``, ``pytorch fp32`` (eager, ``inference_mode``).
Every system runs in its own worker process (see :mod:`jarvis_performance.bench.worker`) and the
rounds interleave across them: each round gives every system about ``--round-ms`` of calls, in
an order that rotates from round to round, while the other workers are stopped. The table gives
median and p99 ms over all timed calls, the peak RSS of each system's process (interpreter and
libraries included), the weights each system computes with (MB), and per configuration the
ratios jarvis int8 / onnxruntime int8 and jarvis int8 / jarvis fp32 (below 1.0: jarvis int8 is
faster), plus, with ``--torch``, the seed's headline: inference against PyTorch eager float.
Needs the ``bench`` extra (onnxruntime, onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .prepare import (
    MB,
    BenchModel,
    JarvisInt8,
    bench_model,
    calibration_data,
    jarvis_int8,
    ort_int8_layers,
    ort_int8_path,
    ort_int8_weight_bytes,
    resolve_model,
)
from .worker import SYSTEMS, SystemSpec, Worker

__all__ = ["main", "measure", "prepare", "resolve_model", "run_table", "Row", "SystemResult"]

#: The seed guide's claim (jarvis-performance-guide.md): model inference 300 ms → 60 ms, 5×,
#: against the PyTorch float code it replaced.
SEED_HEADLINE = (300.0, 60.0)
LABELS = {
    "pytorch fp32": "PyTorch eager fp32",
    "onnxruntime fp32": "onnxruntime fp32",
    "onnxruntime int8": "onnxruntime int8",
    "jarvis fp32": "jarvis fp32",
    "jarvis int8": "jarvis int8",
}


@dataclass(frozen=True)
class SystemResult:
    """One system's figures in one configuration (``error`` set when it could not run)."""

    median_ms: float | None = None
    p99_ms: float | None = None
    samples: int = 0
    peak_rss_mb: float | None = None
    weights_mb: float | None = None
    #: jarvis only: model memory the runtime holds (``get_status()["memory_allocated_mb"]``:
    #: ONNX bytes, float masters kept for live updates, plan constants, int8 weights).
    held_mb: float | None = None
    #: jarvis int8 only: the instruction set its kernels ran on (``get_status()["isa"]``:
    #: ``avx512_vnni``, ``avx_vnni``, ``avx2`` or ``scalar``; ``JARVIS_PERF_ISA`` picks a lower one).
    isa: str | None = None
    #: The worker process that ran it.
    pid: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Row:
    """One configuration: a model at one batch size and thread count, every system timed."""

    model: str
    batch: int
    threads: int
    results: dict[str, SystemResult] = field(default_factory=dict)

    def ratio(self, numerator: str, denominator: str) -> float | None:
        """``median(numerator) / median(denominator)``, ``None`` when either is missing."""
        a, b = self.results.get(numerator), self.results.get(denominator)
        if a is None or b is None or a.median_ms is None or b.median_ms is None:
            return None
        return a.median_ms / b.median_ms

    @property
    def ratios(self) -> dict[str, float | None]:
        """The issue's ratios, and the seed headline (PyTorch eager fp32 / jarvis) when PyTorch
        ran: against jarvis int8 if it ran, else jarvis fp32."""
        out = {
            "jarvis int8 / onnxruntime int8": self.ratio("jarvis int8", "onnxruntime int8"),
            "jarvis int8 / jarvis fp32": self.ratio("jarvis int8", "jarvis fp32"),
            "jarvis fp32 / onnxruntime fp32": self.ratio("jarvis fp32", "onnxruntime fp32"),
        }
        best = "jarvis int8" if "jarvis int8" in self.results else "jarvis fp32"
        out[f"pytorch fp32 / {best}"] = self.ratio("pytorch fp32", best)
        return {k: v for k, v in out.items() if k.split(" / ")[0] in self.results
                and k.split(" / ")[1] in self.results}


@dataclass(frozen=True)
class Artifacts:
    """Per model, made once per run: the int8 files and the weight sizes of each system."""

    model: BenchModel
    ort_int8: Path | None = None
    jarvis_int8: JarvisInt8 | None = None
    ort_int8_weight_bytes: int | None = None
    #: Conv/Gemm/MatMul layers onnxruntime runs in int8 and in float (its optimised graph).
    ort_int8_layers: tuple[int, int] | None = None

    def note(self) -> str | None:
        """One line on how each int8 system runs the model's layers."""
        if self.jarvis_int8 is None or self.ort_int8_layers is None:
            return None
        j, (o_int8, o_float) = self.jarvis_int8, self.ort_int8_layers
        return (f"{self.model.name}: Conv/Gemm/MatMul layers in int8 (float): onnxruntime "
                f"{o_int8} ({o_float}), jarvis {j.int8_layers} ({j.float_layers})")


def prepare(model: BenchModel, *, int8: bool, folder: Path) -> Artifacts:
    """Quantize ``model`` for both int8 systems on the same calibration data."""
    if not int8:
        return Artifacts(model)
    calib = calibration_data(model)
    ort_file = ort_int8_path(model, calib)
    return Artifacts(model, ort_file, jarvis_int8(model, calib, folder),
                     ort_int8_weight_bytes(ort_file), ort_int8_layers(ort_file, folder))


def _median_ms(fns: dict[str, Callable[[], object]], *, rounds: int, per_round: int) -> dict[str, float]:
    """In-process interleaved timing (``bench.vision``): median ms per callable over ``rounds``
    rounds of ``per_round`` calls each, after two warm-up calls."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def _spec(art: Artifacts, system: str, *, batch: int, threads: int) -> SystemSpec:
    """What the worker of ``system`` loads: the float or int8 file, or the PyTorch module."""
    model = {
        "pytorch fp32": art.model.torch_spec,
        "onnxruntime fp32": str(art.model.path),
        "jarvis fp32": str(art.model.path),
        "onnxruntime int8": str(art.ort_int8),
        "jarvis int8": str(art.jarvis_int8.path if art.jarvis_int8 else None),
    }[system]
    return SystemSpec(system=system, model=str(model), input_name=art.model.input_name,
                      shape=(batch, *art.model.sample_shape), threads=threads)


def _weights_mb(art: Artifacts, system: str, info: dict[str, Any]) -> float | None:
    """MB of the weights ``system`` computes with (``info``: what its worker reported)."""
    if system == "pytorch fp32":
        return float(info["weights_mb"]) if "weights_mb" in info else None
    if system == "onnxruntime int8":
        return None if art.ort_int8_weight_bytes is None else art.ort_int8_weight_bytes / MB
    if system == "jarvis int8":
        return None if art.jarvis_int8 is None else art.jarvis_int8.weight_bytes / MB
    return art.model.float_weight_bytes / MB


def measure(art: Artifacts, systems: list[str], *, batch: int, threads: int, rounds: int,
            round_ms: float) -> Row:
    """Time ``systems`` on ``art.model`` in interleaved rounds, one worker process each."""
    workers: dict[str, Worker] = {}
    errors: dict[str, str] = {}
    try:
        for system in systems:
            if system == "pytorch fp32" and art.model.torch_spec is None:
                errors[system] = "no PyTorch module for an .onnx path"
                continue
            worker = Worker(_spec(art, system, batch=batch, threads=threads))
            workers[system] = worker
        per_round = {s: max(1, min(200, round(round_ms / max(w.load_info.get("warm_ms", 1.0),
                                                              1e-3))))
                     for s, w in workers.items()}
        samples: dict[str, list[float]] = {s: [] for s in workers}
        order = list(workers)
        for r in range(rounds):
            for system in order[r % len(order):] + order[:r % len(order)] if order else []:
                samples[system] += workers[system].run(per_round[system])
        results: dict[str, SystemResult] = {}
        for system in systems:
            if system in errors:
                results[system] = SystemResult(error=errors[system])
                continue
            w = workers[system]
            values = samples[system]
            if w.error is not None or not values:
                results[system] = SystemResult(error=w.error or "no samples")
                continue
            results[system] = SystemResult(
                median_ms=float(np.median(values)),
                p99_ms=float(np.percentile(values, 99)),
                samples=len(values),
                peak_rss_mb=w.peak_rss_mb(),
                pid=w.process.pid,
                weights_mb=_weights_mb(art, system, w.load_info),
                held_mb=w.load_info.get("held_mb"),
                isa=w.load_info.get("isa") if system == "jarvis int8" else None,
            )
    finally:
        for w in workers.values():
            w.close()
    return Row(art.model.name, batch, threads, results)


HEADER = (f"{'model':<20}{'batch':>6}{'thr':>4}  {'system':<20}{'median ms':>11}{'p99 ms':>10}"
          f"{'peak RSS MB':>13}{'weights MB':>12}{'held MB':>9}  int8 kernels")


def _cell(value: float | None, width: int, digits: int) -> str:
    """``value`` right-aligned; below 1, with two more decimals (tiny models)."""
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits + 2 if abs(value) < 1 else digits}f}"


def format_row(row: Row) -> str:
    """The table lines of one configuration: a line per system, then its ratios."""
    lines = []
    for i, (system, r) in enumerate(row.results.items()):
        lead = (f"{row.model:<20}{row.batch:>6}{row.threads:>4}" if i == 0 else " " * 30)
        if r.error is not None:
            lines.append(f"{lead}  {LABELS[system]:<20}failed: {r.error}")
            continue
        lines.append(f"{lead}  {LABELS[system]:<20}{_cell(r.median_ms, 11, 2)}"
                     f"{_cell(r.p99_ms, 10, 2)}{_cell(r.peak_rss_mb, 13, 0)}"
                     f"{_cell(r.weights_mb, 12, 2)}{_cell(r.held_mb, 9, 1)}"
                     + (f"  {r.isa}" if r.isa else ""))
    ratios = row.ratios
    parts = [f"{name} {value:.2f}" for name, value in ratios.items()
             if value is not None and not name.startswith("pytorch")]
    if parts:
        lines.append(f"{'':<30}  ratios: " + "; ".join(parts))
    for name, value in ratios.items():
        if name.startswith("pytorch") and value is not None:
            jarvis = name.split(" / ")[1]
            torch_ms = row.results["pytorch fp32"].median_ms
            ours = row.results[jarvis].median_ms
            before, after = SEED_HEADLINE
            lines.append(f"{'':<30}  headline: inference vs PyTorch eager fp32 {torch_ms:.3g} → "
                         f"{jarvis} {ours:.3g} ms = {value:.2f}× faster "
                         f"(seed claims {before:.0f} → {after:.0f} ms, {before / after:.0f}×)")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for package in ("onnxruntime", "torch", "numpy"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            pass
    from .. import __version__

    versions["jarvis_performance"] = __version__
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": load, "versions": versions}


def run_table(models: list[str], *, batches: list[int], threads: list[int], int8: bool,
              torch: bool, rounds: int, round_ms: float, as_json: bool) -> int:
    """Measure every configuration and print the table (or JSON); returns the exit status."""
    systems = [s for s in SYSTEMS if (torch or s != "pytorch fp32")
               and (int8 or not s.endswith("int8"))]
    env = machine()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="jarvis-bench-") as folder:
        # Quantize everything first: calibration progress bars stay out of the table.
        arts = [prepare(bench_model(name), int8=int8, folder=Path(folder)) for name in models]
        if not as_json:
            _print_header(env, arts, rounds=rounds, round_ms=round_ms)
        for art in arts:
            for t in threads:
                for b in batches:
                    row = measure(art, systems, batch=b, threads=t, rounds=rounds,
                                  round_ms=round_ms)
                    rows.append(row)
                    if not as_json:
                        sys.stdout.write(format_row(row) + "\n")
                        sys.stdout.flush()
    if as_json:
        out = {"machine": env, "rounds": rounds, "round_ms": round_ms,
               "int8_layers": {a.model.name: {"onnxruntime": a.ort_int8_layers,
                                              "jarvis": None if a.jarvis_int8 is None else
                                              (a.jarvis_int8.int8_layers,
                                               a.jarvis_int8.float_layers)} for a in arts},
               "rows": [{**asdict(r), "ratios": r.ratios} for r in rows]}
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    elif int8 or torch:
        sys.stdout.write(WEIGHTS_NOTE)
    return 0


WEIGHTS_NOTE = ("weights MB: float initializers (fp32 systems), initializers of onnxruntime's QDQ "
                "file, jarvis int8 plan weights (int8 layers + layers left float); held MB: all "
                "model memory jarvis keeps (get_status()['memory_allocated_mb'], float masters "
                "included)\n")


def _print_header(env: dict[str, Any], arts: list[Artifacts], *, rounds: int,
                  round_ms: float) -> None:
    """The lines above the table: machine, method, and each model's int8 layer counts."""
    load = env["load_average"]
    sys.stdout.write(f"# {env['cpu']}, {env['cores']} cores, load average "
                     f"{'?' if load is None else f'{load:.1f}'}; {rounds} interleaved rounds of "
                     f"~{round_ms:.0f} ms per system, one process per system\n")
    for art in arts:
        note = art.note()
        if note:
            sys.stdout.write(f"# {note}\n")
    sys.stdout.write(HEADER + "\n" + "-" * len(HEADER) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the table and returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jarvis_performance.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "digits_mlp"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per configuration")
    parser.add_argument("--round-ms", type=float, default=300.0,
                        help="about how long each system runs per round (ms)")
    parser.add_argument("--torch", action="store_true", help="also time PyTorch eager fp32")
    parser.add_argument("--int8", action="store_true", help="also time jarvis int8 and onnxruntime int8")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--learning", action="store_true",
                        help="time update/learn instead (see jarvis_performance.bench.learning)")
    parser.add_argument("--vision", action="store_true",
                        help="time image preprocessing (jp.preprocess) against Pillow + NumPy instead")
    parser.add_argument("--zoo", action="store_true",
                        help="time the third-party model zoo instead (see jarvis_performance.bench.zoo)")
    parser.add_argument("--zoo-models", nargs="+", help="zoo model ids (default: the default set)")
    parser.add_argument("--calls", type=int, default=30, help="--zoo: timed calls after the first")
    parser.add_argument("--text", action="store_true",
                        help="time a BERT-style sentence encoder instead (see jarvis_performance.bench.text)")
    args = parser.parse_args(argv)
    if args.text:
        from .text import run as run_text

        threads = args.threads if args.threads != parser.get_default("threads") else [1]
        return run_text(batches=args.batch, threads=threads[0], rounds=args.rounds)
    if args.zoo:
        from .zoo import format_table, run as run_zoo

        threads = args.threads if args.threads != parser.get_default("threads") else [1]
        rows = run_zoo(args.zoo_models, threads=threads[0], calls=args.calls)
        sys.stdout.write(format_table(rows) + "\n")
        return 0
    if args.learning:
        from . import learning

        models = args.models if args.models != parser.get_default("models") else ["digits_cnn"]
        return learning.main(models, rounds=max(args.rounds, 3))
    if args.vision:
        from .vision import run as run_vision

        return run_vision(rounds=args.rounds)
    if min(args.batch + args.threads + [args.rounds]) < 1 or args.round_ms <= 0:
        parser.error("--batch, --threads, --rounds and --round-ms must be positive")
    return run_table(args.models, batches=args.batch, threads=args.threads, int8=args.int8,
                     torch=args.torch, rounds=args.rounds, round_ms=args.round_ms,
                     as_json=args.json)

