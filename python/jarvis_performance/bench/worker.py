"""One benchmarked system in its own process, driven over a pipe by ``jarvis_performance.bench``.

    python -m jarvis_performance.bench.worker      # speaks JSON lines on stdin/stdout

Each system (PyTorch eager, onnxruntime fp32/int8, jarvis fp32/int8) runs in a process of its
own, so its peak RSS is its own and no other runtime's threads live beside it: onnxruntime's idle
worker threads spin, and two live sessions in one process steal each other's core. The parent
sends ``{"cmd": "load", ...}`` once, then ``{"cmd": "run", "n": N}`` per round (one untimed call,
then ``N`` timed calls; the reply holds their milliseconds), so rounds interleave across
processes; :class:`Worker` is the parent's side. Between its rounds the parent stops an idle
worker with ``SIGSTOP`` (``SIGCONT`` before its next round), so even spinning threads cannot take
a core from the system being timed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

#: The systems, in table order.
SYSTEMS = ("pytorch fp32", "onnxruntime fp32", "onnxruntime int8", "jarvis fp32", "jarvis int8")


@dataclass(frozen=True)
class SystemSpec:
    """What one worker loads and runs."""

    system: str
    #: The ``.onnx`` file (the int8 file for the int8 systems); for PyTorch, the module spec.
    model: str
    input_name: str
    #: The timed input's shape, batch axis included.
    shape: tuple[int, ...]
    threads: int


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (``VmHWM``), in MB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def _load(spec: SystemSpec) -> tuple[Callable[[], object], dict[str, Any]]:
    """The timed call of ``spec`` and figures only the loaded system knows."""
    from .prepare import timed_input

    x = timed_input(spec.shape)
    if spec.system.startswith("jarvis"):
        from .._native import Runtime

        rt = Runtime.load(spec.model, threads=spec.threads)
        if rt.quantized != spec.system.endswith("int8"):
            raise RuntimeError(f"{spec.model}: quantized={rt.quantized} for {spec.system}")
        info = {"held_mb": rt.get_status()["memory_allocated_mb"], "isa": rt.get_status()["isa"]}
        return (lambda: rt.infer(x)), info
    if spec.system.startswith("onnxruntime"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(spec.model, options, providers=["CPUExecutionProvider"])
        feed = {spec.input_name: x}
        return (lambda: session.run(None, feed)), {}
    if spec.system == "pytorch fp32":
        import torch

        from .prepare import load_torch_module

        torch.set_num_threads(spec.threads)
        module = load_torch_module(spec.model)
        xt = torch.from_numpy(x)
        weight_bytes = sum(t.numel() * t.element_size()
                           for t in [*module.parameters(), *module.buffers()])

        def run() -> object:
            with torch.inference_mode():
                return module(xt)

        return run, {"weights_mb": weight_bytes / 1e6}
    raise ValueError(f"unknown system {spec.system!r}")


def serve(commands: IO[str], replies: IO[str]) -> None:
    """Answer the parent's commands until ``quit`` or end of input."""
    run: Callable[[], object] | None = None
    for line in commands:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "load":
                spec = SystemSpec(**{**msg["spec"], "shape": tuple(msg["spec"]["shape"])})
                run, info = _load(spec)
                start = time.perf_counter()
                run()
                first = (time.perf_counter() - start) * 1e3
                start = time.perf_counter()
                run()
                reply: dict[str, Any] = {"first_ms": first,
                                         "warm_ms": (time.perf_counter() - start) * 1e3, **info}
            elif msg["cmd"] == "run":
                assert run is not None, "run before load"
                run()
                samples = []
                for _ in range(int(msg["n"])):
                    start = time.perf_counter()
                    run()
                    samples.append((time.perf_counter() - start) * 1e3)
                reply = {"ms": samples}
            elif msg["cmd"] == "stats":
                reply = {"peak_rss_mb": _peak_rss_mb(), "pid": os.getpid()}
            elif msg["cmd"] == "quit":
                return
            else:
                reply = {"error": f"unknown command {msg['cmd']!r}"}
        except Exception as err:  # reported to the parent, which shows it in the table
            reply = {"error": f"{type(err).__name__}: {err}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, spec: SystemSpec) -> None:
        env = {**os.environ, "JARVIS_PERF_THREADS": str(spec.threads),
               "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
        self.spec = spec
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jarvis_performance.bench.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.error: str | None = None
        self.load_info = self._ask({"cmd": "load", "spec": asdict(spec)})
        self.pause()

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one command and read its reply; after an error, answer with it instead."""
        assert self.process.stdin is not None and self.process.stdout is not None
        if self.error is not None:
            return {"error": self.error}
        try:
            self.process.stdin.write(json.dumps(msg) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        reply: dict[str, Any] = json.loads(line) if line else {
            "error": f"worker exited with status {self.process.wait()}"}
        if "error" in reply:
            self.error = str(reply["error"])
        return reply

    def run(self, n: int) -> list[float]:
        """``n`` timed calls (after one untimed), in milliseconds; empty after an error."""
        self.resume()
        try:
            return [float(v) for v in self._ask({"cmd": "run", "n": n}).get("ms", [])]
        finally:
            self.pause()

    def peak_rss_mb(self) -> float | None:
        """Peak RSS of the worker process so far."""
        self.resume()
        value = self._ask({"cmd": "stats"}).get("peak_rss_mb")
        return None if value is None else float(value)

    def pause(self) -> None:
        """Stop the idle process (its threads too) until :meth:`resume`."""
        if self.process.poll() is None and hasattr(signal, "SIGSTOP"):
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let the process run again."""
        if self.process.poll() is None and hasattr(signal, "SIGCONT"):
            os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        """Ask the process to quit; kill it if it does not."""
        self.resume()
        try:
            self._ask_quit()
            self.process.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.process.kill()
            self.process.wait()

    def _ask_quit(self) -> None:
        """Send ``quit`` (no reply comes) and close the worker's input."""
        assert self.process.stdin is not None
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()


def main() -> int:
    """Worker entry point: the protocol uses the original stdout; anything the loaded libraries
    print goes to stderr instead, so it cannot corrupt a reply."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
