"""jarvis-performance: run ONNX models fast from Python, on a Rust runtime built on tract.

Load a model and run it::

    import numpy as np
    import jarvis_performance as jp

    rt = jp.Runtime.load("models/digits_cnn.onnx")
    logits = rt.infer(np.zeros((1, 1, 8, 8), np.float32))

Quantize it to INT8 with the project's own calibration pass::

    calib = np.load("models/digits_calib.npy")
    rt8 = jp.Runtime.load("models/digits_cnn.onnx", quantize="int8", calibration=calib)
    print(rt8.quantization_report())

Turn photos, files or camera frames into a model's input batch (in Rust, in parallel)::

    batch = jp.preprocess(["cat.jpg", frame], size=224, mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225))
Operations: ``rt.get_status()`` (CPU, memory, latency, throttle), ``max_cpu_percent=`` /
``rt.set_cpu_limit()`` (CPU cap), logs on the ``jarvis_performance`` logger, an HTTP service
(``python -m jarvis_performance.serve``), and pickling for distributed engines such as Ray.

Errors are raised as :class:`JarvisError` subclasses (and ``FileNotFoundError`` for missing files).
"""

from __future__ import annotations

import logging
import os

# The native module allocates through mimalloc, which reads its options when the module is
# loaded. By default it hands freed pages back to the kernel after 10 ms, and a model's large
# tensors, freed and allocated again within one inference, would fault back in zeroed on every
# call; keep them for a second instead (memory stays bounded by one inference's peak).
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "1000")
# With its arenas committed eagerly, mimalloc's resident memory crept up ~2 KB per inference
# (MobileNetV2 int8: +7 to +19 MB over 10,000 calls); committed on demand it stays flat, at the
# same speed (scripts/rss_growth.py).
os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")

from ._native import (  # noqa: E402 (the environment must be set first)
    CalibrationError,
    ConfigError,
    ImageError,
    InputError,
    JarvisError,
    ModelLoadError,
    Runtime,
    TensorInfo,
    UnsupportedOpError,
    UpdateError,
    __version__,
    get_preprocessing,
    preprocess,
    set_preprocessing,
)
from ._status import Status
from .dataset import Dataset

__all__ = [
    "CalibrationError",
    "ConfigError",
    "Dataset",
    "ImageError",
    "InputError",
    "JarvisError",
    "ModelLoadError",
    "Runtime",
    "Status",
    "TensorInfo",
    "UnsupportedOpError",
    "UpdateError",
    "__version__",
    "get_preprocessing",
    "preprocess",
    "set_preprocessing",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
