"""``jp.preprocess`` output: float16 and uint8 batches against Pillow, the reused output
buffers (no aliasing between live batches), and the GIL released during the work."""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jarvis_performance as jp
from jarvis_performance import _native
from photos import MEAN, STD, photos

PHOTOS = photos()


def pil_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    pil = Image.fromarray(image).convert("RGB")
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None))


@pytest.mark.parametrize("size", [(224, 224), (160, 300), (700, 600)])
def test_uint8_output_is_the_resized_pixels_like_pillow(size: tuple[int, int]) -> None:
    ours = jp.preprocess(PHOTOS, size=size, dtype=np.uint8, layout="NHWC")
    assert ours.dtype == np.uint8 and ours.shape == (len(PHOTOS), *size, 3)
    reference = np.stack([pil_resize(image, size) for image in PHOTOS]).astype(np.int16)
    diff = np.abs(ours.astype(np.int16) - reference)
    # The same resize as float32 output (measured: every value within 1 LSB of Pillow).
    assert (diff <= 1).mean() >= 0.99 and (diff <= 2).mean() >= 0.999
    assert (diff == 0).mean() >= 0.5
    # And it is exactly the float32 path's pixels (whole numbers, before normalization).
    as_float = jp.preprocess(PHOTOS, size=size, mean=0, std=1, layout="NHWC") * 255
    np.testing.assert_array_equal(ours, np.rint(as_float).astype(np.uint8))


def test_uint8_nchw_bgr_letterbox_and_pad() -> None:
    image = PHOTOS[3]  # 427 x 640
    nchw = jp.preprocess([image], size=256, dtype="uint8", channels="BGR", keep_aspect=True,
                         pad=114)
    nhwc = jp.preprocess([image], size=256, dtype="uint8", keep_aspect=True, pad=114,
                         layout="NHWC")
    np.testing.assert_array_equal(nchw[0], nhwc[0][..., ::-1].transpose(2, 0, 1))
    assert (nhwc[0, :10] == 114).all() and (nhwc[0, -10:] == 114).all()
    with pytest.raises(jp.ConfigError, match="mean"):
        jp.preprocess([image], size=16, dtype=np.uint8, mean=MEAN, std=STD)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float16_output_is_float32_rounded(layout: str) -> None:
    f32 = jp.preprocess(PHOTOS, size=(120, 90), mean=MEAN, std=STD, layout=layout,
                        keep_aspect=True, pad=7)
    f16 = jp.preprocess(PHOTOS, size=(120, 90), mean=MEAN, std=STD, layout=layout,
                        keep_aspect=True, pad=7, dtype=np.float16)
    assert f16.dtype == np.float16 and f16.shape == f32.shape
    # Round to nearest even, exactly as NumPy's astype.
    np.testing.assert_array_equal(f16, f32.astype(np.float16))
    # And against Pillow + NumPy: within 1 LSB plus float16's rounding on ≥ 99 % of values.
    square = jp.preprocess(PHOTOS, size=(120, 90), mean=MEAN, std=STD, dtype=np.float16)
    for image, ours in zip(PHOTOS, square):
        pixels = pil_resize(image, (120, 90)).astype(np.float32) / 255
        reference = ((pixels - MEAN) / STD).transpose(2, 0, 1)
        error = np.abs(ours.astype(np.float32) - reference)
        assert (error <= 1.01 / 255 / STD.min() + 2e-3).mean() >= 0.99


def test_out_array_of_each_dtype_and_mismatches() -> None:
    frames = PHOTOS[:2]
    for dtype in (np.float32, np.float16, np.uint8):
        out = np.zeros((2, 3, 32, 48), dtype)
        kwargs = {} if dtype == np.uint8 else {"mean": MEAN, "std": STD}
        result = jp.preprocess(frames, size=(32, 48), out=out, **kwargs)  # dtype from out
        assert result is out
        np.testing.assert_array_equal(
            out, jp.preprocess(frames, size=(32, 48), dtype=dtype, **kwargs))
    with pytest.raises(jp.InputError, match="dtype"):
        jp.preprocess(frames, size=(32, 48), mean=0, std=1, dtype=np.float16,
                      out=np.zeros((2, 3, 32, 48), np.float32))
    with pytest.raises(jp.ConfigError, match="float32, float16 or uint8"):
        jp.preprocess(frames, size=16, mean=0, std=1, dtype=np.float64)
    with pytest.raises(jp.ConfigError, match="mean"):
        jp.preprocess(frames, size=16)  # float output needs mean and std


