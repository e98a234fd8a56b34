"""The HTTP service against a real uvicorn server on 127.0.0.1 (a subprocess on a free port),
through httpx: outputs equal the runtime's, bad requests get 4xx with a message, metrics parse,
and 8 concurrent clients for several seconds see no error."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import jarvis_performance as jp
from conftest import MODELS, REPO

DIGITS = MODELS / "digits_cnn.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(*extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "jarvis_performance.serve", str(DIGITS), "--port", str(port),
           "--threads", "1", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


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
    from jarvis_performance.photos import photos
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
