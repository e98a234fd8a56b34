"""Natural photos shipped inside installed packages, and reproducible views of them.

The accuracy checks need real images without a download: scikit-image's ``skimage/data``,
scikit-learn's sample images and matplotlib's sample data carry a dozen photographs. ``views``
turns them into many distinct ImageNet-style inputs (random crops, flips and scales), so
calibration and evaluation can use different views. Needs Pillow, and whichever of
scikit-image, scikit-learn and matplotlib are installed.
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


def views(images: list[np.ndarray], count: int, *, seed: int, size: int = 224) -> np.ndarray:
    """``count`` normalised NCHW float32 views: each a random square crop (40–100 % of the
    shorter side), flipped half the time, resized to ``size`` with bilinear filtering."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    batch = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        image = images[int(rng.integers(len(images)))]
        h, w = image.shape[:2]
        side = int(min(h, w) * rng.uniform(0.4, 1.0))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = Image.fromarray(image[top:top + side, left:left + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0
        batch[i] = ((pixels - MEAN) / STD).transpose(2, 0, 1)
    return batch


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (N, classes) array."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    result: np.ndarray = e / e.sum(1, keepdims=True)
    return result


def agreement(float_logits: np.ndarray, quantized_logits: np.ndarray) -> dict[str, float]:
    """How closely a quantized classifier follows its float original on the same inputs:
    ``confident``, top-1 agreement where float's top probability is at least 0.5 (many views are
    near-ties even for float); ``kl``, the mean KL divergence from float's softmax to the
    quantized one; ``top1``, top-1 agreement over all inputs."""
    p, q = softmax(float_logits), softmax(quantized_logits)
    same = p.argmax(1) == q.argmax(1)
    confident = p.max(1) >= 0.5
    kl = (p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(1).mean()
    return {"confident": float(same[confident].mean()), "kl": float(kl), "top1": float(same.mean())}
