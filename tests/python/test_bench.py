"""The benchmark commands run end to end on the shipped digits models and report what they claim
(speed itself is not asserted: these are not timed tests)."""

from __future__ import annotations

import re

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from conftest import REPO

from jarvis_performance.bench import main
from jarvis_performance.bench.prepare import (
    bench_model,
    calibration_data,
    ort_int8_layers,
    ort_int8_path,
)
from jarvis_performance.bench.worker import SystemSpec, Worker

SYSTEMS = ["PyTorch eager fp32", "onnxruntime fp32", "onnxruntime int8", "jarvis fp32",
           "jarvis int8"]
FAST = ["--rounds", "2", "--round-ms", "20"]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Shipped models resolve from the repository root; onnxruntime's int8 file goes to a
    fresh cache."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("JARVIS_MODEL_CACHE", str(tmp_path / "cache"))


def test_table_has_every_system_with_figures_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", "digits_cnn", "--batch", "1", "2", "--threads", "1", "--int8",
                 "--torch", *FAST]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("model"))
    for column in ("median ms", "p99 ms", "peak RSS MB", "weights MB"):
        assert column in out[header]
    # jarvis may keep the 1-channel stem float when its int8 op measures slower here (a near
    # tie: 0.023 against 0.024 ms on a quiet machine).
    counts = re.search(r"digits_cnn: Conv/Gemm/MatMul layers in int8 \(float\): onnxruntime 4 \(0\), "
                       r"jarvis (\d) \((\d)\)", "\n".join(out[:header]))
    assert counts and int(counts[1]) + int(counts[2]) == 4 and int(counts[1]) >= 3, out[:header]
    body = out[header + 2:]
    starts = [i for i, line in enumerate(body) if line.startswith("digits_cnn")]
    assert [body[i].split()[1:3] for i in starts] == [["1", "1"], ["2", "1"]]
    for start in starts:
        block = body[start:start + 7]
        medians, weights = {}, {}
        for system, line in zip(SYSTEMS, block[:5], strict=True):
            assert line[32:52].strip() == system, line
            median, p99, rss, weights[system] = (float(v) for v in line[52:].split()[:4])
            assert 0 < median <= p99 and rss > 10, line
            medians[system] = median
        # int8 weights about a quarter of the float ones (biases stay float).
        float_mb = weights["onnxruntime fp32"]
        assert weights["jarvis fp32"] == float_mb and weights["PyTorch eager fp32"] >= float_mb
        assert weights["jarvis int8"] < 0.35 * float_mb and weights["onnxruntime int8"] < 0.35 * float_mb
        # The jarvis int8 line names the instruction set its kernels ran on.
        assert block[4].split()[-1] in {"avx512_vnni", "avx_vnni", "avx2", "scalar"}, block[4]
        assert block[5].strip().startswith("ratios: jarvis int8 / onnxruntime int8 ")
        ratio = float(block[5].split("onnxruntime int8 ")[1].split(";")[0])
        expected = medians["jarvis int8"] / medians["onnxruntime int8"]
        assert ratio == pytest.approx(expected, rel=0.25, abs=0.02)  # table rounds the medians
        assert "headline: inference vs PyTorch eager fp32" in block[6] and "seed claims 300 → 60 ms, 5×" in block[6]


def test_json_rows_one_process_per_system(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", "digits_mlp", "--batch", "4", "--threads", "1", "--int8", "--json",
                 *FAST]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["machine"]["cores"] == os.cpu_count()
    (row,) = data["rows"]
    assert (row["model"], row["batch"], row["threads"]) == ("digits_mlp", 4, 1)
    results = row["results"]
    assert list(results) == ["onnxruntime fp32", "onnxruntime int8", "jarvis fp32", "jarvis int8"]
    assert all(r["error"] is None and r["samples"] >= 2 for r in results.values())
    assert results["jarvis int8"]["isa"] in {"avx512_vnni", "avx_vnni", "avx2", "scalar"}
    assert results["jarvis fp32"]["isa"] is None
    pids = {r["pid"] for r in results.values()}
    assert len(pids) == 4 and os.getpid() not in pids
    ratios = row["ratios"]
    assert ratios["jarvis int8 / onnxruntime int8"] == (
        results["jarvis int8"]["median_ms"] / results["onnxruntime int8"]["median_ms"])
    assert ratios["jarvis int8 / jarvis fp32"] == (
        results["jarvis int8"]["median_ms"] / results["jarvis fp32"]["median_ms"])
    float_mb = results["jarvis fp32"]["weights_mb"]
    assert float_mb == pytest.approx((64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10) * 4 / 1e6)
    assert results["jarvis int8"]["weights_mb"] < 0.35 * float_mb
    assert results["jarvis int8"]["held_mb"] > 0


