"""The hand-written stub matches the compiled module, and the package type-checks strictly."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_stub_matches_the_compiled_module() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", "jarvis_performance._native"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_passes_mypy_strict() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
