"""The quick examples run as documented and print what they promise."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_quickstart_runs() -> None:
    result = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "float accuracy 0.9944" in result.stdout
    assert "int8 accuracy" in result.stdout and "SQNR" in result.stdout


def test_vision_example_runs() -> None:
    result = subprocess.run([sys.executable, str(REPO / "examples" / "vision.py")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "same top-1 as with Pillow preprocessing: 100%" in result.stdout
    assert "within 1 LSB: 100.00%" in result.stdout
