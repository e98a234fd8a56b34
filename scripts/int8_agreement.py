"""EfficientNet-Lite0 int8 against float on many photo views (issue #5's measurement), next to
onnxruntime's ``quantize_static`` calibrated on the same views.

    python scripts/int8_agreement.py [--views-seeds 2,3,5] [--update-seeds 3,5,6,7]

Prints confident / mean KL / overall top-1 agreement of int8 against float (calibration: 64
views, seed 1; evaluation: 200 views per seed), then the same after a classifier update
(``_fc`` ± 0.02, seed 4; calibration 32 views as in ``test_learning.py``) against onnxruntime
running float with the same delta (150 views per seed), and the load + calibrate + quantize CPU
time.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

import jarvis_performance as jp
from jarvis_performance.export import cached_export

# The photo views are the accuracy tests' fixture (tests/python/photos.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from photos import agreement, photos, views  # noqa: E402


def show(m: dict[str, float]) -> str:
    return f"confident {m['confident']:6.1%}  KL {m['kl']:.4f}  top-1 {m['top1']:6.1%}"


def batched(run, x: np.ndarray) -> np.ndarray:
    return np.concatenate([run(x[i:i + 50]) for i in range(0, len(x), 50)])


def float_session(path: Path, deltas: dict[str, np.ndarray]):
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name in deltas:
            value = numpy_helper.to_array(init) + deltas[init.name]
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def onnxruntime_int8(path: Path, calib: np.ndarray, out: Path):
    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {"input": batch}

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--views-seeds", default="2,3,5")
    parser.add_argument("--update-seeds", default="3,5,6,7")
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    path = cached_export("efficientnet_lite0", input_shape=(1, 3, 224, 224))
    images = photos()
    calib = views(images, 64, seed=1)
    seeds = [int(s) for s in args.views_seeds.split(",")]
    x = np.concatenate([views(images, 200, seed=s) for s in seeds])
    reference = batched(float_session(path, {}), x)

    start = time.process_time()
    rt = jp.Runtime.load(path, quantize="int8", calibration=calib)
    cpu = time.process_time() - start
    print(f"int8 vs float, {len(x)} views (seeds {seeds}), calibrated on 64")
    print(f"  jarvis       {show(agreement(reference, batched(rt.infer, x)))}"
          f"   (load+calibrate+quantize {cpu:.1f} s CPU)")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = onnxruntime_int8(path, calib, Path(tmp) / "qdq.onnx")
        print(f"  onnxruntime  {show(agreement(reference, batched(theirs, x)))}")

    seeds = [int(s) for s in args.update_seeds.split(",")]
    x = np.concatenate([views(images, 150, seed=s) for s in seeds])
    rt = jp.Runtime.load(path, quantize="int8", calibration=views(images, 32, seed=1))
    rng = np.random.default_rng(4)
    deltas = {n: (0.02 * rng.standard_normal(rt.weights(n).shape)).astype(np.float32)
              for n in ["_fc.weight", "_fc.bias"]}
    before = agreement(batched(float_session(path, {}), x), batched(rt.infer, x))
    rt.update(deltas)
    ours, reference = batched(rt.infer, x), batched(float_session(path, deltas), x)
    per_seed = [agreement(reference[i:i + 150], ours[i:i + 150])["top1"] for i in range(0, len(x), 150)]
    print(f"classifier update vs onnxruntime float + delta, {len(x)} views (seeds {seeds})")
    print(f"  before       {show(before)}")
    print(f"  after        {show(agreement(reference, ours))}   per seed "
          + " ".join(f"{t:.1%}" for t in per_seed))


if __name__ == "__main__":
    main()
