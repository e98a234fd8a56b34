"""Side-by-side latency benchmark: jarvis-performance against onnxruntime (and PyTorch).

    python -m jarvis_performance.bench                       # shipped digits models
    python -m jarvis_performance.bench --models resnet18 mobilenet_v2 efficientnet_lite0 \\
        --batch 1 8 --threads 1 2 --int8 --torch
    python -m jarvis_performance.bench --vision              # image preprocessing (vision_bench)

Model names are shipped models (``digits_cnn``, ``digits_mlp``), ``.onnx`` paths, or names that
:func:`jarvis_performance.export.load_module` understands (exported once into the model cache;
needs the ``export`` extra). Each configuration is measured in interleaved rounds, so a noisy
neighbour slows every system alike; the table gives median milliseconds and ratios (below 1.0
means jarvis is faster). ``jarvis`` is the float path (tract's own kernels). With ``--int8``,
``jarvis int8`` (the project's calibration and int8 kernels) and ``ort int8`` (onnxruntime's
``quantize_static``: QDQ, per-channel s8 weights, u8 activations) join, both calibrated on the
same 32 random inputs (enough for timing; accuracy is what the test suite checks). Needs the
``bench`` extra (onnxruntime).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import Runtime

#: Shipped models are looked up in ``./models`` (run from the repository root).
SHIPPED_DIR = Path("models")
IMAGE_SHAPE = (1, 3, 224, 224)


@dataclass(frozen=True)
class Row:
    """One measured configuration: median milliseconds per system."""

    model: str
    batch: int
    threads: int
    median_ms: dict[str, float]


def resolve_model(name: str) -> Path:
    """A path for a shipped model name, an ``.onnx`` path, or an exportable model name."""
    if name.endswith(".onnx"):
        return Path(name)
    shipped = SHIPPED_DIR / f"{name}.onnx"
    if shipped.exists():
        return shipped
    from .export import cached_export

    return cached_export(name, input_shape=IMAGE_SHAPE)


def _input_for(rt: Runtime, batch: int, seed: int = 0) -> np.ndarray:
    (spec,) = rt.inputs
    if any(d is None for d in spec.shape[1:]):
        raise SystemExit(f"{spec.name}: only the batch axis may be dynamic for this benchmark")
    shape = (batch, *(d for d in spec.shape[1:] if d is not None))
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _median_ms(fns: dict[str, Callable[[], object]], *, rounds: int, per_round: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(path: Path, *, batch: int, threads: int, with_torch: str | None, rounds: int,
            int8: bool = False) -> Row:
    """Time jarvis, onnxruntime and optionally PyTorch (and the int8 paths) on the same input."""
    import onnxruntime as ort

    rt = Runtime.load(path, threads=threads)
    x = _input_for(rt, batch)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    fns: dict[str, Callable[[], object]] = {
        "jarvis": lambda: rt.infer(x),
        "onnxruntime": lambda: session.run(None, feed),
    }
    if int8:
        calib = _input_for(rt, 32, seed=1)
        rt8 = Runtime.load(path, threads=threads, quantize="int8", calibration=calib)
        session8 = ort.InferenceSession(str(_ort_int8(path, calib)), options,
                                        providers=["CPUExecutionProvider"])
        fns["jarvis int8"] = lambda: rt8.infer(x)
        fns["ort int8"] = lambda: session8.run(None, feed)
    if with_torch:
        fns["pytorch"] = _torch_fn(with_torch, x, threads)
    per_round = max(1, min(20, int(200 / max(batch, 1))))
    return Row(path.stem, batch, threads, _median_ms(fns, rounds=rounds, per_round=per_round))


def _ort_int8(path: Path, calib: np.ndarray) -> Path:
    """onnxruntime's static QDQ quantization of ``path``, kept in the model cache."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from .export import default_cache_dir

    out = default_cache_dir() / f"{path.stem}.ort-int8.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        return out
    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    tmp = out.with_suffix(".tmp.onnx")
    quantize_static(str(path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    tmp.replace(out)
    return out


def _torch_fn(name: str, x: np.ndarray, threads: int) -> Callable[[], object]:
    import torch

    from .export import load_module

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = load_module(name).eval()
    xt = torch.from_numpy(x)

    def run() -> object:
        with torch.no_grad():
            return module(xt)

    return run


def format_header(systems: list[str]) -> str:
    """The table header for the given systems."""
    header = f"{'model':<28}{'batch':>6}{'thr':>5}" + "".join(f"{s + ' ms':>15}" for s in systems)
    header += f"{'jarvis/ort':>12}"
    if "jarvis int8" in systems:
        header += f"{'int8/float':>12}{'int8/ort8':>11}"
    return header + "\n" + "-" * len(header)


def format_row(row: Row, systems: list[str]) -> str:
    """One table line: median milliseconds per system (``nan`` where not measured) and ratios:
    jarvis float / onnxruntime float, and with int8: jarvis int8 / jarvis float and
    jarvis int8 / onnxruntime int8."""
    ms = row.median_ms
    cells = "".join(f"{ms.get(s, float('nan')):>15.3f}" for s in systems)
    line = f"{row.model:<28}{row.batch:>6}{row.threads:>5}{cells}{ms['jarvis'] / ms['onnxruntime']:>12.2f}"
    if "jarvis int8" in ms:
        line += f"{ms['jarvis int8'] / ms['jarvis']:>12.2f}{ms['jarvis int8'] / ms['ort int8']:>11.2f}"
    return line


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the table and returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jarvis_performance.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "digits_mlp"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per configuration")
    parser.add_argument("--torch", action="store_true", help="also time PyTorch eager (exportable names only)")
    parser.add_argument("--int8", action="store_true", help="also time jarvis int8 and onnxruntime int8")
    parser.add_argument("--learning", action="store_true",
                        help="time update/learn instead (see jarvis_performance.learning_bench)")
    parser.add_argument("--vision", action="store_true",
                        help="time image preprocessing (jp.preprocess) against Pillow + NumPy instead")
    args = parser.parse_args(argv)
    if args.learning:
        from . import learning_bench

        models = args.models if args.models != parser.get_default("models") else ["digits_cnn"]
        return learning_bench.main(models, rounds=max(args.rounds, 3))
    if args.vision:
        from .vision_bench import run as run_vision

        return run_vision(rounds=args.rounds)
    systems = ["jarvis", "onnxruntime"] + (["jarvis int8", "ort int8"] if args.int8 else [])
    systems += ["pytorch"] if args.torch else []
    sys.stdout.write(format_header(systems) + "\n")
    for name in args.models:
        path = resolve_model(name)
        exportable = not name.endswith(".onnx") and not (SHIPPED_DIR / f"{name}.onnx").exists()
        torch_name = name if args.torch and exportable else None
        for threads in args.threads:
            for batch in args.batch:
                row = measure(path, batch=batch, threads=threads, with_torch=torch_name,
                              rounds=args.rounds, int8=args.int8)
                sys.stdout.write(format_row(row, systems) + "\n")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
