"""Vision preprocessing benchmark: ``jp.preprocess`` against Pillow + NumPy (and torchvision).

    python -m jarvis_performance.bench --vision

Workloads, each to one normalized 224×224 NCHW float32 batch (ImageNet mean/std):

- ``frames``: 64 photo-sized uint8 frames (the photos shipped in installed packages, 300–1411
  px), and 8 1080p frames (the same photos resized to 1920×1080), as a capture path yields them;
- ``files``: 64 PNG and 64 JPEG (quality 90) files of the shipped photos, and 16 JPEG files
  at 1920×1080, where a reduced-scale JPEG decode applies.

Systems are timed in interleaved rounds: median wall ms, and median CPU ms of the process
(``time.process_time``: every thread's CPU time, so the work done whatever else loads the
machine; jarvis spreads it over the rayon threads, Pillow runs on one). ``jarvis out=`` reuses
one output array; plain ``jarvis`` reuses pooled buffers of freed batches. The decode share is the part of
a files run spent decoding: for Pillow the time of ``Image.open(...).convert("RGB")``, for
jarvis the files run minus a frames run on the already decoded pixels.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import preprocess
from .photos import MEAN, STD, photos

SIZE = 224


@dataclass(frozen=True)
class Workload:
    """One benchmark case: images as jarvis takes them, and the same as Pillow inputs."""

    name: str
    images: list[np.ndarray] | list[Path]
    decoded: list[np.ndarray]


def pil_batch(images: list[np.ndarray] | list[Path]) -> np.ndarray:
    """The Pillow + NumPy baseline: resize each image with antialiased bilinear, scale,
    normalize, transpose into a preallocated batch."""
    from PIL import Image

    batch = np.empty((len(images), 3, SIZE, SIZE), np.float32)
    for i, item in enumerate(images):
        image = (Image.open(item).convert("RGB") if isinstance(item, Path)
                 else Image.fromarray(np.asarray(item)))
        x = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
        batch[i] = ((x / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return batch


def pil_decode(paths: list[Path]) -> object:
    """Pillow's decode alone (what the files baseline spends in native decoders)."""
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths]


def torchvision_fn(images: list[np.ndarray] | list[Path]) -> Callable[[], object]:
    """torchvision's transforms on tensors: decode_image (files), resize with antialias,
    to float, normalize."""
    import torch
    from torchvision.io import decode_image
    from torchvision.transforms.v2 import functional as F

    mean, std = MEAN.tolist(), STD.tolist()

    import warnings

    # Frames are read-only views here; torchvision only reads them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def run() -> object:
        out = []
        for item in images:
            if isinstance(item, Path):
                t = decode_image(str(item))
            else:
                t = torch.from_numpy(item).permute(2, 0, 1)
            t = F.resize(t, [SIZE, SIZE], antialias=True)
            out.append(F.normalize(t.float().div_(255), mean, std))
        return torch.stack(out)

    return run


def workloads(folder: Path) -> list[Workload]:
    """The frames and files workloads, files written into ``folder``."""
    from PIL import Image

    shipped = photos()
    frames = [shipped[i % len(shipped)] for i in range(64)]
    hd = [np.asarray(Image.fromarray(shipped[i]).resize((1920, 1080), Image.Resampling.BILINEAR))
          for i in range(8)]
    cases = [Workload("frames 64 photos", frames, frames), Workload("frames 8 1080p", hd, hd)]
    for fmt, sources, count in [("png", shipped, 64), ("jpeg", shipped, 64), ("jpeg", hd, 16)]:
        paths, decoded = [], []
        tag = "1080p" if sources is hd else "photos"
        for i in range(count):
            path = folder / f"{tag}-{i}.{fmt}"
            image = Image.fromarray(sources[i % len(sources)])
            image.save(path, quality=90) if fmt == "jpeg" else image.save(path)
            paths.append(path)
            decoded.append(np.asarray(Image.open(path).convert("RGB")))
        cases.append(Workload(f"files {count} {fmt.upper()} {tag}", paths, decoded))
    return cases


def _systems(case: Workload, with_torch: bool) -> dict[str, Callable[[], object]]:
    """The timed functions for one workload."""
    out = np.empty((len(case.images), 3, SIZE, SIZE), np.float32)
    images, decoded = case.images, case.decoded

    def jarvis() -> object:
        return preprocess(images, size=SIZE, mean=MEAN, std=STD)

    def jarvis_out() -> object:
        return preprocess(images, size=SIZE, mean=MEAN, std=STD, out=out)

    def jarvis_decoded() -> object:
        return preprocess(decoded, size=SIZE, mean=MEAN, std=STD)

    fns: dict[str, Callable[[], object]] = {
        "jarvis": jarvis,
        "jarvis out=": jarvis_out,
        "PIL+NumPy": lambda: pil_batch(images),
    }
    if isinstance(images[0], Path):
        paths = [p for p in images if isinstance(p, Path)]
        fns["jarvis decoded"] = jarvis_decoded
        fns["PIL decode"] = lambda: pil_decode(paths)
    if with_torch:
        fns["torchvision"] = torchvision_fn(images)
    return fns


def _timed(fns: dict[str, Callable[[], object]], *, rounds: int,
           per_round: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU milliseconds per call, systems interleaved round by round. An
    untimed 50 ms pause after each system's calls lets helper threads go idle: PyTorch's
    intra-op threads keep spinning after torchvision returns, which otherwise slowed (and
    added CPU time to) whichever system ran next — measured 12 → 24 ms for jarvis on 8
    1080p frames."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                cpu[name].append((time.process_time() - start_cpu) * 1e3)
                wall[name].append((time.perf_counter() - start) * 1e3)
            time.sleep(0.05)
    return ({n: statistics.median(v) for n, v in wall.items()},
            {n: statistics.median(v) for n, v in cpu.items()})


def run(rounds: int = 5) -> int:
    """Prints the table; returns the exit status."""
    with_torch = importlib.util.find_spec("torchvision") is not None
    with tempfile.TemporaryDirectory() as tmp:
        cases = workloads(Path(tmp))
        header = (f"{'workload':<24}{'system':<14}{'median ms':>11}{'images/s':>10}"
                  f"{'PIL/this':>10}{'decode %':>10}{'cpu ms':>9}{'PIL/this cpu':>14}")
        sys.stdout.write(header + "\n" + "-" * len(header) + "\n")
        for case in cases:
            fns = _systems(case, with_torch)
            files = isinstance(case.images[0], Path)
            ms, cpu = _timed(fns, rounds=rounds, per_round=2)
            share = {"PIL+NumPy": ms.get("PIL decode", 0.0) / ms["PIL+NumPy"],
                     "jarvis": max(0.0, 1 - ms.get("jarvis decoded", 0.0) / ms["jarvis"])}
            for system in ["jarvis", "jarvis out=", "PIL+NumPy", "torchvision"]:
                if system not in ms:
                    continue
                decode = f"{share[system]:>10.0%}" if files and system in share else f"{'':>10}"
                sys.stdout.write(
                    f"{case.name:<24}{system:<14}{ms[system]:>11.1f}"
                    f"{len(case.images) / ms[system] * 1e3:>10.0f}"
                    f"{ms['PIL+NumPy'] / ms[system]:>10.2f}{decode}{cpu[system]:>9.1f}"
                    f"{cpu['PIL+NumPy'] / max(cpu[system], 1e-3):>14.2f}\n")
            sys.stdout.flush()
    return 0
