"""Every benchmark of the project, run as ``python -m jarvis_performance.bench`` (see
:mod:`jarvis_performance.bench.compare` for the options): ``compare`` (jarvis against onnxruntime
and PyTorch, one process per system: ``prepare``, ``worker``), ``learning`` (update and learn),
``vision`` (image preprocessing; ``photos`` loads the natural photos it uses), ``zoo``
(third-party models), and ``text`` (a sentence encoder against onnxruntime fp32 and dynamic int8).

Nothing is imported here eagerly, so ``python -m jarvis_performance.bench.worker`` runs the
worker module once.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark command line (``python -m jarvis_performance.bench --help``)."""
    from .compare import main as compare_main

    return compare_main(argv)
