"""Hostile inputs and faults: malformed models, a panic at the FFI boundary, NaN/Inf inputs,
memory limits, tampered and half-written saved files, and kill -9 in the middle of a save."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import jarvis_performance as jp
from conftest import MODELS

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def model_bytes(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto] | None = None,
                initializers: list[onnx.TensorProto] | None = None) -> bytes:
    graph = helper.make_graph(nodes, "hostile", inputs or [X], [Y], initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def absurd_initializer() -> bytes:
    big = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**40])  # 4 TB, no data
    return model_bytes([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[big])


def short_raw_data() -> bytes:
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.raw_data = w.raw_data[:7]
    return model_bytes([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[w])


HOSTILE_MODELS = {
    "cycle": (lambda: model_bytes([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                                   helper.make_node("Relu", ["a"], ["y"])]), "Loop detected"),
    "missing initializer": (lambda: model_bytes([helper.make_node("Add", ["x", "w"], ["y"])]), "nothing produces: w"),
    "absurd initializer dims (2^40)": (absurd_initializer, "out of bounds"),
    "initializer data shorter than its shape": (short_raw_data, "does not match shape"),
    "expand to 2^40 x 2^20": (lambda: model_bytes(
        [helper.make_node("Expand", ["x", "s"], ["y"])],
        initializers=[numpy_helper.from_array(np.array([2**40, 2**20], np.int64), "s")]), "y"),
    "attribute of the wrong type": (lambda: model_bytes([helper.make_node("Transpose", ["x"], ["y"], perm="abc")]),
                                    "expected list of ints"),
    "a TensorProto, not a model": (lambda: numpy_helper.from_array(np.ones(4, np.float32), "t").SerializeToString(),
                                   "not a valid ONNX protobuf"),
    "a GraphProto, not a model": (lambda: helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [X], [Y])
                                  .SerializeToString(), "not a valid ONNX protobuf"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MODELS))
def test_malformed_models_fail_fast_with_bounded_memory(case: str, tmp_path: Path) -> None:
    make, message = HOSTILE_MODELS[case]
    path = tmp_path / "hostile.onnx"
    path.write_bytes(make())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(jp.ModelLoadError, match=message):
        jp.Runtime.load(path)
    assert time.perf_counter() - start < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000  # KB


def test_a_panic_at_the_boundary_becomes_jarvis_error() -> None:
    from jarvis_performance import _native

    with pytest.raises(jp.JarvisError, match="panicked: deliberate"):
        _native._panic_for_tests("deliberate")
    # The process and the library are fine afterwards.
    rt = jp.Runtime.load(MODELS / "digits_cnn.onnx")
    assert rt.infer(np.load(MODELS / "digits_sample.npy")).shape == (8, 10)


def test_caught_panics_print_nothing_and_are_logged(capfd: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Rust's default panic hook writes every panic to stderr, even one the boundary turns into
    an exception; the module's hook keeps stderr clean and logs where it happened instead. Both
    a deliberate panic and a real one inside tract (the fuzzer's Conv) are checked."""
    from jarvis_performance import _native

    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="jarvis_performance"):
        with pytest.raises(jp.JarvisError, match="a native call panicked: deliberate quiet panic"):
            _native._panic_for_tests("deliberate quiet panic")
        with pytest.raises(jp.ModelLoadError, match="panicked.*malformed"):
            jp.Runtime.load(MODELS.parent / "tests" / "data" / "fuzz-load-conv-kernel-rank.onnx")
    out, err = capfd.readouterr()
    assert "panicked" not in out + err and "deliberate" not in out + err, err
    records = [r for r in caplog.records if r.name == "jarvis_performance.panic"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.DEBUG], records
    # First lines: a backtrace follows when RUST_BACKTRACE=1.
    first, second = (r.getMessage().splitlines()[0] for r in records)
    assert "a native call panicked at src/python/mod.rs:" in first, first
    assert first.endswith("deliberate quiet panic (raised as an error)"), first
    assert "panicked at " in second and "tract" in second, second


