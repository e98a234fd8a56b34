"""Calibration data: ``Dataset(iterable, transform=None)`` yields batches for ``Runtime.load``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Dataset(Generic[T]):
    """Wraps any iterable of samples, applying ``transform`` to each as it is read.

    Each transformed item must be a batch: an array for a one-input model, or a dict
    ``{input name: array}``. The iterable is read once per pass, lazily, so a generator over
    files on disk never needs to fit in memory::

        def frames():
            for path in sorted(Path("calib").glob("*.npy")):
                yield np.load(path)

        rt = jp.Runtime.load("model.onnx", quantize="int8", calibration=jp.Dataset(frames()))
    """

    def __init__(self, source: Iterable[T], transform: Callable[[T], Any] | None = None) -> None:
        self._source = source
        self._transform = transform

    def __iter__(self) -> Iterator[Any]:
        for item in self._source:
            yield self._transform(item) if self._transform is not None else item
