"""The ``jarvis-perf`` command (the console script installed with the package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS

import jarvis_performance as jp

CLI = shutil.which("jarvis-perf")


def jarvis_perf(*args: str) -> subprocess.CompletedProcess[str]:
    assert CLI, "jarvis-perf is not on PATH: install the package (pip install .)"
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_inspect_lists_interface_ops_and_parameters() -> None:
    result = jarvis_perf("inspect", str(MODELS / "digits_cnn.onnx"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "input: float32 [?, 1, 8, 8]" in out
    assert "output: float32 [?, 10]" in out
    assert "3  Conv" in out and "1  Gemm" in out
    assert "parameters 23946" in out


def test_run_writes_the_same_output_as_the_python_api(tmp_path: Path) -> None:
    out = tmp_path / "logits.npy"
    sample = MODELS / "digits_sample.npy"
    result = jarvis_perf("run", str(MODELS / "digits_cnn.onnx"), "--input", f"input={sample}",
                         "--output", str(out))
    assert result.returncode == 0, result.stderr
    expected = jp.Runtime.load(MODELS / "digits_cnn.onnx").infer(np.load(sample))
    np.testing.assert_array_equal(np.load(out), expected)
    labels = np.load(MODELS / "digits_sample_labels.npy")
    assert (np.load(out).argmax(1) == labels).mean() >= 0.75


def test_bench_prints_median_and_p99() -> None:
    result = jarvis_perf("bench", str(MODELS / "digits_mlp.onnx"), "--batch", "4",
                         "--threads", "1", "--iterations", "20")
    assert result.returncode == 0, result.stderr
    assert "batch 4, 1 thread(s), inputs [4, 64]" in result.stdout
    assert "median" in result.stdout and "p99" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "missing.onnx"], "model file not found: missing.onnx"),
        (["run", "MODEL", "--input", "image=x.npy"], 'the model has no input "image"'),
        (["run", "MODEL", "--input", "input=missing.npy"], "opening missing.npy"),
        (["bench", "MODEL", "--threads", "0"], "invalid option threads"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(args: list[str], message: str) -> None:
    args = [str(MODELS / "digits_cnn.onnx") if a == "MODEL" else a for a in args]
    result = jarvis_perf(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jarvis-perf: error: "), result.stderr
    assert message in lines[0]


def test_wrong_dtype_npy_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ints.npy"
    np.save(bad, np.zeros((1, 1, 8, 8), np.int64))
    result = jarvis_perf("run", str(MODELS / "digits_cnn.onnx"), "--input", str(bad))
    assert result.returncode == 1
    assert "as a float32 array" in result.stderr



def test_eval_reports_int8_against_float_and_labels() -> None:
    result = jarvis_perf("eval", str(MODELS / "digits_cnn.onnx"), "--calib", str(MODELS / "digits_calib.npy"),
                         "--data", str(MODELS / "digits_test.npy"),
                         "--labels", str(MODELS / "digits_test_labels.npy"), "--no-speed-fallback")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "top-1 agreement" in out and "accuracy  float 99.44 %" in out
    # Every layer int8: without the speed check the stem stays int8 even where it is slower.
    assert "4/4 layers int8" in out and "/classifier/Gemm.ab" in out


def test_bench_profile_lists_the_int8_graphs_nodes() -> None:
    """`--profile N` times each node: the digits CNN's int8 convolutions, its max pool on the
    project's kernel, and a per-operator summary whose shares add up to the whole."""
    result = jarvis_perf("bench", str(MODELS / "digits_cnn.onnx"), "--int8", "--calib",
                         str(MODELS / "digits_calib.npy"), "--iterations", "10", "--profile", "2")
    assert result.returncode == 0, result.stderr
    profile = result.stdout.split("profile: ", 1)[1]
    nodes, by_op = profile.split("by operator:\n")
    assert len(nodes.strip().splitlines()) == 1 + 2
    ops = {line.split()[4]: float(line.split()[2]) for line in by_op.strip().splitlines()}
    assert ops["Int8Conv"] > 0 and "MaxPool2d" in ops and "Int8Linear" in ops
    assert abs(sum(ops.values()) - 100.0) < 1.0


def test_bench_and_run_in_int8(tmp_path: Path) -> None:
    calib = str(MODELS / "digits_calib.npy")
    result = jarvis_perf("bench", str(MODELS / "digits_cnn.onnx"), "--int8", "--calib", calib,
                         "--method", "mse", "--iterations", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("int8, batch 1")
    folder = tmp_path / "calib"
    folder.mkdir()
    data = np.load(calib)
    np.save(folder / "a.npy", data[:100])
    np.save(folder / "b.npy", data[100:])
    result = jarvis_perf("run", str(MODELS / "digits_cnn.onnx"), "--int8", "--calib", str(folder),
                         "--input", str(MODELS / "digits_sample.npy"))
    assert result.returncode == 0, result.stderr
    assert "calibrated on 256 samples" in result.stdout and "argmax per row" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8"], "--int8 needs --calib"),
        (["--calib", "models/digits_calib.npy"], "--calib is only used with --int8"),
        (["--int8", "--calib", "models/digits_calib.npy", "--method", "kl"], "unknown calibration method"),
    ],
)
def test_int8_option_errors(args: list[str], message: str) -> None:
    args = [str(MODELS.parent / a) if a.startswith("models/") else a for a in args]
    result = jarvis_perf("bench", str(MODELS / "digits_cnn.onnx"), *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_quantize_writes_a_model_that_reloads_without_calibration(tmp_path: Path) -> None:
    out = tmp_path / "digits_int8.onnx"
    result = jarvis_perf("quantize", str(MODELS / "digits_cnn.onnx"), "--calib",
                         str(MODELS / "digits_calib.npy"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    rt = jp.Runtime.load(out)
    assert rt.quantized
    result = jarvis_perf("bench", str(out), "--iterations", "5")
    assert result.returncode == 0 and result.stdout.startswith("int8"), result.stderr