def test_nan_and_inf_inputs() -> None:
    """By default NaN/Inf in a float input raise InputError naming where: tract's ReLU turns a
    NaN into 0, so it would otherwise pass silently (onnxruntime propagates it). With
    ``allow_non_finite=True`` they go through: float keeps tract's IEEE behaviour, int8 layers
    saturate (+Inf to the top code, -Inf and NaN to the bottom one) and outputs stay finite."""
    x = np.load(MODELS / "digits_sample.npy").copy()
    x[0, 0, 0, 0], x[1, 0, 3, 3], x[2, 0, 5, 5] = np.nan, np.inf, -np.inf
    calib = np.load(MODELS / "digits_calib.npy")
    for rt in (jp.Runtime.load(MODELS / "digits_cnn.onnx"),
               jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib)):
        with pytest.raises(jp.InputError, match="NaN or Inf at flat index 0"):
            rt.infer(x)
    out = jp.Runtime.load(MODELS / "digits_cnn.onnx", allow_non_finite=True).infer(x)
    assert np.isnan(out[1]).all() and np.isfinite(out[3:]).all()
    # Every layer int8, the stem too (its int8 op may measure slower than float at this size).
    rt8 = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib,
                          allow_non_finite=True, speed_fallback=False)
    out8 = rt8.infer(x)
    assert np.isfinite(out8).all()
    clean = x.copy()
    clean[0, 0, 0, 0], clean[2, 0, 5, 5] = 0.0, 0.0  # what NaN and -Inf saturate to (zero point 0)
    np.testing.assert_array_equal(out8[[0, 2]], rt8.infer(clean)[[0, 2]])


def test_memory_limit_refuses_before_allocating() -> None:
    rt = jp.Runtime.load(MODELS / "digits_cnn.onnx", max_memory_mb=1)
    assert rt.infer(np.zeros((8, 1, 8, 8), np.float32)).shape == (8, 10)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(jp.ConfigError, match="over the limit of 1 MB"):
        rt.infer(np.zeros((4096, 1, 8, 8), np.float32))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KB
    with pytest.raises(jp.ConfigError, match="max_memory_mb"):
        jp.Runtime.load(MODELS / "digits_cnn.onnx", max_memory_mb=-1)


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_tampered_or_truncated_saved_files_are_refused(precision: str, tmp_path: Path) -> None:
    calib = np.load(MODELS / "digits_calib.npy")
    rt = (jp.Runtime.load(MODELS / "digits_cnn.onnx") if precision == "float" else
          jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8", calibration=calib))
    rt.update({"classifier.bias": np.full(10, 0.1, np.float32)})
    path = tmp_path / "saved.onnx"
    rt.save(path)
    jp.Runtime.load(path)  # intact: loads
    model = onnx.load(str(path))
    weight = next(i for i in model.graph.initializer if i.name == "features.6.weight")
    values = numpy_helper.to_array(weight).copy()
    values.flat[123] += 0.001
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    with pytest.raises(jp.ModelLoadError, match="checksum"):
        jp.Runtime.load(tampered)
    data = path.read_bytes()
    for fraction in (0.25, 0.5, 0.9, 0.999):
        half = tmp_path / f"half-{fraction}.onnx"
        half.write_bytes(data[:int(len(data) * fraction)])
        with pytest.raises(jp.ModelLoadError):
            jp.Runtime.load(half)


SAVER = """
import sys, numpy as np, jarvis_performance as jp
rt = jp.Runtime.load(sys.argv[1])
names = rt.weight_names
for version in range(1, 10_000):
    rt.update({"_fc.bias": np.full(1000, 1e-3, np.float32)})
    print(version, flush=True)
    rt.save(sys.argv[2])
"""


def test_kill_9_while_saving_leaves_a_loadable_file(model_path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A process saving EfficientNet-Lite0 (18 MB) over and over is killed at random moments:
    the file on disk always loads, with a version the process had reached."""
    target = tmp_path / "model.onnx"
    rng = np.random.default_rng(0)
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(model_path("efficientnet_lite0")), str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        reached = 0
        for _ in range(2 + attempt):
            reached = int(proc.stdout.readline())
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not target.exists():
            continue  # killed before the first rename: nothing was promised yet
        rt = jp.Runtime.load(target)
        assert 1 <= rt.version <= reached + 2
    assert target.exists()


def test_fuzzer_finding_conv_kernel_rank_is_a_load_error() -> None:
    """Found by ``cargo fuzz run load_model``: a Conv whose kernel rank differs from its input's
    makes tract panic (index out of bounds in padding); loading reports it as the file's fault."""
    path = MODELS.parent / "tests" / "data" / "fuzz-load-conv-kernel-rank.onnx"
    with pytest.raises(jp.ModelLoadError, match="panicked.*malformed"):
        jp.Runtime.load(path)
    # The second fuzzing run found the same bytes through the other ways in, which reported an
    # internal error (JarvisError) instead: in memory, and on the int8 path.
    with pytest.raises(jp.ModelLoadError, match="panicked.*malformed"):
        jp.Runtime.from_bytes(path.read_bytes())
    with pytest.raises(jp.ModelLoadError, match="panicked.*malformed"):
        jp.Runtime.load(path, quantize="int8", calibration=np.load(MODELS / "digits_calib.npy"))
