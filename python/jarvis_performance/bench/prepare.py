"""What the side-by-side benchmark needs before anything is timed: model files, calibration data,
onnxruntime's int8 file, jarvis's int8 file, and the weight sizes of each.

Both int8 systems are calibrated on the same array (:func:`calibration_data`). onnxruntime's file
is made the way its documentation asks for: ``quant_pre_process`` (shape inference and ONNX
graph optimisation; it removes the exporter's ``Identity`` nodes that otherwise keep onnxruntime
from fusing QDQ into ``QLinearConv``), then ``quantize_static`` in QDQ form with per-channel s8
weights and u8 activations — onnxruntime's fast int8 path on VNNI CPUs (should pre-processing
leave a layer in float, as it does for a bias shared by several convolutions, the plain
quantization is tried too and the better kept). The file is cached under a name keyed by the
model bytes, the calibration data and the onnxruntime version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Shipped models are looked up in ``./models`` (run from the repository root).
SHIPPED_DIR = Path("models")
#: Input shape used when a name is exported with PyTorch.
IMAGE_SHAPE = (1, 3, 224, 224)
#: PyTorch classes of the shipped models (``models/make_models.py``), for ``--torch``.
SHIPPED_TORCH = {"digits_cnn": "DigitsCNN", "digits_mlp": "DigitsMLP"}
#: Calibration samples shared by both int8 systems, and the seed of their values.
CALIBRATION_SAMPLES = 32
CALIBRATION_SEED = 1

MB = 1e6


@dataclass(frozen=True)
class BenchModel:
    """A model to time: its file, input, and where PyTorch eager gets the same network."""

    name: str
    path: Path
    input_name: str
    #: The input shape with the batch axis left out.
    sample_shape: tuple[int, ...]
    #: A :func:`jarvis_performance.export.load_module` spec or ``"file.py:Class"``; ``None``
    #: when no PyTorch module is known (an ``.onnx`` path).
    torch_spec: str | None
    #: Bytes of float initializers in the file (what the float systems compute with).
    float_weight_bytes: int


def resolve_model(name: str) -> Path:
    """The file of a shipped model name, an ``.onnx`` path, or an exportable name."""
    return bench_model(name).path


def bench_model(name: str) -> BenchModel:
    """A shipped model name (``digits_cnn``), an ``.onnx`` path, or an exportable name
    (exported once into the model cache; needs the ``export`` extra)."""
    torch_spec: str | None
    if name.endswith(".onnx"):
        path, torch_spec = Path(name), None
    elif (SHIPPED_DIR / f"{name}.onnx").exists():
        path = SHIPPED_DIR / f"{name}.onnx"
        cls = SHIPPED_TORCH.get(name)
        torch_spec = f"{SHIPPED_DIR / 'make_models.py'}:{cls}" if cls else None
    else:
        from ..export import cached_export

        path, torch_spec = cached_export(name, input_shape=IMAGE_SHAPE), name
    import onnx

    model = onnx.load(str(path))
    (graph_input,) = [i for i in model.graph.input
                      if i.name not in {t.name for t in model.graph.initializer}]
    dims = graph_input.type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        raise SystemExit(f"{name}: only the batch axis may be dynamic for this benchmark")
    return BenchModel(
        name=path.stem if name.endswith(".onnx") else name,
        path=path,
        input_name=graph_input.name,
        sample_shape=tuple(d.dim_value for d in dims),
        torch_spec=torch_spec,
        float_weight_bytes=_initializer_bytes(model, float_only=True),
    )


def _initializer_bytes(model: Any, *, float_only: bool) -> int:
    """Bytes of the model's initializers (and ``Constant`` node tensors)."""
    from onnx import helper

    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                if a.name == "value"]
    total = 0
    for t in tensors:
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        if float_only and dtype != np.float32:
            continue
        total += int(np.prod(t.dims, dtype=np.int64)) * dtype.itemsize
    return total


def calibration_data(model: BenchModel) -> np.ndarray:
    """The calibration array both int8 systems get: standard-normal samples, fixed seed
    (enough for timing; accuracy is what the test suite checks)."""
    shape = (CALIBRATION_SAMPLES, *model.sample_shape)
    return np.random.default_rng(CALIBRATION_SEED).standard_normal(shape).astype(np.float32)


