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


def test_continual_learning_demo_tracks_pytorch() -> None:
    """The continual-learning example: on digits at 40 % contrast, int8 + Rust updates (and the
    head learner) end within one point of the same learning done in PyTorch float, and far above
    where they started."""
    result = subprocess.run([sys.executable, str(REPO / "examples" / "continual_learning.py")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"update", "learn"}
    for how, (int8_before, int8_after, float_after, pytorch_after, _versions) in rows.items():
        assert int8_after >= int8_before + 0.3, how
        assert abs(int8_after - pytorch_after) <= 0.01, how
        assert abs(float_after - pytorch_after) <= 0.01, how


def test_vision_example_runs() -> None:
    result = subprocess.run([sys.executable, str(REPO / "examples" / "vision.py")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "same top-1 as with Pillow preprocessing: 100%" in result.stdout
    assert "within 1 LSB: 100.00%" in result.stdout


def test_ray_batch_inference_over_a_folder_of_images() -> None:
    """Ray Data on a local Ray (2 CPUs): map_batches with a callable class holding one pickled
    int8 Runtime per worker classifies the 360 held-out digits, written as PNG files, like the
    runtime in this process does."""
    result = subprocess.run([sys.executable, str(REPO / "examples" / "ray_batch_images.py")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("360 images, 2 workers"), line
    accuracy = float(line.split("accuracy ")[1].split(",")[0])
    agreement = float(line.split("local runtime ")[1].split(",")[0])
    assert agreement == 1.0
    assert accuracy >= 0.98