def test_pooled_batches_never_alias_and_are_reused() -> None:
    frames = PHOTOS[:8]
    kwargs = {"size": 224, "mean": MEAN, "std": STD}
    expected = jp.preprocess(frames, **kwargs).copy()
    gc.collect()
    # Batches kept alive each get their own memory.
    live = [jp.preprocess(frames, **kwargs) for _ in range(3)]
    addresses = {a.__array_interface__["data"][0] for a in live}
    assert len(addresses) == 3
    live[0][:] = -1.0  # writing one must not touch the others
    for batch in live[1:]:
        np.testing.assert_array_equal(batch, expected)
    # A view keeps its batch's memory out of the pool.
    view = live[1][2:4]
    address = live[1].__array_interface__["data"][0]
    del live[1]
    again = jp.preprocess(frames, **kwargs)
    assert again.__array_interface__["data"][0] != address
    np.testing.assert_array_equal(view, expected[2:4])
    # Freed batches go back to the pool and the next call of that size takes one of them.
    del live, view, again
    gc.collect()
    assert _native._vision_pool_idle_bytes() >= expected.nbytes
    first = jp.preprocess(frames, **kwargs)
    freed = first.__array_interface__["data"][0]
    del first
    reused = jp.preprocess(frames, **kwargs)
    assert reused.__array_interface__["data"][0] == freed
    np.testing.assert_array_equal(reused, expected)
    assert reused.flags["C_CONTIGUOUS"] and reused.flags["WRITEABLE"]


def test_a_failed_call_leaves_no_partial_batch_in_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + bytes(100))
    with pytest.raises(jp.ImageError, match="image 1"):
        jp.preprocess([PHOTOS[0], bad], size=224, mean=0, std=1)
    batch = jp.preprocess([PHOTOS[0]] * 2, size=224, mean=0, std=1)
    np.testing.assert_array_equal(batch[0], batch[1])


def _count_while(work: Callable[[], object]) -> tuple[int, float]:
    """Iterations a pure-Python loop in another thread makes while ``work`` runs here, and
    how long ``work`` took."""
    count = 0
    running = threading.Event()
    stop = False

    def spin() -> None:
        nonlocal count
        running.set()
        while not stop:
            count += 1

    thread = threading.Thread(target=spin)
    thread.start()
    running.wait()
    time.sleep(0.02)
    before = count
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    after = count
    stop = True
    thread.join()
    return after - before, seconds


def test_preprocess_releases_the_gil() -> None:
    # ~0.3–0.5 s of work: long against the 5 ms switch interval, whose hand-overs let the
    # loop run a few ms around any call.
    frames = [np.asarray(Image.fromarray(p).resize((1920, 1080))) for p in PHOTOS[:4]] * 24
    out = np.empty((len(frames), 3, 224, 224), np.float32)

    def preprocess() -> object:
        return jp.preprocess(frames, size=224, mean=MEAN, std=STD, out=out)

    numbers = random.Random(0).sample(range(10**8), 1_500_000)

    def holding_the_gil() -> object:
        # list.sort on ints is C code that never releases the GIL.
        return sorted(numbers)

    solo, solo_seconds = _count_while(lambda: time.sleep(0.2))  # sleep releases the GIL
    rate = solo / solo_seconds
    held, held_seconds = _count_while(holding_the_gil)
    released, released_seconds = _count_while(preprocess)
    held_share = held / (rate * held_seconds)
    released_share = released / (rate * released_seconds)
    # The measure can tell: with the GIL held the loop (almost) stops (measured 4–6 % of its
    # solo speed, the hand-overs around the call)...
    assert held_share < 0.15, (held_share, held_seconds)
    # ...while preprocess lets it run: it shares the 2 cores with rayon's threads, so under
    # its solo speed, yet far above the GIL-held control (measured 40–110 %).
    assert released_share > 0.2, (released_share, released_seconds)
    assert released_share > 3 * held_share, (released_share, held_share)


def test_infer_images_feeds_uint8_and_float16_models(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    frames = PHOTOS[:3]
    for elem, np_dtype in [(TensorProto.UINT8, np.uint8), (TensorProto.FLOAT16, np.float16)]:
        graph = helper.make_graph(
            [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["output"], axes=[2, 3], keepdims=0)],
            "pixels", [helper.make_tensor_value_info("input", elem, ["N", 3, 40, 56])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        path = tmp_path / f"{np.dtype(np_dtype).name}.onnx"
        onnx.save(model, path)
        rt = jp.Runtime.load(path)
        kwargs = {} if np_dtype == np.uint8 else {"mean": MEAN, "std": STD}
        means = rt.infer_images(frames, **kwargs)
        batch = jp.preprocess(frames, size=(40, 56), dtype=np_dtype, **kwargs)
        assert batch.dtype == np_dtype
        np.testing.assert_allclose(means, batch.astype(np.float32).mean(axis=(2, 3)), rtol=1e-5)
        with pytest.raises(jp.InputError, match="takes"):
            rt.infer_images(frames, mean=0, std=1, dtype=np.float32)
