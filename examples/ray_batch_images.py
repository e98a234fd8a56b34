"""Batch inference over a folder of images with Ray Data, one jarvis Runtime per worker.

    python examples/ray_batch_images.py                 # local Ray (2 CPUs), digits written as PNGs
    python examples/ray_batch_images.py FOLDER --address auto   # an existing Ray cluster

Ray schedules the work; jarvis only supplies the model. The Runtime is built once here
(int8-quantized with calibration data that stays on this machine) and shipped to the workers
pickled by its saved bytes: each actor of the pool unpickles its own copy, without calibration
data, bit-identical to this one. Every worker node needs ``jarvis-performance`` installed (or a
``runtime_env`` that installs it) and must see FOLDER (a shared file system or an ``s3://`` path).

Prints one line: images, workers, accuracy against the labels in the file names, agreement with
this process's runtime, images per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

import jarvis_performance as jp

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


class Classifier:
    """The callable class Ray Data instantiates once per actor: it holds that worker's Runtime."""

    def __init__(self, runtime: jp.Runtime) -> None:
        self.runtime = runtime  # arrived pickled (its bytes); unpickled once per worker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = to_input(np.stack(list(batch["image"])))
        logits = np.asarray(self.runtime.infer(x))
        return {"path": batch["path"], "label": logits.argmax(1), "score": logits.max(1)}


def to_input(images: np.ndarray) -> np.ndarray:
    """8x8 grayscale uint8 images (N, 8, 8) -> the digits CNN's input (N, 1, 8, 8) in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


def write_digits(folder: Path) -> None:
    """The held-out digits as PNG files named ``<index>_<label>.png``."""
    images = np.load(MODELS / "digits_test.npy")[:, 0]
    labels = np.load(MODELS / "digits_test_labels.npy")
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        pixels = np.round(image * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}_{label}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="images named <anything>_<label>.png")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    calibration = np.load(MODELS / "digits_calib.npy")
    # One operator thread per worker: Ray gives each actor one CPU and runs several actors.
    runtime = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8",
                              calibration=calibration, threads=1)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or tmp
        if args.folder is None:
            write_digits(Path(tmp))
        start = time.perf_counter()
        dataset = ray.data.read_images(folder, mode="L", include_paths=True)
        predictions = dataset.map_batches(
            Classifier,
            fn_constructor_args=(runtime,),
            batch_size=64,
            compute=ray.data.ActorPoolStrategy(size=args.workers),
            # Half a CPU each in Ray's accounting: on a 2-CPU local Ray, two whole-CPU actors
            # would leave none for the tasks reading the images, and the pipeline would stall.
            num_cpus=0.5,
        )
        rows = predictions.take_all()
        elapsed = time.perf_counter() - start
        rows.sort(key=lambda r: str(r["path"]))
        truth = np.array([int(Path(str(r["path"])).stem.rsplit("_", 1)[1]) for r in rows])
        got = np.array([int(r["label"]) for r in rows])
        # The same images through this process's runtime: the workers' copies must agree.
        images = np.stack([np.asarray(Image.open(Path(folder) / Path(str(r["path"])).name))
                           for r in rows])
        here = np.asarray(runtime.infer(to_input(images))).argmax(1)
    ray.shutdown()
    print(f"{len(rows)} images, {args.workers} workers, accuracy {(got == truth).mean():.4f}, "
          f"agreement with the local runtime {(got == here).mean():.4f}, "
          f"{len(rows) / elapsed:.0f} images/s (Ray start-up of the actors included)")


if __name__ == "__main__":
    main()
