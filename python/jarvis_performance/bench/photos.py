"""Natural photos shipped inside installed packages: the frames and files the vision benchmark
preprocesses, with no download (scikit-image's ``skimage/data``, scikit-learn's sample images
and matplotlib's sample data carry a dozen photographs). The accuracy tests' views of them live
with the tests (``tests/python/photos.py``). Needs Pillow, and whichever of scikit-image,
scikit-learn and matplotlib are installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

#: ImageNet normalisation used by torchvision and EfficientNet-Lite0's PyTorch port.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

_SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "retina.jpg", "hubble_deep_field.jpg", "camera.png", "coins.png",
    "moon.png", "grass.png", "gravel.png", "brick.png",
)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def photos() -> list[np.ndarray]:
    """Every photo found, as H×W×3 uint8 RGB arrays (grey ones replicated to 3 channels)."""
    from PIL import Image

    paths: list[Path] = []
    if (skimage := _package_dir("skimage")) is not None:
        paths += [skimage / "data" / name for name in _SKIMAGE_PHOTOS]
    if (mpl := _package_dir("matplotlib")) is not None:
        paths.append(mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths if p.exists()]
    if importlib.util.find_spec("sklearn") is not None:
        from sklearn.datasets import load_sample_images

        images += list(load_sample_images().images)
    return images
