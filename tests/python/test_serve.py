"""The HTTP service against a real uvicorn server on 127.0.0.1 (a subprocess on a free port),
through httpx: outputs equal the runtime's, bad requests get 4xx with a message, metrics parse,
8 concurrent clients for several seconds see no error, and readers racing a writer that updates
and rolls back always get exactly one version's output."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import ModuleType

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import jarvis_performance as jp
from conftest import MODELS, REPO

DIGITS = MODELS / "digits_cnn.onnx"


def _load_stress_script() -> ModuleType:
    """``scripts/stress_http.py``, whose server helpers and stress run these tests share."""
    spec = importlib.util.spec_from_file_location("stress_http", REPO / "scripts" / "stress_http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through it
    spec.loader.exec_module(module)
    return module


stress_http = _load_stress_script()
stop = stress_http.stop


def start_server(*extra: str) -> tuple[subprocess.Popen[bytes], str]:
    return stress_http.start_server(DIGITS, *extra)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, url = start_server()
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def local() -> jp.Runtime:
    return jp.Runtime.load(DIGITS, threads=1)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.load(MODELS / "digits_test.npy")


def test_json_inference_equals_the_runtime(server: str, local: jp.Runtime,
                                           digits: np.ndarray) -> None:
    x = digits[:8]
    r = httpx.post(f"{server}/v1/infer", json={"inputs": {"input": x.tolist()}})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"]["output"], np.float32)
    np.testing.assert_array_equal(got, local.infer(x))
    r = httpx.post(f"{server}/v1/infer", json={"inputs": {"input": x[:1].tolist()},
                                               "outputs": ["output"]})
    assert list(r.json()["outputs"]) == ["output"]


def test_npy_inference(server: str, local: jp.Runtime, digits: np.ndarray) -> None:
    body = io.BytesIO()
    np.save(body, digits[:5])
    for kind in ("application/x-npy", "application/octet-stream"):
        r = httpx.post(f"{server}/v1/infer", content=body.getvalue(),
                       headers={"content-type": kind})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-npy"
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), local.infer(digits[:5]))


def test_image_inference(server: str, local: jp.Runtime, digits: np.ndarray) -> None:
    labels = np.load(MODELS / "digits_test_labels.npy")
    pixels = np.round(digits[3, 0] * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(png, format="PNG")
    r = httpx.post(f"{server}/v1/infer/image", files={"file": ("digit.png", png.getvalue(),
                                                                "image/png")})
    assert r.status_code == 200, r.text
    expected = local.infer((pixels.astype(np.float32) / 255)[None, None])
    np.testing.assert_allclose(np.asarray(r.json()["outputs"]["output"]), expected, rtol=1e-6)
    top = r.json()["top"]
    assert len(top) == 5 and top[0][0] == int(expected.argmax()) == labels[3]


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not JSON"),
    ({"json": {"input": [1, 2]}}, 400, '"inputs"'),
    ({"json": {"inputs": {"input": [[1, 2], [3]]}}}, 400, "rectangular"),
    ({"json": {"inputs": {"input": [[[1.0] * 8] * 8]}}}, 422, "input"),
    ({"json": {"inputs": {"pixels": [1.0]}}}, 422, "no such input"),
    ({"json": {"inputs": {"input": [[[[0.0] * 8] * 8]]}, "outputs": ["nope"]}}, 422, "nope"),
    ({"content": b"garbage", "headers": {"content-type": "application/x-npy"}}, 400, ".npy"),
    ({"content": b"x", "headers": {"content-type": "text/csv"}}, 400, "content-type"),
])
def test_bad_inference_requests(server: str, kwargs: dict[str, object], status: int,
                                message: str) -> None:
    r = httpx.post(f"{server}/v1/infer", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_bad_image_and_missing_file(server: str) -> None:
    r = httpx.post(f"{server}/v1/infer/image", files={"file": ("x.png", b"not an image")})
    assert r.status_code == 422 and "cannot decode" in r.json()["detail"]
    assert httpx.post(f"{server}/v1/infer/image").status_code == 422  # FastAPI validation


def test_status_health_and_metrics(server: str) -> None:
    httpx.post(f"{server}/v1/infer", json={"inputs": {"input": [[[[0.0] * 8] * 8]]}})
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    status = httpx.get(f"{server}/v1/status").json()
    assert status["inferences"] >= 1 and status["quantized"] is False
    assert "digits_cnn.onnx" in status["model"]
    text = httpx.get(f"{server}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["jarvis_inferences"].samples[0].value >= 1
    requests = families["jarvis_http_requests"].samples
    assert any(s.labels == {"path": "/v1/infer", "status": "200"} and s.value >= 1
               for s in requests)
    assert {s.labels.get("quantile") for s in families["jarvis_latency_ms"].samples} >= {
        "0.5", "0.99"}


def test_updates_over_http() -> None:
    proc, url = start_server("--max-cpu", "150")
    try:
        local = jp.Runtime.load(DIGITS, threads=1)
        delta = np.linspace(-1, 1, 10, dtype=np.float32)
        r = httpx.post(f"{url}/v1/update", json={"deltas": {"classifier.bias": delta.tolist()},
                                                 "scale": 0.5})
        assert r.status_code == 200, r.text
        assert r.json() == {"version": 1}
        local.update({"classifier.bias": delta}, scale=0.5)
        x = np.load(MODELS / "digits_sample.npy")
        r = httpx.post(f"{url}/v1/infer", json={"inputs": {"input": x.tolist()}})
        np.testing.assert_array_equal(np.asarray(r.json()["outputs"]["output"], np.float32),
                                      local.infer(x))
        status = httpx.get(f"{url}/v1/status").json()
        assert status["version"] == 1 and status["cpu_limit"] == 150
        bad = httpx.post(f"{url}/v1/update", json={"deltas": {"nope": [1.0]}})
        assert bad.status_code == 422 and "nope" in bad.json()["detail"]
        bad = httpx.post(f"{url}/v1/update", json={"deltas": {"classifier.bias": [1.0]}})
        assert bad.status_code == 422 and "shape" in bad.json()["detail"]
        assert httpx.post(f"{url}/v1/update", json={"delta": {}}).status_code == 400
        assert httpx.get(f"{url}/v1/status").json()["version"] == 1
    finally:
        stop(proc)


def test_rollback_over_http() -> None:
    proc, url = start_server()
    try:
        local = jp.Runtime.load(DIGITS, threads=1)
        x = np.load(MODELS / "digits_sample.npy")
        original = local.infer(x).copy()
        for k in (1, 2):
            delta = np.full(10, 0.1 * k, np.float32)
            r = httpx.post(f"{url}/v1/update", json={"deltas": {"classifier.bias": delta.tolist()}})
            assert r.json() == {"version": k}
            local.update({"classifier.bias": delta})
        one = local.rollback()
        r = httpx.post(f"{url}/v1/rollback")  # empty body: the previous version
        assert r.status_code == 200 and r.json() == {"version": one} == {"version": 1}
        got = httpx.post(f"{url}/v1/infer", json={"inputs": {"input": x.tolist()}})
        np.testing.assert_array_equal(np.asarray(got.json()["outputs"]["output"], np.float32),
                                      local.infer(x))
        bad = httpx.post(f"{url}/v1/rollback", json={"version": 7})
        assert bad.status_code == 422 and "7" in bad.json()["detail"]
        for body in ({"version": "0"}, {"version": -1}, {"version": True}, {"to": 0}, [0]):
            bad = httpx.post(f"{url}/v1/rollback", json=body)
            assert bad.status_code == 400, (body, bad.text)
        bad = httpx.post(f"{url}/v1/rollback", content=b"{nope",
                         headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not JSON" in bad.json()["detail"]
        assert httpx.post(f"{url}/v1/rollback", json={"version": 0}).json() == {"version": 0}
        got = httpx.post(f"{url}/v1/infer", json={"inputs": {"input": x.tolist()}})
        np.testing.assert_array_equal(np.asarray(got.json()["outputs"]["output"], np.float32),
                                      original)
        assert httpx.get(f"{url}/v1/status").json()["version"] == 0
    finally:
        stop(proc)


def test_readers_racing_updates_and_rollbacks_see_one_version() -> None:
    """The short form of ``scripts/stress_http.py``: 4 reader threads (JSON and .npy) and one
    writer cycling the weights A → B → C → B → A over HTTP for 5 s; every answer must equal one
    state's output bit for bit, with no error and no hung thread."""
    work = stress_http.Workload.build(int8=False)
    proc, url = start_server()
    try:
        figures = stress_http.run(url, work, seconds=5.0)
    finally:
        stop(proc)
    print("\n" + figures.summary())
    # What the server logged (warnings and tracebacks) goes with a failure: a 500 names the
    # exception there only.
    server_log = proc.stdout.read().decode(errors="replace")[-4000:] if proc.stdout else ""
    assert figures.ok, (figures.summary(), figures.problems, server_log)
    assert figures.cycles >= 2


