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

