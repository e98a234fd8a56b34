"""The Runtime API: infer / run / inputs / outputs, dtypes, zero-copy output, threads and the GIL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SHIPPED, random_input
from onnx_builders import gather_where

import jarvis_performance as jp


@pytest.fixture()
def mlp(model_path: Callable[[str], Path]) -> jp.Runtime:
    return jp.Runtime.load(model_path("digits_mlp"))


def test_inputs_and_outputs_describe_the_model(mlp: jp.Runtime) -> None:
    (inp,) = mlp.inputs
    (out,) = mlp.outputs
    assert (inp.name, inp.shape, inp.dtype) == ("input", (None, 64), "float32")
    assert (out.name, out.shape, out.dtype) == ("output", (None, 10), "float32")
    assert "None" in repr(inp)


def test_infer_array_dict_and_run_agree(mlp: jp.Runtime) -> None:
    x = random_input(SHIPPED["digits_mlp"], 3)
    by_array = mlp.infer(x)
    by_dict = mlp.infer({"input": x})
    assert set(by_dict) == {"output"}
    (by_run,) = mlp.run(None, {"input": x})
    (by_name,) = mlp.run(["output"], {"input": x})
    for other in (by_dict["output"], by_run, by_name):
        np.testing.assert_array_equal(by_array, other)


def test_float_int64_and_bool_inputs_and_output_selection(tmp_path: Path) -> None:
    path = gather_where(tmp_path / "gather_where.onnx")
    rt = jp.Runtime.load(path)
    assert [i.dtype for i in rt.inputs] == ["float32", "int64", "bool"]
    table = np.arange(12, dtype=np.float32).reshape(3, 4)
    index = np.array([3, 1], dtype=np.int64)
    mask = np.array([[True, False], [False, True], [True, True]])
    feed = {"table": table, "index": index, "mask": mask}
    picked, out = rt.run(["picked", "out"], feed)
    expected = ort.InferenceSession(str(path)).run(["picked", "out"], feed)
    np.testing.assert_array_equal(picked, expected[0])
    np.testing.assert_array_equal(out, expected[1])
    assert set(rt.infer(feed)) == {"out", "picked"}


def test_output_is_not_copied_and_stays_valid(mlp: jp.Runtime) -> None:
    y = mlp.infer(random_input(SHIPPED["digits_mlp"], 2))
    assert not y.flags.owndata  # a view of the runtime's own buffer, kept alive by its base
    assert type(y.base).__name__ == "TensorOwner"
    expected = y.copy()
    del mlp
    np.testing.assert_array_equal(y, expected)
    y += 1  # writable, like any fresh result
    np.testing.assert_array_equal(y, expected + 1)


def test_non_contiguous_and_list_inputs(mlp: jp.Runtime) -> None:
    x = random_input(SHIPPED["digits_mlp"], 4)
    wide = np.zeros((4, 128), np.float32)
    wide[:, ::2] = x
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(mlp.infer(strided), mlp.infer(x))
    np.testing.assert_allclose(mlp.infer(x.tolist()), mlp.infer(x), rtol=1e-6)


def test_thread_count_is_respected(model_path: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert jp.Runtime.load(model_path("digits_mlp"), threads=1).threads == 1
    monkeypatch.setenv("JARVIS_PERF_THREADS", "2")
    assert jp.Runtime.load(model_path("digits_mlp")).threads == 2


def test_two_threads_share_one_runtime(model_path: Callable[[str], Path]) -> None:
    rt = jp.Runtime.load(model_path("digits_cnn"), threads=1)
    inputs = [random_input(SHIPPED["digits_cnn"], 4, seed=s) for s in range(2)]
    expected = [rt.infer(x) for x in inputs]
    failures: list[str] = []

    def worker(ix: int) -> None:
        for _ in range(200):
            if not np.array_equal(rt.infer(inputs[ix]), expected[ix]):
                failures.append(f"thread {ix} got a wrong result")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_gil_is_released_during_inference(model_path: Callable[[str], Path]) -> None:
    rt = jp.Runtime.load(model_path("resnet18"), threads=1)
    x = random_input((1, 3, 224, 224), 8)
    rt.infer(x)  # warm up
    done = threading.Event()

    def infer() -> None:
        rt.infer(x)
        done.set()

    worker = threading.Thread(target=infer)
    start = time.perf_counter()
    worker.start()
    ticks = 0
    while not done.is_set():  # runs only if the worker let go of the GIL
        ticks += 1
        time.sleep(0.001)
    worker.join()
    elapsed = time.perf_counter() - start
    assert elapsed > 0.05, "inference too short to observe"
    # Had the call held the GIL, this loop would tick once or twice in all; ~1 ms per tick
    # means dozens of ticks in a call of 50+ ms.
    assert ticks >= 10, (ticks, elapsed)
