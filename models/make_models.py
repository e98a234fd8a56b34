"""Train and export the small models shipped in ``models/``.

Both are trained on scikit-learn's bundled handwritten-digits data (1,797 8×8 images, no download),
split 80/20 with a fixed seed, and exported with ``jarvis_performance.export.export_model``
(dynamic batch axis, verified against PyTorch). Run from the repository root::

    python models/make_models.py

Writes ``digits_cnn.onnx``, ``digits_mlp.onnx`` and the data files (see :func:`save_data`), and
prints held-out accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from jarvis_performance.export import export_model

HERE = Path(__file__).resolve().parent
SEED = 0


class DigitsCNN(nn.Module):
    """Three 3×3 convolutions (with BatchNorm and ReLU) and a linear classifier, 1×8×8 → 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class DigitsMLP(nn.Module):
    """A three-layer perceptron on the 64 flattened pixels, 64 → 10."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits data as float32 images in [0, 1]: ``x_train, x_test, y_train, y_test``."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    split: list[np.ndarray] = train_test_split(
        images, data.target, test_size=0.2, random_state=SEED, stratify=data.target
    )
    return split[0], split[1], split[2], split[3]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int) -> nn.Module:
    """Full-batch-shuffled Adam training with cross-entropy."""
    torch.manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y).long()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(xs)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def save_data(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> None:
    """``digits_sample.npy`` (8 held-out images, 8×1×8×8 float32 in [0, 1]) and its labels;
    ``digits_calib.npy`` (the first 256 training images, for INT8 calibration) and its labels
    (the continual-learning example's stream);
    ``digits_test.npy`` and ``digits_test_labels.npy`` (the 360 held-out images)."""
    np.save(HERE / "digits_sample.npy", x_test[:8])
    np.save(HERE / "digits_sample_labels.npy", y_test[:8].astype(np.int64))
    np.save(HERE / "digits_calib.npy", x_train[:256])
    np.save(HERE / "digits_calib_labels.npy", y_train[:256].astype(np.int64))
    np.save(HERE / "digits_test.npy", x_test)
    np.save(HERE / "digits_test_labels.npy", y_test.astype(np.int64))


def main() -> None:
    x_train, x_test, y_train, y_test = digits()
    torch.manual_seed(SEED)
    cnn = train(DigitsCNN(), x_train, y_train, epochs=30)
    torch.manual_seed(SEED)
    mlp = train(nn.Sequential(nn.Flatten(), DigitsMLP()), x_train, y_train, epochs=40)
    flat_mlp = mlp[1]  # export the MLP on flat 64-pixel vectors
    flat_train, flat_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    cnn_result = export_model(cnn, HERE / "digits_cnn.onnx", input_shape=(1, 1, 8, 8))
    mlp_result = export_model(flat_mlp, HERE / "digits_mlp.onnx", input_shape=(1, 64))
    save_data(x_train, y_train, x_test, y_test)
    print(f"digits_cnn: held-out accuracy {accuracy(cnn, x_test, y_test):.4f} "
          f"(train {accuracy(cnn, x_train, y_train):.4f}), export diff {cnn_result.max_abs_diff:.2e}")
    print(f"digits_mlp: held-out accuracy {accuracy(flat_mlp, flat_test, y_test):.4f} "
          f"(train {accuracy(flat_mlp, flat_train, y_train):.4f}), "
          f"export diff {mlp_result.max_abs_diff:.2e}")


if __name__ == "__main__":
    main()
