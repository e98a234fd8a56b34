"""Test fixture: reproducible ImageNet-style views of the natural photos shipped inside installed
packages, and how closely a quantized classifier follows float on them.

``views`` turns the dozen photos (loaded by :func:`jarvis_performance.bench.photos.photos`, which
the vision benchmark shares) into many distinct inputs (random crops, flips and scales), so
calibration and evaluation can use different views. Needs Pillow.
"""

from __future__ import annotations

import numpy as np

from jarvis_performance.bench.photos import MEAN, STD, photos

__all__ = ["MEAN", "STD", "agreement", "photos", "softmax", "views"]


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
