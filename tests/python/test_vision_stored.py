"""Preprocessing stored with the model (``jarvis_performance.preprocess`` metadata): written by
``jp.set_preprocessing`` / ``jarvis-perf set-preprocessing``, used by ``Runtime.infer_images``
and ``jarvis-perf run model.onnx --input input=photo.jpg`` without options."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jarvis_performance as jp
from photos import MEAN, STD, photos

PHOTOS = photos()
KEY = "jarvis_performance.preprocess"


@pytest.fixture
def mobilenet(tmp_path: Path, model_path: Callable[[str], Path]) -> Path:
    path = tmp_path / "mobilenet.onnx"
    shutil.copy(model_path("mobilenet_v2"), path)
    return path


def _png(tmp_path: Path, i: int) -> Path:
    path = tmp_path / f"{i}.png"
    buffer = io.BytesIO()
    Image.fromarray(PHOTOS[i]).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_stored_preprocessing_drives_infer_images(mobilenet: Path) -> None:
    frames = PHOTOS[:3]
    before = jp.Runtime.load(mobilenet)
    assert before.preprocessing is None and jp.get_preprocessing(mobilenet) is None
    with pytest.raises(jp.ConfigError, match="mean"):
        before.infer_images(frames)  # nothing stored, nothing given
    jp.set_preprocessing(mobilenet, mean=MEAN.tolist(), std=STD.tolist(), crop="center")
    stored = jp.get_preprocessing(mobilenet)
    assert stored == {"mean": pytest.approx(MEAN.tolist()), "std": pytest.approx(STD.tolist()),
                      "crop": "center"}
    rt = jp.Runtime.load(mobilenet)
    assert rt.preprocessing == stored
    expected = before.infer(jp.preprocess(frames, size=224, mean=MEAN, std=STD, crop="center"))
    np.testing.assert_array_equal(rt.infer_images(frames), expected)
    # The weights are untouched: plain inference gives what it gave before.
    x = jp.preprocess(frames, size=224, mean=MEAN, std=STD)
    np.testing.assert_array_equal(rt.infer(x), before.infer(x))
    # Options given in the call override the stored ones, field by field.
    np.testing.assert_array_equal(rt.infer_images(frames, crop="none"), before.infer(x))
    # The record travels with saved copies of the model.
    rt.save(mobilenet.with_name("copy.onnx"))
    assert jp.Runtime.load(mobilenet.with_name("copy.onnx")).preprocessing == stored
    # Every option None removes it.
    jp.set_preprocessing(mobilenet)
    assert jp.get_preprocessing(mobilenet) is None


def test_bad_records_and_files_are_refused(mobilenet: Path, tmp_path: Path) -> None:
    original = mobilenet.read_bytes()
    for options in [{"resize": "bicubic"}, {"std": [0, 1, 1]}, {"size": 0}, {"mean": [1, 2]},
                    {"crop": "top"}, {"layout": "CHWN"}]:
        with pytest.raises(jp.ConfigError):
            jp.set_preprocessing(mobilenet, **options)  # type: ignore[arg-type]
    assert mobilenet.read_bytes() == original  # nothing written
    with pytest.raises(FileNotFoundError):
        jp.set_preprocessing(tmp_path / "missing.onnx", size=224)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x01\x02 not a model")
    with pytest.raises(jp.ModelLoadError):
        jp.set_preprocessing(junk, size=224)
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    # A hand-edited, malformed record: loading still works, image calls say what is wrong.
    onnx = pytest.importorskip("onnx")
    model = onnx.load(mobilenet)
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY, '{"mean": 0.5, "colour": "red"}'
    onnx.save(model, mobilenet)
    rt = jp.Runtime.load(mobilenet)
    with pytest.raises(jp.ConfigError, match=KEY):
        rt.infer_images(PHOTOS[:1], mean=0, std=1)
    with pytest.raises(jp.ConfigError, match="colour"):
        jp.get_preprocessing(mobilenet)


def test_cli_runs_image_files_with_the_stored_preprocessing(mobilenet: Path,
                                                            tmp_path: Path) -> None:
    from test_cli import jarvis_perf

    files = [_png(tmp_path, 0), _png(tmp_path, 1)]
    mean, std = ",".join(map(str, MEAN)), ",".join(map(str, STD))
    written = jarvis_perf("set-preprocessing", str(mobilenet), "--mean", mean, "--std", std,
                          "--center-crop")
    assert written.returncode == 0, written.stderr
    record = json.loads(written.stdout.split(": ", 1)[1])
    assert record["crop"] == "center" and record["mean"] == pytest.approx(MEAN.tolist())
    out = tmp_path / "logits.npy"
    result = jarvis_perf("run", str(mobilenet), "--input", f"input={files[0]},{files[1]}",
                         "--output", str(out))  # no preprocessing flags
    assert result.returncode == 0, result.stderr
    rt = jp.Runtime.load(mobilenet)
    expected = rt.infer(jp.preprocess(files, size=224, mean=MEAN, std=STD, crop="center"))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
    inspect = jarvis_perf("inspect", str(mobilenet))
    assert "preprocessing (stored)" in inspect.stdout and "center" in inspect.stdout
    # A flag overrides the stored value.
    flat = jarvis_perf("run", str(mobilenet), "--input", f"input={files[0]}", "--mean", "0",
                       "--std", "1", "--output", str(out))
    assert flat.returncode == 0, flat.stderr
    expected = rt.infer(jp.preprocess(files[:1], size=224, mean=0, std=1, crop="center"))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
    cleared = jarvis_perf("set-preprocessing", str(mobilenet), "--clear")
    assert cleared.returncode == 0 and jp.get_preprocessing(mobilenet) is None
    bad = jarvis_perf("set-preprocessing", str(mobilenet), "--resize", "bicubic")
    assert bad.returncode == 1 and "bicubic" in bad.stderr
