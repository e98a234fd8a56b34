"""Continual learning on a live INT8 model: the shipped digits CNN meets a shifted stream
(digits at 40 % contrast, as a dim camera gives them) and learns online while it serves.

Two ways to learn, each run on the int8 and on the float runtime, next to the same learning done
purely in PyTorch float:

* ``update``: a PyTorch copy of the model trains on each batch (SGD); the change of its weights
  is sent to the runtime as deltas (``rt.update``), applied and re-quantized in Rust;
* ``learn``: the runtime's own head learner (``rt.learn``) trains the classifier from the
  features the running model computes.

    python examples/continual_learning.py        (from the repository root, after `pip install .`)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import jarvis_performance as jp

MODELS = Path(__file__).resolve().parents[1] / "models"
EPOCHS = 10
BATCH = 32
LR_FULL = 3e-3
LR_HEAD = 0.05


def shifted(x: np.ndarray) -> np.ndarray:
    """The distribution shift: contrast down to 40 %."""
    return (0.4 * x).astype(np.float32)


def torch_copy(rt: jp.Runtime) -> nn.Sequential:
    """The digits CNN as PyTorch modules holding the runtime's current float weights. The
    exporter folded BatchNorm into the first convolution, so the copy has none."""
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 10),
    )
    state = {key: torch.from_numpy(np.array(rt.weights(name))) for key, name in ONNX_NAMES.items()}
    model.load_state_dict(state)
    return model.eval()


#: PyTorch parameter of the copy -> ONNX weight name in the shipped model.
ONNX_NAMES = {
    "0.weight": "onnx::Conv_26", "0.bias": "onnx::Conv_27",
    "2.weight": "features.3.weight", "2.bias": "features.3.bias",
    "5.weight": "features.6.weight", "5.bias": "features.6.bias",
    "9.weight": "classifier.weight", "9.bias": "classifier.bias",
}


def batches(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """The stream: ``EPOCHS`` shuffled passes over the shifted data, in batches."""
    rng = np.random.default_rng(seed)
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            ix = order[start:start + BATCH]
            yield x[ix], y[ix]


def accuracy(predict, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(predict(x)).argmax(1) == y).mean())


def learn_with_updates(stream_x, stream_y, runtimes: list[jp.Runtime]) -> nn.Sequential:
    """Full-model training (Adam) in a PyTorch copy; every step's weight change goes to each runtime."""
    model = torch_copy(runtimes[0]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR_FULL)
    for xb, yb in batches(stream_x, stream_y):
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        optimizer.step()
        deltas = {ONNX_NAMES[k]: (v - before[k]).numpy() for k, v in model.state_dict().items()}
        for rt in runtimes:
            rt.update(deltas)
    return model.eval()


def learn_head(stream_x, stream_y, runtimes: list[jp.Runtime]) -> nn.Sequential:
    """Head-only SGD: the runtimes' built-in learner, and the same steps in PyTorch."""
    model = torch_copy(runtimes[0])
    optimizer = torch.optim.SGD(model[9].parameters(), lr=LR_HEAD)
    for xb, yb in batches(stream_x, stream_y):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        optimizer.step()
        for rt in runtimes:
            rt.learn(xb, yb, lr=LR_HEAD)
    return model


def run() -> dict[str, dict[str, float]]:
    """Accuracy on the shifted held-out digits before and after each way of learning."""
    calib = np.load(MODELS / "digits_calib.npy")
    test_x = shifted(np.load(MODELS / "digits_test.npy"))
    test_y = np.load(MODELS / "digits_test_labels.npy")
    stream_x = shifted(calib)
    # The stream's labels: the calibration images are the first 256 training digits.
    stream_y = np.load(MODELS / "digits_calib_labels.npy")
    results: dict[str, dict[str, float]] = {}
    for how, learn in (("update", learn_with_updates), ("learn", learn_head)):
        fp32 = jp.Runtime.load(MODELS / "digits_cnn.onnx")
        int8 = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib)
        before = {"int8": accuracy(int8.infer, test_x, test_y),
                  "float": accuracy(fp32.infer, test_x, test_y)}
        model = learn(stream_x, stream_y, [int8, fp32])
        with torch.no_grad():
            torch_after = accuracy(lambda x: model(torch.from_numpy(x)).numpy(), test_x, test_y)
        results[how] = {
            "int8 before": before["int8"], "float before": before["float"],
            "int8 after": accuracy(int8.infer, test_x, test_y),
            "float after": accuracy(fp32.infer, test_x, test_y),
            "pytorch after": torch_after,
            "versions": float(int8.version),
        }
    return results


def main() -> None:
    results = run()
    print(f"{'learning':<8} {'int8 before':>11} {'int8 after':>10} {'float after':>11} "
          f"{'pytorch after':>13} {'versions':>8}")
    for how, r in results.items():
        print(f"{how:<8} {r['int8 before']:>11.4f} {r['int8 after']:>10.4f} "
              f"{r['float after']:>11.4f} {r['pytorch after']:>13.4f} {int(r['versions']):>8}")


if __name__ == "__main__":
    main()