def test_onnxruntime_int8_file_is_preprocessed_and_runs_int8_kernels(tmp_path: Path) -> None:
    model = bench_model("digits_cnn")
    calib = calibration_data(model)
    path = ort_int8_path(model, calib, cache_dir=tmp_path)
    # A new cache key: files made without pre-processing (``*.ort-int8.onnx``) are not reused.
    assert "-pre-" in path.name and not path.name.endswith(".ort-int8.onnx")
    assert ort_int8_path(model, calib, cache_dir=tmp_path) == path
    assert ort_int8_path(model, calib[:16], cache_dir=tmp_path) != path
    nodes = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Identity" not in nodes and nodes.count("QuantizeLinear") >= 4
    # Every conv/linear layer runs as onnxruntime's int8 kernels, none as float.
    assert ort_int8_layers(path, tmp_path) == (4, 0)


def _shared_bias_model(path: Path) -> None:
    """Two convolutions whose bias is one constant reached through two ``Identity`` nodes, as
    torch's exporter writes deduplicated bias tensors (ResNet18's)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 4, 3, 3)), ("w2", (8, 8, 3, 3)))]
    nodes = [helper.make_node("Identity", ["bias"], ["b1"]),
             helper.make_node("Identity", ["bias"], ["b2"]),
             helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["output"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "shared_bias",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8, 8, 8])],
        [*weights, numpy_helper.from_array(np.zeros(8, np.float32), "bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_onnxruntime_int8_keeps_the_quantization_that_runs_every_layer_in_int8(
        tmp_path: Path) -> None:
    # Pre-processing leaves this graph's second convolution in float (the shared bias is not
    # quantized for it); quantizing without pre-processing fuses both.
    _shared_bias_model(tmp_path / "shared.onnx")
    model = bench_model(str(tmp_path / "shared.onnx"))
    assert model.torch_spec is None and model.sample_shape == (4, 8, 8)
    path = ort_int8_path(model, calibration_data(model), cache_dir=tmp_path)
    assert ort_int8_layers(path, tmp_path) == (2, 0)


def test_worker_reports_errors_instead_of_crashing() -> None:
    worker = Worker(SystemSpec(system="jarvis fp32", model="no/such/model.onnx",
                               input_name="input", shape=(1, 64), threads=1))
    try:
        assert worker.error is not None and "no/such/model.onnx" in worker.error
        assert worker.run(3) == []
    finally:
        worker.close()


def test_calibration_is_shared_and_fixed() -> None:
    model = bench_model("digits_cnn")
    a, b = calibration_data(model), calibration_data(model)
    assert a.shape == (32, 1, 8, 8) and np.array_equal(a, b)


def test_learning_bench_times_update_and_learn(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--learning", "--models", "digits_cnn", "--rounds", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert "update ms" in lines[0] and "learn ms" in lines[0]
    rows = [line.split() for line in lines[1:]]
    assert [r[1] for r in rows] == ["int8", "float"]
    assert all(float(cell) > 0 for r in rows for cell in r[2:])


def test_vision_bench_reports_every_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--vision", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "PIL/this" in out.splitlines()[0]
    for workload in ("frames 64 photos", "frames 8 1080p", "files 64 PNG", "files 64 JPEG",
                     "files 16 JPEG 1080p"):
        rows = [line for line in out.splitlines() if line.startswith(workload)]
        assert {"jarvis", "PIL+NumPy"} <= {r[24:38].strip() for r in rows}, workload
