"""``python -m jarvis_performance.export`` and ``export_model``: PyTorch → ONNX → Runtime."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import jarvis_performance as jp
from jarvis_performance.export import export_model


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jarvis_performance.export", *args],
                          capture_output=True, text=True, timeout=600)


def test_cli_exports_a_torchvision_model_and_reports_the_difference(tmp_path: Path) -> None:
    out = tmp_path / "mnv2.onnx"
    result = run_export("mobilenet_v2", "-o", str(out), "--input-shape", "1,3,96,96")
    assert result.returncode == 0, result.stderr
    match = re.search(r"max difference vs PyTorch: (\S+) \(relative (\S+)\)", result.stdout)
    assert match, result.stdout
    assert float(match.group(2)) <= 1e-4
    rt = jp.Runtime.load(out)
    assert rt.inputs[0].shape == (None, 3, 96, 96)  # dynamic batch
    assert rt.infer(np.zeros((3, 3, 96, 96), np.float32)).shape == (3, 1000)


def test_cli_accepts_a_module_attr_constructor(tmp_path: Path) -> None:
    out = tmp_path / "squeeze.onnx"
    result = run_export("torchvision.models:squeezenet1_1", "-o", str(out), "--input-shape", "1x3x64x64")
    assert result.returncode == 0, result.stderr
    assert out.exists() and "max difference" in result.stdout


def test_cli_rejects_an_unknown_model(tmp_path: Path) -> None:
    result = run_export("no_such_net", "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 1
    assert "unknown model 'no_such_net'" in result.stderr


def test_export_model_keeps_state_dict_names_for_initializers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    result = export_model(module, tmp_path / "mlp.onnx", input_shape=(1, 16))
    assert result.max_rel_diff is not None and result.max_rel_diff <= 1e-5
    names = {init.name for init in onnx.load(str(result.path)).graph.initializer}
    assert set(module.state_dict()) <= names
