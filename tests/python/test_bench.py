"""The benchmark command runs end to end and reports every system (speed itself is not asserted)."""

from __future__ import annotations

import pytest

from jarvis_performance.bench import main


def test_bench_prints_one_row_per_configuration(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import REPO

    monkeypatch.chdir(REPO)
    assert main(["--models", "digits_cnn", "--batch", "1", "2", "--threads", "1", "--rounds", "1",
                 "--int8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for column in ("jarvis ms", "onnxruntime ms", "jarvis int8 ms", "ort int8 ms", "int8/ort8"):
        assert column in lines[0]
    rows = [line.split() for line in lines if line.startswith("digits_cnn")]
    assert [(r[1], r[2]) for r in rows] == [("1", "1"), ("2", "1")]
    assert all(float(cell) > 0 for r in rows for cell in r[3:])


def test_learning_bench_times_update_and_learn(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--learning", "--models", "digits_cnn", "--rounds", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
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
