"""HTTP service around one :class:`Runtime` (FastAPI + uvicorn, the ``serve`` extra).

Run it::

    python -m jarvis_performance.serve models/digits_cnn.onnx --port 8000 --max-cpu 25

Endpoints:

- ``POST /v1/infer``: JSON ``{"inputs": {name: nested lists}, "outputs": [names] (optional)}``
  → ``{"outputs": {name: nested lists}}``; or a raw ``.npy`` body (``application/x-npy`` or
  ``application/octet-stream``) feeding the only input (``?input=NAME`` otherwise) → the first
  output (``?output=NAME``) as ``.npy``.
- ``POST /v1/infer/image``: a multipart upload ``file`` (PNG, JPEG, …) through the Rust vision
  pipeline (``Runtime.infer_images``; grey one-channel models through Pillow) resized to the
  model's input and scaled to [0, 1], then ``(x - mean) / std`` (``--mean``/``--std``) →
  ``{"outputs": …, "top": [[class, score], …]}``.
- ``POST /v1/update``: ``{"deltas": {weight name: nested lists}, "scale": 1.0}`` →
  ``{"version": n}``.
- ``POST /v1/rollback``: ``{"version": n}`` (or an empty body: the previous version) →
  ``{"version": n}``, the version now current; its outputs come back bit for bit.
- ``GET /v1/status`` (``Runtime.get_status()`` and the model), ``GET /healthz``,
  ``GET /metrics`` (Prometheus text format).

Malformed requests get 400, requests the model refuses (``InputError``, ``UpdateError``,
``ImageError``) 422, each with ``{"error": kind, "detail": message}``. Inference runs in the
threadpool, off the event loop; the runtime releases the GIL while the model runs.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from ._native import ConfigError, ImageError, InputError, JarvisError, Runtime, UpdateError

log = logging.getLogger(__name__)

NPY_TYPES = ("application/x-npy", "application/npy", "application/octet-stream")

# numpy parses a .npy header with ``ast.literal_eval``, and CPython 3.11's AST constructor can
# raise a spurious ``SystemError: AST constructor recursion depth mismatch`` when threads parse
# at once (CPython gh-106905): a request thread answered 500 under concurrent .npy requests.
# Headers are parsed one at a time.
_NPY_PARSE_LOCK = threading.Lock()
PATHS = ("/v1/infer", "/v1/infer/image", "/v1/update", "/v1/rollback", "/v1/status", "/healthz",
         "/metrics")


class BadRequest(Exception):
    """The request itself is malformed (not JSON, wrong structure, unreadable array): 400."""


def _json_arrays(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BadRequest(f'"{what}" must be an object {{name: nested lists}}')
    return value


def _array(value: Any, dtype: str, name: str) -> npt.NDArray[Any]:
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"{name}: not a rectangular array of numbers ({e})") from e


class Service:
    """The request handlers' logic, free of HTTP, run in worker threads."""

    def __init__(self, runtime: Runtime, *, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), image_size: int = 224) -> None:
        self.runtime = runtime
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.image_size = image_size
        self.dtypes = {spec.name: spec.dtype for spec in runtime.inputs}
        self.requests: Counter[tuple[str, int]] = Counter()
        self.lock = threading.Lock()

    def infer_json(self, body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body)
        except ValueError as e:
            raise BadRequest(f"the body is not JSON: {e}") from e
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise BadRequest('expected {"inputs": {name: nested lists}}')
        inputs = _json_arrays(payload["inputs"], "inputs")
        feed = {}
        for name, value in inputs.items():
            if name not in self.dtypes:
                raise InputError(f"input {name!r}: the model has no such input; its inputs are "
                                 f"{', '.join(self.dtypes)}")
            feed[name] = _array(value, self.dtypes[name], name)
        wanted = payload.get("outputs")
        if wanted is not None and not (isinstance(wanted, list)
                                       and all(isinstance(n, str) for n in wanted)):
            raise BadRequest('"outputs" must be a list of output names')
        names = wanted if wanted is not None else [o.name for o in self.runtime.outputs]
        results = self.runtime.run(names, feed)
        return {"outputs": {n: r.tolist() for n, r in zip(names, results, strict=True)}}

    def infer_npy(self, body: bytes, input_name: str | None, output_name: str | None) -> bytes:
        try:
            with _NPY_PARSE_LOCK:
                x = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise BadRequest(f"the body is not a .npy array: {e}") from e
        if input_name is None:
            if len(self.dtypes) != 1:
                raise BadRequest(f"the model has inputs {', '.join(self.dtypes)}: "
                                 "name one with ?input=NAME")
            input_name = next(iter(self.dtypes))
        output_name = output_name or self.runtime.outputs[0].name
        (y,) = self.runtime.run([output_name], {input_name: x})
        out = io.BytesIO()
        np.save(out, np.ascontiguousarray(y), allow_pickle=False)
        return out.getvalue()

    def infer_image(self, data: bytes) -> dict[str, Any]:
        inputs = self.runtime.inputs
        if len(inputs) == 1 and len(inputs[0].shape) == 4 and inputs[0].shape[1] == 3:
            # RGB models: the Rust vision pipeline decodes, resizes and normalises in one pass.
            _, _, height, width = inputs[0].shape
            size = (height or self.image_size, width or self.image_size)
            y = self.runtime.infer_images([data], mean=self.mean, std=self.std, size=size,
                                          layout="NCHW")
        else:
            x = self.decode_image(data)
            (y,) = self.runtime.run([self.runtime.outputs[0].name], {inputs[0].name: x})
        result: dict[str, Any] = {"outputs": {self.runtime.outputs[0].name: y.tolist()}}
        if y.ndim == 2 and y.shape[0] == 1:
            order = np.argsort(-y[0])[:5]
            result["top"] = [[int(i), float(y[0, i])] for i in order]
        return result

    def decode_image(self, data: bytes) -> npt.NDArray[np.float32]:
        """For models that are not RGB (grey, one channel), which the vision pipeline does not
        produce: PIL decode, resize to the model's input (or ``image_size`` for dynamic axes),
        scale to [0, 1], normalise, NCHW batch of one."""
        from PIL import Image, UnidentifiedImageError

        if len(self.runtime.inputs) != 1 or len(self.runtime.inputs[0].shape) != 4:
            raise InputError("images need a model with one NCHW input")
        _, channels, height, width = self.runtime.inputs[0].shape
        try:
            decoded = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
            size = (width or self.image_size, height or self.image_size)
            image = decoded.resize(size, Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ImageError(f"cannot decode the image: {e}") from e
        x = np.asarray(image, np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        x = (x - self.mean.reshape(-1, 1, 1)) / self.std.reshape(-1, 1, 1)
        return np.ascontiguousarray(x[None], dtype=np.float32)

    def update(self, body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body)
        except ValueError as e:
            raise BadRequest(f"the body is not JSON: {e}") from e
        if not isinstance(payload, dict) or "deltas" not in payload:
            raise BadRequest('expected {"deltas": {weight name: nested lists}, "scale": 1.0}')
        deltas = {name: _array(value, "float32", name)
                  for name, value in _json_arrays(payload["deltas"], "deltas").items()}
        scale = payload.get("scale", 1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise BadRequest('"scale" must be a number')
        return {"version": self.runtime.update(deltas, scale=float(scale))}

    def rollback(self, body: bytes) -> dict[str, Any]:
        """Back to ``{"version": n}``, or to the previous version for an empty body or ``{}``."""
        payload: Any = {}
        if body.strip():
            try:
                payload = json.loads(body)
            except ValueError as e:
                raise BadRequest(f"the body is not JSON: {e}") from e
        if not isinstance(payload, dict) or set(payload) - {"version"}:
            raise BadRequest('expected {"version": n} or an empty body (the previous version)')
        version = payload.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                    or version < 0):
            raise BadRequest('"version" must be a non-negative integer')
        return {"version": self.runtime.rollback(version)}

    def count(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path if path in PATHS else "other", status)] += 1

    def metrics(self) -> str:
        """Prometheus text exposition (format 0.0.4)."""
        s = self.runtime.get_status()
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float | None]]) -> None:
            present = [(labels, v) for labels, v in samples if v is not None]
            if present:
                lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
                lines.extend(f"{name}{labels} {float(v)!r}" for labels, v in present)

        metric("jarvis_inferences_total", "counter", "Successful inference calls.",
               [("", s["inferences"])])
        metric("jarvis_cpu_usage_percent", "gauge",
               "CPU of this process over the last ~2 s, percent of one core.",
               [("", s["cpu_usage"])])
        metric("jarvis_cpu_limit_percent", "gauge", "CPU cap, percent of one core.",
               [("", s["cpu_limit"])])
        metric("jarvis_throttled", "gauge", "1 when the CPU cap held work back lately.",
               [("", float(s["throttled"]))])
        metric("jarvis_threads", "gauge", "Threads inference runs with now.",
               [("", s["threads"])])
        metric("jarvis_memory_allocated_bytes", "gauge", "Weights and model data held.",
               [("", s["memory_allocated_mb"] * 2**20)])
        rss = s["rss_mb"]
        metric("jarvis_resident_memory_bytes", "gauge", "Resident memory of the process.",
               [("", None if rss is None else rss * 2**20)])
        metric("jarvis_latency_ms", "summary", "Model run time over the last 1,024 calls.",
               [('{quantile="0.5"}', s["latency_ms_p50"]),
                ('{quantile="0.99"}', s["latency_ms_p99"])])
        metric("jarvis_model_version", "gauge", "Version of the weights.", [("", s["version"])])
        with self.lock:
            requests = sorted(self.requests.items())
        metric("jarvis_http_requests_total", "counter", "HTTP requests by path and status.",
               [(f'{{path="{p}",status="{c}"}}', n) for (p, c), n in requests])
        return "\n".join(lines) + "\n"


