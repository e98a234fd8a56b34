"""`Runtime.save(path, learnable=False)`: a deployable int8 file without float masters and
calibration statistics, about a quarter of the float model, that reloads bit-identically, runs
in onnxruntime, and refuses updates with a clear error."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS

import jarvis_performance as jp
from photos import photos, views


@pytest.fixture(scope="module")
def digits_int8() -> jp.Runtime:
    return jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8",
                           calibration=np.load(MODELS / "digits_calib.npy"))


def test_deployable_file_reloads_bit_identically_and_refuses_updates(digits_int8: jp.Runtime,
                                                                     tmp_path: Path) -> None:
    x = np.load(MODELS / "digits_test.npy")
    path = tmp_path / "digits.deploy.onnx"
    digits_int8.save(path, learnable=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    float_names = {t.name for t in onnx.load(str(MODELS / "digits_cnn.onnx")).graph.initializer}
    kept = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    weights = {n for n in float_names if n.endswith("weight")}
    assert weights and not weights & kept, "the float master weights are left out"
    assert not any(name.endswith(("_jp_input_means", "_jp_input_moments")) for name in kept)

    reloaded = jp.Runtime.load(path)
    assert reloaded.quantized and not reloaded.learnable and digits_int8.learnable
    np.testing.assert_array_equal(reloaded.infer(x), digits_int8.infer(x))
    assert all(r["int8"] for r in reloaded.quantization_report())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": x})[0]
    ours = digits_int8.infer(x)
    assert float((theirs * ours).sum() / np.linalg.norm(theirs) / np.linalg.norm(ours)) > 0.9999

    before = reloaded.version
    with pytest.raises(jp.UpdateError, match="deployable int8 file"):
        reloaded.update({"fc.bias": np.zeros(10, np.float32)})
    with pytest.raises(jp.UpdateError, match="deployable int8 file"):
        reloaded.learn(x[:8], np.zeros(8, np.int64))
    assert reloaded.version == before
    np.testing.assert_array_equal(reloaded.infer(x), ours)
    with pytest.raises(jp.JarvisError, match="learnable=False"):
        reloaded.save(tmp_path / "learnable.onnx")
    with pytest.raises(jp.ConfigError, match="deployable int8 file"):
        jp.Runtime.load(path, quantize="int8", calibration=np.load(MODELS / "digits_calib.npy"))

    # It saves and pickles as the file it came from.
    assert reloaded.to_bytes(learnable=False) == path.read_bytes()
    copy = pickle.loads(pickle.dumps(reloaded))
    assert not copy.learnable
    np.testing.assert_array_equal(copy.infer(x), ours)


def test_efficientnet_deployable_file_is_under_30_percent_of_float(
        model_path: Callable[[str], Path], tmp_path: Path) -> None:
    path = model_path("efficientnet_lite0")
    images = photos()
    rt = jp.Runtime.load(path, quantize="int8", calibration=views(images, 16, seed=1))
    x = views(images, 8, seed=2)
    learnable, deployable = tmp_path / "effnet.int8.onnx", tmp_path / "effnet.deploy.onnx"
    rt.save(learnable)
    rt.save(deployable, learnable=False)
    float_size = path.stat().st_size
    ratio = deployable.stat().st_size / float_size
    print(f"float {float_size} B, int8 {learnable.stat().st_size} B, deployable "
          f"{deployable.stat().st_size} B ({ratio:.1%} of float)")
    assert ratio <= 0.30
    expected = rt.infer(x)
    np.testing.assert_array_equal(jp.Runtime.load(deployable).infer(x), expected)
    np.testing.assert_array_equal(jp.Runtime.load(learnable).infer(x), expected)
