"""Rust-side logs reach Python's ``logging`` under the ``jarvis_performance`` logger; nothing is
printed."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import jarvis_performance as jp
from conftest import MODELS

DIGITS = MODELS / "digits_cnn.onnx"


def test_load_announces_the_layer(caplog: pytest.LogCaptureFixture,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    calib = np.load(MODELS / "digits_calib.npy")
    with caplog.at_level(logging.DEBUG, logger="jarvis_performance"):
        jp.Runtime.load(DIGITS, quantize="int8", calibration=calib, threads=2,
                        exclude=["/classifier/Gemm.ab"], speed_fallback=False)
    ours = [r for r in caplog.records if r.name.startswith("jarvis_performance")]
    messages = [r.getMessage() for r in ours]
    active = [m for m in messages if m.startswith("Rust performance layer active")]
    assert len(active) == 1
    assert re.fullmatch(r"Rust performance layer active: int8 \((avx512_vnni|avx_vnni|avx2|scalar)\), "
                        r"2 threads, .*digits_cnn\.onnx", active[0]), active[0]
    assert any(re.search(r"3/4 layers int8 \(percentile.* calibration on 256 samples", m)
               for m in messages), messages
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert any("/classifier/Gemm.ab left in float: excluded by the caller" in m
               for m in warnings), warnings
    out, err = capfd.readouterr()
    assert "Rust performance layer" not in out + err  # logged, never printed


def test_float_load_and_levels(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="jarvis_performance"):
        jp.Runtime.load(DIGITS, threads=1)
    assert not [r for r in caplog.records if r.name.startswith("jarvis_performance")]
    with caplog.at_level(logging.INFO, logger="jarvis_performance"):
        jp.Runtime.load(DIGITS, threads=1, max_cpu_percent=30)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Rust performance layer active: float32 (tract kernels), 1 thread,")
               for m in messages), messages
    assert any("CPU capped at 30% of one core" in m for m in messages), messages


_LOAD_INT8_WITH_LOGS = """
import logging, sys, numpy as np, jarvis_performance as jp
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
jp.Runtime.load(sys.argv[1], quantize="int8", calibration=np.load(sys.argv[2]), threads=1)
"""


@pytest.mark.parametrize(("isa", "warned"), [("scalar", True), ("avx2", False)])
def test_int8_on_the_scalar_kernels_is_a_warning(isa: str, warned: bool) -> None:
    """A CPU without AVX-512 VNNI or AVX2 (forced here with ``JARVIS_PERF_ISA``, which applies
    per process) runs int8 layers on the portable kernels: the load says so as a warning and
    names the instruction set in the log line."""
    env = {**os.environ, "JARVIS_PERF_ISA": isa}
    result = subprocess.run([sys.executable, "-c", _LOAD_INT8_WITH_LOGS, str(DIGITS),
                             str(MODELS / "digits_calib.npy")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert f"int8 ({isa})" in result.stdout, result.stdout
    warning = "WARNING " + f"{DIGITS}: this CPU has neither AVX-512 VNNI nor AVX2"
    assert (warning in result.stdout) == warned, result.stdout