def create_app(runtime: Runtime, *, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
               image_size: int = 224) -> FastAPI:
    """The FastAPI application serving ``runtime`` (see the module docstring)."""
    service = Service(runtime, mean=mean, std=std, image_size=image_size)
    app = FastAPI(title="jarvis-performance", version="1")
    app.state.service = service

    def error(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(_: Request, e: Exception) -> JSONResponse:
            return JSONResponse({"error": type(e).__name__, "detail": str(e)}, status_code=status)
        return handle

    app.add_exception_handler(BadRequest, error(400))
    app.add_exception_handler(ConfigError, error(400))
    for refused in (InputError, UpdateError, ImageError):
        app.add_exception_handler(refused, error(422))
    app.add_exception_handler(JarvisError, error(500))

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        service.count(request.url.path, response.status_code)
        return response

    @app.post("/v1/infer")
    async def infer(request: Request, input: str | None = None, output: str | None = None) -> Response:
        body = await request.body()
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind.lower() in NPY_TYPES:
            data = await run_in_threadpool(service.infer_npy, body, input, output)
            return Response(data, media_type="application/x-npy")
        if kind.lower() != "application/json":
            raise BadRequest(f"content-type {kind!r}: send application/json or a .npy body "
                             "(application/x-npy or application/octet-stream)")
        return JSONResponse(await run_in_threadpool(service.infer_json, body))

    @app.post("/v1/infer/image")
    async def infer_image(file: UploadFile) -> JSONResponse:
        data = await file.read()
        return JSONResponse(await run_in_threadpool(service.infer_image, data))

    @app.post("/v1/update")
    async def update(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(await run_in_threadpool(service.update, body))

    @app.post("/v1/rollback")
    async def rollback(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(await run_in_threadpool(service.rollback, body))

    @app.get("/v1/status")
    async def status() -> JSONResponse:
        figures = await run_in_threadpool(runtime.get_status)
        return JSONResponse({"model": repr(runtime), **figures})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = await run_in_threadpool(service.metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers expected") from e


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jarvis_performance.serve",
                                     description="Serve an ONNX model over HTTP.")
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("--int8", action="store_true", help="quantize to int8 (needs --calib)")
    parser.add_argument("--calib", help="calibration data, a .npy array (N, ...)")
    parser.add_argument("--method", help="calibration method (minmax, percentile, entropy, mse)")
    parser.add_argument("--threads", type=int, help="threads inside operators")
    parser.add_argument("--max-cpu", type=float, help="CPU cap, percent of one core")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mean", type=_floats, default=[0.0],
                        help="per-channel mean for /v1/infer/image, after scaling to [0, 1]")
    parser.add_argument("--std", type=_floats, default=[1.0], help="per-channel std, likewise")
    parser.add_argument("--image-size", type=int, default=224,
                        help="image side for models whose input size is dynamic")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if args.int8 != (args.calib is not None):
        parser.error("--int8 and --calib go together")

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    calibration = np.load(args.calib) if args.calib else None
    runtime = Runtime.load(args.model, threads=args.threads, max_cpu_percent=args.max_cpu,
                           quantize="int8" if args.int8 else None, calibration=calibration,
                           method=args.method)
    app = create_app(runtime, mean=args.mean, std=args.std, image_size=args.image_size)

    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                access_log=args.access_log)


if __name__ == "__main__":
    main()
