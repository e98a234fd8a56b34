"""The benchmark command runs end to end and reports every system (speed itself is not asserted)."""

from __future__ import annotations

import pytest

from jarvis_performance.bench import main


def test_bench_prints_one_row_per_configuration(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import REPO

    monkeypatch.chdir(REPO)
    assert main(["--models", "digits_mlp", "--batch", "1", "2", "--threads", "1", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "jarvis ms" in lines[0] and "onnxruntime ms" in lines[0] and "jarvis/ort" in lines[0]
    rows = [line.split() for line in lines if line.startswith("digits_mlp")]
    assert [(r[1], r[2]) for r in rows] == [("1", "1"), ("2", "1")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