def test_eight_concurrent_clients(server: str, local: jp.Runtime, digits: np.ndarray) -> None:
    """8 clients post for 6 s; every answer must be the runtime's, with no error."""
    requests = [digits[i * 8 : i * 8 + 1 + i % 8] for i in range(16)]  # batches of 1..8
    expected = [local.infer(x) for x in requests]
    bodies = [{"inputs": {"input": x.tolist()}} for x in requests]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + 6.0

    def client(seed: int) -> None:
        with httpx.Client(base_url=server, timeout=30) as c:
            i = seed
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    r = c.post("/v1/infer", json=bodies[i % 16])
                    ok = r.status_code == 200 and np.array_equal(
                        np.asarray(r.json()["outputs"]["output"], np.float32), expected[i % 16])
                    problem = None if ok else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    problem = repr(e)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if problem:
                        errors.append(problem)
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"\n8 clients: {len(latencies)} requests in {wall:.1f} s = {len(latencies) / wall:.0f} "
          f"req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {len(errors)}")
    assert not errors, errors[:5]
    assert len(latencies) > 8


def test_rgb_images_go_through_the_rust_vision_pipeline(model_path) -> None:  # type: ignore[no-untyped-def]
    """For an RGB model, /v1/infer/image's handler preprocesses with ``Runtime.infer_images``:
    the same logits as ``jp.preprocess`` + ``infer`` on the same JPEG bytes."""
    from photos import photos
    from jarvis_performance.serve import Service

    rt = jp.Runtime.load(model_path("efficientnet_lite0"))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    buffer = io.BytesIO()
    Image.fromarray(photos()[0]).save(buffer, format="JPEG", quality=90)
    result = Service(rt, mean=mean, std=std).infer_image(buffer.getvalue())
    expected = rt.infer(jp.preprocess([buffer.getvalue()], size=224, mean=mean, std=std))
    got = np.asarray(result["outputs"][rt.outputs[0].name], np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert result["top"][0][0] == int(expected[0].argmax())