def timed_input(shape: tuple[int, ...]) -> np.ndarray:
    """The timed input of ``shape`` (batch axis included): standard-normal values, fixed seed,
    the same for every system."""
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def ort_int8_path(model: BenchModel, calib: np.ndarray, *, cache_dir: Path | None = None) -> Path:
    """onnxruntime's int8 QDQ file of ``model`` (pre-processed, then ``quantize_static``),
    cached by model bytes, calibration data and onnxruntime version. Should that leave any
    Conv/Gemm/MatMul in float in onnxruntime's optimised graph, the model is also quantized
    without pre-processing and the file with fewer float layers is kept."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..export import default_cache_dir

    key = hashlib.sha256(model.path.read_bytes())
    key.update(calib.tobytes())
    key.update(ort.__version__.encode())
    folder = cache_dir or default_cache_dir()
    out = folder / f"{model.path.stem}.ort{ort.__version__}-pre-qdq-u8s8-{key.hexdigest()[:12]}.onnx"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    name = model.input_name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        """One calibration sample per batch, in order."""

        def __init__(self) -> None:
            self.items = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(dir=folder) as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(model.path), str(pre))
        chosen = Path(work) / "int8-pre.onnx"
        _quantize(pre, chosen, Reader())
        if ort_int8_layers(chosen, Path(work))[1] > 0:
            # Some graphs fuse better without pre-processing (a bias shared by several
            # convolutions stays shared after it): keep whichever leaves fewer float layers.
            plain = Path(work) / "int8-plain.onnx"
            _quantize(model.path, plain, Reader())
            if ort_int8_layers(plain, Path(work))[1] < ort_int8_layers(chosen, Path(work))[1]:
                chosen = plain
        chosen.replace(out)
    return out


def _quantize(source: Path, out: Path, reader: Any) -> None:
    """onnxruntime's ``quantize_static``: QDQ, per-channel s8 weights, u8 activations."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(source), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def ort_int8_weight_bytes(path: Path) -> int:
    """Bytes of every initializer in onnxruntime's int8 file (int8 codes, scales, zero points,
    float biases): what the file gives onnxruntime to run with."""
    import onnx

    return _initializer_bytes(onnx.load(str(path)), float_only=False)


@dataclass(frozen=True)
class JarvisInt8:
    """jarvis's int8 model saved once per run, and its weight figures."""

    path: Path
    #: Weights the int8 plan computes with: int8 layers' packed weights plus the float
    #: weights of layers left in float.
    weight_bytes: int
    int8_layers: int
    float_layers: int


def jarvis_int8(model: BenchModel, calib: np.ndarray, folder: Path) -> JarvisInt8:
    """Calibrate and quantize ``model`` with jarvis on ``calib`` and save the int8 model in
    ``folder``: worker processes load the saved file, which rebuilds the same int8 plan without
    calibration, so their peak RSS is that of serving, not of calibrating."""
    from .._native import Runtime

    rt = Runtime.load(model.path, quantize="int8", calibration=calib)
    summary = rt.quantization_summary()
    assert summary is not None
    report = rt.quantization_report()
    out = folder / f"{model.name}.jarvis-int8.onnx"
    rt.save(out)
    weights = (int(summary["int8_weight_bytes"]) + model.float_weight_bytes
               - int(summary["float_weight_bytes"]))
    int8_layers = sum(1 for layer in report if layer["int8"])
    return JarvisInt8(out, weights, int8_layers, len(report) - int8_layers)


def load_torch_module(spec: str) -> Any:
    """The PyTorch module of ``spec``: ``"path/file.py:Class"`` (a shipped model's class,
    randomly initialised: float timing does not depend on the values) or a
    :func:`jarvis_performance.export.load_module` spec (seeded as the export was)."""
    import torch

    torch.manual_seed(0)
    if ".py:" in spec:
        file, cls = spec.rsplit(":", 1)
        module_spec = importlib.util.spec_from_file_location("_bench_torch_models", file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return getattr(module, cls)().eval()
    from ..export import load_module

    return load_module(spec).eval()


#: Operator types of onnxruntime's optimised graph that compute a Conv/Gemm/MatMul in int8, and
#: those that compute one in float.
ORT_INT8_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
ORT_FLOAT_OPS = frozenset({"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})


def ort_int8_layers(path: Path, folder: Path) -> tuple[int, int]:
    """How many Conv/Gemm/MatMul layers onnxruntime runs in int8 and in float once it has
    optimised ``path`` (its fused QDQ → ``QLinearConv`` graph, written to ``folder``)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{path.stem}.ort-optimized.onnx")
    options.log_severity_level = 3  # not the warning that the file is hardware-specific
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    return sum(op in ORT_INT8_OPS for op in ops), sum(op in ORT_FLOAT_OPS for op in ops)
