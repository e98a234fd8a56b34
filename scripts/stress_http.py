"""Concurrency stress of the HTTP service: a real uvicorn server on 127.0.0.1, four client threads
posting ``/v1/infer`` and one thread changing the weights through ``/v1/update`` and
``/v1/rollback``, for ``--seconds``.

    python scripts/stress_http.py --seconds 30            # float digits CNN
    python scripts/stress_http.py --seconds 30 --int8     # int8 (calibrated on the shipped data)

The writer cycles the weights through three states — A (as loaded), B = A + d1, C = B + d2 —
by ``update d1``, ``update d2``, ``rollback`` (to the previous version: B) and ``rollback 0``
(A). The expected output of every state is computed in this process by a runtime loaded with the
same options and given the same deltas, so a result must equal one state's output **bit for
bit**: half the readers send JSON, half ``.npy``. Prints requests, seconds, results per state,
mismatches, errors (any non-200 answer or transport failure, 5xx counted apart) and hung
threads; exits 1 unless mismatches, errors and hung threads are all 0 and every state was seen.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

import jarvis_performance as jp

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DIGITS = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npy"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, *extra: str, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """Starts ``python -m jarvis_performance.serve model --threads 1 *extra`` on a free port and
    waits until ``/healthz`` answers; returns the process and its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "jarvis_performance.serve", str(model), "--port", str(port),
           "--threads", "1", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not come up within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminates the server (SIGTERM, then SIGKILL after 20 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Workload:
    """What the clients send and what each weight state must answer."""

    batch: np.ndarray
    d1: dict[str, np.ndarray]
    d2: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]  # state name -> output for `batch`

    @classmethod
    def build(cls, int8: bool) -> Workload:
        """Computes the three states' outputs with a local runtime loaded like the server's."""
        rt = (jp.Runtime.load(DIGITS, threads=1, quantize="int8", calibration=np.load(CALIB))
              if int8 else jp.Runtime.load(DIGITS, threads=1))
        batch = np.load(MODELS / "digits_test.npy")[:16]
        rng = np.random.default_rng(0)

        def delta() -> dict[str, np.ndarray]:
            return {n: (0.2 * rng.standard_normal(rt.weights(n).shape)).astype(np.float32)
                    for n in ("features.6.weight", "classifier.weight", "classifier.bias")}

        d1, d2 = delta(), delta()
        expected = {"A": rt.infer(batch).copy()}
        rt.update(d1)
        expected["B"] = rt.infer(batch).copy()
        rt.update(d2)
        expected["C"] = rt.infer(batch).copy()
        outputs = list(expected.values())
        if any(np.array_equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1:]):
            raise RuntimeError("two weight states give the same output: the check would be blind")
        return cls(batch, d1, d2, expected)


@dataclass
class Figures:
    """Counts of one run; `ok` says whether it passed."""

    seconds: float = 0.0
    requests: int = 0
    states: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    errors: int = 0
    server_errors: int = 0
    cycles: int = 0
    writer_requests: int = 0
    hung_threads: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.mismatches == self.errors == self.hung_threads == 0 and self.requests > 0
                and set(self.states) == {"A", "B", "C"})

    def summary(self) -> str:
        return (f"{self.seconds:.1f} s: {self.requests} inference requests "
                f"({self.requests / max(self.seconds, 1e-9):.0f}/s; state A {self.states['A']}, "
                f"B {self.states['B']}, C {self.states['C']}), {self.cycles} writer cycles "
                f"({self.writer_requests} update/rollback requests), "
                f"{self.mismatches} mismatches, {self.errors} errors "
                f"({self.server_errors} 5xx), {self.hung_threads} hung threads")


# numpy parses .npy headers with ``ast.literal_eval``, which CPython 3.11 does not make safe
# across threads (a spurious SystemError, CPython gh-106905): the readers parse one at a time.
_NPY_PARSE_LOCK = threading.Lock()


def _load_npy(content: bytes) -> np.ndarray:
    with _NPY_PARSE_LOCK:
        return np.load(io.BytesIO(content))


def _post_delta(client: httpx.Client, deltas: dict[str, np.ndarray]) -> httpx.Response:
    return client.post("/v1/update", json={"deltas": {n: d.tolist() for n, d in deltas.items()}})


def run(url: str, work: Workload, seconds: float, readers: int = 4,
        timeout: float = 60.0) -> Figures:
    """`readers` threads infer while one thread cycles A → B → C → B → A; see the module doc."""
    figures = Figures()
    lock = threading.Lock()
    npy = io.BytesIO()
    np.save(npy, work.batch)
    npy_body = npy.getvalue()
    json_body = {"inputs": {"input": work.batch.tolist()}}
    deadline = time.monotonic() + seconds

    def problem(text: str, status: int | None = None) -> None:
        with lock:
            figures.errors += 1
            figures.server_errors += status is not None and status >= 500
            if len(figures.problems) < 10:
                figures.problems.append(text)

    def reader(index: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            while time.monotonic() < deadline:
                try:
                    if index % 2:
                        r = client.post("/v1/infer", content=npy_body,
                                        headers={"content-type": "application/x-npy"})
                        got = _load_npy(r.content) if r.status_code == 200 else None
                    else:
                        r = client.post("/v1/infer", json=json_body)
                        got = (np.asarray(r.json()["outputs"]["output"], np.float32)
                               if r.status_code == 200 else None)
                except httpx.HTTPError as e:
                    problem(f"reader {index}: {e!r}")
                    continue
                if got is None:
                    problem(f"reader {index}: {r.status_code} {r.text[:200]}", r.status_code)
                    continue
                state = next((s for s, y in work.expected.items() if np.array_equal(got, y)), None)
                with lock:
                    figures.requests += 1
                    if state is None:
                        figures.mismatches += 1
                    else:
                        figures.states[state] += 1

    def writer() -> None:
        steps: list[tuple[str, Callable[[httpx.Client], httpx.Response]]] = [
            ("update d1", lambda c: _post_delta(c, work.d1)),
            ("update d2", lambda c: _post_delta(c, work.d2)),
            ("rollback", lambda c: c.post("/v1/rollback")),
            ("rollback 0", lambda c: c.post("/v1/rollback", json={"version": 0})),
        ]
        with httpx.Client(base_url=url, timeout=timeout) as client:
            while time.monotonic() < deadline:
                for name, step in steps:
                    try:
                        r = step(client)
                    except httpx.HTTPError as e:
                        problem(f"writer {name}: {e!r}")
                        continue
                    figures.writer_requests += 1
                    if r.status_code != 200:
                        problem(f"writer {name}: {r.status_code} {r.text[:200]}", r.status_code)
                    time.sleep(0.002)  # let the readers see every state
                figures.cycles += 1

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(readers)]
    threads.append(threading.Thread(target=writer, daemon=True))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + timeout + 10)
    figures.seconds = time.monotonic() - started
    figures.hung_threads = sum(t.is_alive() for t in threads)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--int8", action="store_true", help="serve the int8 model")
    args = parser.parse_args()
    work = Workload.build(args.int8)
    proc, url = start_server(DIGITS, *(["--int8", "--calib", str(CALIB)] if args.int8 else []))
    try:
        figures = run(url, work, args.seconds, readers=args.readers)
        health = httpx.get(f"{url}/healthz", timeout=10).status_code
    finally:
        stop(proc)
    print(f"{'int8' if args.int8 else 'float'}, {args.readers} readers + 1 writer, "
          + figures.summary() + f"; /healthz afterwards: {health}")
    for text in figures.problems:
        print("  ", text)
    return 0 if figures.ok and health == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
