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
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import conv_batchnorm_classifier, save

import jarvis_performance as jp
from photos import photos, views


@pytest.fixture(scope="module")
def digits_int8() -> jp.Runtime:
    # Every layer int8 (the test checks that no float weight is left), whatever the timing.
    return jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8",
                           calibration=np.load(MODELS / "digits_calib.npy"), speed_fallback=False)


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


def shared_bias_convs(path: Path) -> Path:
    """``x`` [batch, 3, 12, 12] → Conv(8) → Relu → Conv(8) → Relu → GlobalAveragePool, both
    convolutions reading one bias initializer (as PyTorch's exporter leaves equal constants)."""
    rng = np.random.default_rng(3)
    initializers = [
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name)
        for name, shape in [("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)), ("b", (8,))]
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2", "b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("GlobalAveragePool", ["r2"], ["y"], name="pool"),
        ],
        "shared_bias_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 1, 1])],
        initializer=initializers,
    )
    return save(graph, path)


@pytest.mark.parametrize("builder", [conv_batchnorm_classifier, shared_bias_convs])
def test_layers_beyond_update_slots_are_saved_with_the_runtimes_numbers(
        builder: Callable[[Path], Path], tmp_path: Path) -> None:
    """A convolution with a BatchNormalization folded in, or with a bias another layer shares,
    is saved as the runtime computes it: its codes, scales and bias in the ONNX weight's place
    (the BatchNormalization left out of the graph), so the deployable file keeps no float
    weight of it, onnxruntime runs what this runtime does, and both files reload bit-identically."""
    path = builder(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    shape = (4, 3, 16, 16) if builder is conv_batchnorm_classifier else (4, 3, 12, 12)
    calibration = rng.uniform(-1, 1, (4, *shape[1:])).astype(np.float32)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    rt = jp.Runtime.load(path, quantize="int8", calibration=calibration)
    assert all(r["int8"] for r in rt.quantization_report())
    expected = rt.infer(x)
    learnable, deployable = tmp_path / "model.int8.onnx", tmp_path / "model.deploy.onnx"
    rt.save(learnable)
    rt.save(deployable, learnable=False)
    original = onnx.load(str(path))
    convs = [n.name for n in original.graph.node if n.op_type == "Conv"]
    for saved in (learnable, deployable):
        model = onnx.load(str(saved))
        onnx.checker.check_model(model)
        assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
        for node in (n for n in model.graph.node if n.name in convs):
            assert node.input[1].endswith("_jp_dq"), f"{saved.name}: {node.name} reads float weights"
        reloaded = jp.Runtime.load(saved)
        np.testing.assert_array_equal(reloaded.infer(x), expected)
        theirs = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        cosine = float((theirs * expected).sum() / np.linalg.norm(theirs) / np.linalg.norm(expected))
        assert cosine > 0.9999, f"{saved.name}: onnxruntime cosine {cosine}"
    kept = {t.name for t in onnx.load(str(deployable)).graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT}
    floats = {t.name for t in original.graph.initializer}
    conv_weights = {n.input[1] for n in original.graph.node if n.op_type == "Conv"}
    assert not conv_weights & kept, "the float conv weights are left out"
    assert not {n for n in floats if n.startswith("bn.")} & kept, "so are the BatchNorm's"
    # The learnable file restores the float graph (BatchNorm included) and its masters.
    reloaded = jp.Runtime.load(learnable)
    assert reloaded.learnable
    for name in floats:
        np.testing.assert_array_equal(reloaded.weights(name), rt.weights(name))
