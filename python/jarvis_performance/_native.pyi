"""Type stubs of the compiled module ``jarvis_performance._native``."""

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any, Literal, TypeAlias, final, overload

import numpy as np
import numpy.typing as npt

from jarvis_performance._status import Status
#: One image: a uint8 array (H×W grey, H×W×3 RGB, H×W×4 RGBA), an image file path, or the
#: encoded bytes of one (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM).
_Image: TypeAlias = npt.NDArray[np.uint8] | str | PathLike[str] | bytes | bytearray
#: A list (or any iterable) of images, or one N×H×W×C uint8 array.
_Images: TypeAlias = Iterable[_Image] | npt.NDArray[np.uint8]
#: ``mean`` / ``std``: one value for every channel, or one per channel.
_PerChannel: TypeAlias = float | Sequence[float] | npt.NDArray[Any]
_ResizeMode: TypeAlias = Literal["bilinear", "bilinear_cv2", "area", "nearest"]

__version__: str
__all__ = [
    "__version__",
    "Runtime",
    "TensorInfo",
    "TensorOwner",
    "BatchBuffer",
    "cli_main",
    "_panic_for_tests",
    "preprocess",
    "set_preprocessing",
    "get_preprocessing",
    "_vision_pool_idle_bytes",
    "_restore_runtime",
    "JarvisError",
    "ModelLoadError",
    "UnsupportedOpError",
    "InputError",
    "ConfigError",
    "UpdateError",
    "CalibrationError",
    "ImageError",
]

class JarvisError(Exception):
    """Base class of every error jarvis-performance raises."""

class ModelLoadError(JarvisError):
    """The file is not a model the runtime can load."""

class UnsupportedOpError(ModelLoadError):
    """The model uses an operator the runtime does not implement."""

class InputError(JarvisError):
    """An input or output name, dtype, rank or shape is wrong."""

class ConfigError(JarvisError):
    """An option (threads, batch size, …) is invalid."""

class UpdateError(JarvisError):
    """A weight update was refused; the model is unchanged."""

class CalibrationError(JarvisError):
    """Calibration data is missing or unusable."""

class ImageError(JarvisError):
    """An image could not be read or decoded."""

@final
class TensorInfo:
    """Name, shape and dtype of one model input or output."""

    @property
    def name(self) -> str:
        """The ONNX tensor name."""
    @property
    def shape(self) -> tuple[int | None, ...]:
        """The shape, with ``None`` for dynamic axes."""
    @property
    def dtype(self) -> str:
        """The NumPy dtype name (``"float32"``, ``"int64"``, ``"bool"``, …)."""

@final
class TensorOwner:
    """Keeps an output tensor alive while NumPy arrays view it (internal)."""

@final
class BatchBuffer:
    """Owns a :func:`preprocess` batch's memory while NumPy arrays view it, then returns it
    to the buffer pool (internal)."""

@final
class Runtime:
    """A loaded ONNX model ready for inference; safe to call from many threads at once."""

    @staticmethod
    def load(
        path: str | PathLike[str],
        *,
        threads: int | None = None,
        quantize: Literal["int8"] | None = None,
        calibration: Any = None,
        method: str | None = None,
        per_channel: bool = True,
        exclude: Sequence[str] = (),
        speed_fallback: bool = True,
        max_memory_mb: float | None = None,
        allow_non_finite: bool = False,
        max_cpu_percent: float | None = None,
        max_plans: int | None = None,
    ) -> Runtime:
        """Load an ONNX file, optionally quantized to INT8.

        A graph tract cannot type with symbolic axes (a ``Resize`` to a computed size, an
        ``If`` on a sample-rate input) still loads: it is typed for each input signature (every
        input's shape, and the value of small integer inputs) on the first call with it, and
        int8 parameters, calibrated at whatever shapes the calibration data has, apply to
        every signature.

        Args:
            path: the ``.onnx`` file.
            threads: threads used inside operators; defaults to ``JARVIS_PERF_THREADS``, else
                every core. During a call the other threads spin rather than sleep
                (``JARVIS_PERF_SPIN=0`` turns that off).
            quantize: ``"int8"`` to calibrate and run Conv/Gemm/MatMul layers in int8.
            calibration: with ``quantize="int8"``: a NumPy array (N, …) split into batches of
                16, an iterable of arrays or of ``{input name: array}`` dicts (``jp.Dataset``
                is one), or an onnxruntime ``CalibrationDataReader``.
            method: how activation ranges are chosen: ``"minmax"``, ``"percentile"``
                (99.999; ``"percentile:99.9"`` sets it), ``"entropy"`` or ``"mse"``; ``None``
                picks the default.
            per_channel: one weight scale per output channel (else per tensor).
            exclude: node or tensor names of layers to keep in float.
            speed_fallback: time each layer alone both ways on calibration data and keep float
                where its int8 op is consistently slower (the report gives both times). Layers
                whose int8 output is far from float (below 15 dB) stay float either way.
                Timings vary between runs, so two calibrations can pick different layers;
                ``False`` makes calibration reproducible bit for bit.
            max_memory_mb: refuse (``ConfigError``) any call whose tensors would need more,
                estimated from the graph's shapes before anything is allocated.
            allow_non_finite: let NaN/Inf into float inputs (by default they raise
                ``InputError``: tract's ReLU would turn NaN into 0 silently).
            max_cpu_percent: keep this process's CPU at or under this percent of one core
                while inference runs (100 = one core): fewer threads first, then pauses
                before calls; less when other processes keep the machine busy.
            max_plans: most plans kept, one per input signature, least recently used
                dropped first (default 8); the first call with a new signature builds its
                plan (logged at DEBUG), later ones reuse it.

        Raises:
            FileNotFoundError: the file does not exist.
            ModelLoadError: the file is not a valid ONNX model tract can analyse.
            UnsupportedOpError: the model uses an operator the runtime lacks.
            CalibrationError: calibration data missing, empty or malformed.
            ConfigError: ``threads``, ``quantize``, ``method`` or ``max_cpu_percent`` is
                invalid.
        """
    @staticmethod
    def from_bytes(
        data: bytes,
        *,
        source: str | None = None,
        threads: int | None = None,
        max_cpu_percent: float | None = None,
        max_memory_mb: float | None = None,
        allow_non_finite: bool = False,
        max_plans: int | None = None,
    ) -> Runtime:
        """Make a runtime from bytes ``to_bytes`` (or a file ``save``) produced; an int8
        runtime's bytes rebuild the same int8 plan without calibration data. ``source`` names
        the model in messages and logs; the other options are those of ``load``."""
    def to_bytes(self, *, learnable: bool = True) -> bytes:
        """The model as ONNX bytes: what ``save`` writes (``learnable`` as there)."""
    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the saved bytes and every load option (threads, CPU cap, memory limit,
        ``allow_non_finite``)."""
    def get_status(self) -> Status:
        """Measured figures of this runtime and process.

        ``cpu_usage``: this process's CPU over the last ~2 s, percent of one core (as ``top``
        shows it); ``memory_allocated_mb``: weights and model data the runtime holds;
        ``rss_mb``: resident memory of the process; ``inferences``: successful calls;
        ``latency_ms_p50``/``latency_ms_p99``: model run time over the last 1,024 calls
        (``None`` before the first); ``threads`` (now) and ``max_threads``; ``throttled``:
        the CPU cap held work back in the last 2 s; ``cpu_limit``, ``cpu_budget`` (after
        backing off for other processes), ``other_cpu_usage``, ``load_average``; ``isa``:
        the int8 kernels' instruction set (``avx512_vnni``, ``avx_vnni``, ``avx2`` or
        ``scalar``; ``JARVIS_PERF_ISA`` picks a lower one); ``plans_cached`` / ``max_plans``:
        plans specialised per input signature (shapes, small integer input values) kept now and
        at most; ``plan_cache_mb``: the weights those plans hold of their own.
        """
    def set_cpu_limit(self, percent: float | None) -> None:
        """Cap this process's CPU at ``percent`` of one core while inference runs; ``None``
        removes the cap.

        Raises:
            ConfigError: ``percent`` is not positive and finite.
        """
    @property
    def cpu_limit(self) -> float | None:
        """The CPU cap in percent of one core, or ``None``."""
    def save(self, path: str | PathLike[str], *, learnable: bool = True) -> None:
        """Write the model to ``path`` atomically: for an int8 runtime, standard ONNX in QDQ form
        (int8 weights, scales, zero points) that onnxruntime runs, so ``Runtime.load(path)``
        rebuilds the same int8 plan, bit for bit, without calibration data.

        Args:
            path: the file to write (a temporary file next to it, then a rename).
            learnable: keep the float master weights and calibration statistics, so the
                reloaded runtime can be updated (``update``, ``learn``, ``recalibrate``).
                ``False`` writes a deployable file of int8 codes, scales and biases only —
                about a quarter of the float model — whose reload refuses updates with
                ``UpdateError``. A float runtime writes its float model either way.

        Raises:
            JarvisError: ``learnable=True`` on a runtime loaded from a deployable file.
        """
    def update(self, deltas: Mapping[str, npt.ArrayLike], *, scale: float = 1.0) -> int:
        """Add ``scale * delta`` to each named float weight (ONNX initializer names: the
        ``state_dict`` keys of an exported PyTorch model) and return the new version. All deltas
        apply at once; inference in other threads goes on, each call seeing one version. Int8
        layers are re-quantized with fresh per-channel scales.

        Raises:
            UpdateError: unknown name, wrong shape, dtype other than float32, NaN/Inf in a delta
                or in the result, or ``DISABLE_CONTINUOUS_LEARNING=true``; nothing changes.
        """
    def learn(self, x: npt.ArrayLike | Mapping[str, npt.ArrayLike], labels: npt.ArrayLike, *,
              lr: float = 0.01, layer: str | None = None) -> dict[str, Any]:
        """One step of softmax cross-entropy gradient descent on a linear layer (default: the
        model's last; or by layer or weight name) from the features the model computes for
        ``x``, against integer ``labels``. Returns ``version``, ``layer``, ``weight``, and the
        batch's ``loss`` and ``accuracy`` before the step.

        Raises:
            UpdateError: labels out of range or not one per feature row, ``lr <= 0``, a layer
                that is not a plain linear layer, or learning disabled; nothing changes.
        """
    def recalibrate(self, calibration: Any, *, method: str | None = None) -> int:
        """Calibrate again on ``calibration`` (same forms as ``load``) with the current weights,
        as a new version: fresh activation ranges after updates moved them. Returns the version.

        Raises:
            UpdateError: a float runtime, or learning disabled.
            CalibrationError: the data is empty or malformed.
        """
    def rollback(self, version: int | None = None) -> int:
        """Return to ``version`` (default: the previous one), bit for bit; later versions leave
        the history. Returns the version now current."""
    @property
    def version(self) -> int:
        """The version of the weights inference runs on."""
    @property
    def versions(self) -> list[int]:
        """The versions ``rollback`` can return to, oldest first, the current one last."""
    def set_history(self, versions: int) -> None:
        """Keep at most ``versions`` versions (the current one included); default 8."""
    @property
    def weight_names(self) -> list[str]:
        """Names of the float weights ``update`` accepts, sorted."""
    def weights(self, name: str) -> npt.NDArray[np.float32]:
        """A float32 copy of the current value of weight ``name``."""
    @property
    def quantized(self) -> bool:
        """Whether the model runs with int8 layers."""
    @property
    def learnable(self) -> bool:
        """Whether ``update``, ``learn`` and ``recalibrate`` can change this runtime: ``False``
        for one loaded from a deployable file (``save(path, learnable=False)``)."""
    def quantization_report(self) -> list[dict[str, Any]]:
        """Per Conv/Gemm/MatMul layer: ``name``, ``kind``, ``int8``, ``reason`` (why it stayed
        float: an unsupported form, ``exclude``, or an int8 op measured slower than float on
        calibration data, with both times), ``sqnr_db`` and ``cosine`` against float on
        calibration data, ``input`` (``"per-tensor"``; ``"per-row"`` for a linear layer whose
        rows, such as a transformer's tokens, are each quantized on their own range as it runs,
        chosen where calibration measured it closer to float; or ``"per-channel lattice"`` for
        8-bit data such as a normalised image, quantized losslessly on each channel's own step;
        ``None`` for float layers) and
        ``bias_corrected`` (the bias absorbs the mean shift of the quantized weights) and
        ``rounding`` (``"data-aware"``: codes chosen for the output error from the input's patch
        statistics, for depthwise and other few-weight filters; ``"nearest"``; ``None`` for float
        layers); int8 layers worst first, then float ones. Empty for a float runtime."""
    def quantization_summary(self) -> dict[str, Any] | None:
        """Calibration and weight-memory figures of a quantized runtime (``None`` for float):
        ``method``, ``per_channel``, ``batches``, ``samples``, ``calibration_bytes``,
        ``float_weight_bytes``, ``int8_weight_bytes``, ``linked_outputs`` (int8 layer outputs
        handed to the next int8 layers, or to a max pool before them, as u8 codes)."""
    @overload
    def infer(self, x: Mapping[str, npt.ArrayLike]) -> dict[str, npt.NDArray[Any]]: ...
    @overload
    def infer(self, x: npt.ArrayLike) -> npt.NDArray[Any]:
        """Run the model.

        An array feeds the model's only input and the first output is returned; a dict
        ``{input name: array}`` feeds inputs by name and every output is returned in a dict.
        The GIL is released while the model runs.

        Raises:
            InputError: unknown or missing input, wrong dtype, rank or shape.
        """
    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, npt.ArrayLike]
    ) -> list[npt.NDArray[Any]]:
        """onnxruntime-style: return the named outputs (all if ``None``) in the order asked."""
    def infer_images(
        self,
        images: _Images,
        *,
        mean: _PerChannel | None = None,
        std: _PerChannel | None = None,
        size: int | tuple[int, int] | None = None,
        layout: Literal["NCHW", "NHWC"] | None = None,
        resize: _ResizeMode | None = None,
        crop: Literal["center", "none"] | None = None,
        keep_aspect: bool | None = None,
        channels: Literal["RGB", "BGR"] | None = None,
        dtype: npt.DTypeLike | None = None,
        pad: int | None = None,
        draft: bool | None = None,
    ) -> npt.NDArray[Any]:
        """Preprocess ``images`` as :func:`preprocess` does, straight into the model's only
        input, and run the model; returns the first output.

        Each option left ``None`` comes from the preprocessing stored with the model
        (:func:`set_preprocessing`, :attr:`preprocessing`), else from the model's input shape
        (``size`` and ``layout``: ``(N, 3, H, W)`` is NCHW, ``(N, H, W, 3)`` NHWC), else the
        defaults of :func:`preprocess`. The batch has the input's element type (float32,
        float16 or uint8; ``dtype``, if given, must agree). Float inputs need ``mean`` and
        ``std`` given or stored; ``crop="none"`` overrides a stored ``"center"``.

        Raises:
            ImageError: an image cannot be read or decoded (the message names its index).
            InputError: no images, or the model does not take one float32/float16/uint8
                image batch.
            ConfigError: an option is invalid, missing, or the stored record is malformed.
        """
    @property
    def preprocessing(self) -> dict[str, Any] | None:
        """The preprocessing stored with the model (``jarvis_performance.preprocess``
        metadata, see :func:`set_preprocessing`) as a dict of the options it sets, or
        ``None``.

        Raises:
            ConfigError: the stored record is malformed.
        """
    @property
    def inputs(self) -> list[TensorInfo]:
        """The model's inputs."""
    @property
    def outputs(self) -> list[TensorInfo]:
        """The model's outputs."""
    @property
    def max_memory_mb(self) -> float | None:
        """The memory limit per call in MB (10^6 bytes) given at load, or ``None``."""
    @property
    def allow_non_finite(self) -> bool:
        """Whether NaN and ±Inf are let into float inputs (``allow_non_finite`` at load)."""
    @property
    def threads(self) -> int:
        """Threads used inside operators."""

@overload
def preprocess(
    images: _Images,
    *,
    size: int | tuple[int, int],
    mean: _PerChannel | None = None,
    std: _PerChannel | None = None,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    resize: _ResizeMode = "bilinear",
    crop: Literal["center", "none"] | None = None,
    keep_aspect: bool = False,
    channels: Literal["RGB", "BGR"] = "RGB",
    dtype: None = None,
    pad: int = 0,
    draft: bool = True,
    out: None = None,
) -> npt.NDArray[np.float32]: ...
@overload
def preprocess(
    images: _Images,
    *,
    size: int | tuple[int, int],
    mean: _PerChannel | None = None,
    std: _PerChannel | None = None,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    resize: _ResizeMode = "bilinear",
    crop: Literal["center", "none"] | None = None,
    keep_aspect: bool = False,
    channels: Literal["RGB", "BGR"] = "RGB",
    dtype: npt.DTypeLike | None = None,
    pad: int = 0,
    draft: bool = True,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """Decode, resize, crop and normalize ``images`` into one contiguous batch.

    Images are processed in parallel in Rust with the GIL released, and each is written once
    into its slot of the returned array (no copy back to NumPy).

    Args:
        images: a list of images: uint8 arrays (H×W grey, H×W×3 RGB, H×W×4 RGBA whose alpha
            is dropped), paths (``str`` or ``os.PathLike``) or encoded bytes; or one N×H×W×C
            uint8 array.
        size: output side (square) or ``(height, width)``.
        mean, std: per-channel (or one for all) in 0–1 units:
            ``out = (pixel / 255 - mean) / std``. Required for float output (``mean=0,
            std=1`` for plain 0–1 scaling); not accepted for uint8 output.
        layout: ``"NCHW"`` → ``(N, 3, H, W)``; ``"NHWC"`` → ``(N, H, W, 3)``.
        resize: ``"bilinear"`` (antialiased on downscale, as Pillow's ``BILINEAR`` and
            torchvision), ``"bilinear_cv2"`` (as ``cv2.resize(INTER_LINEAR)``, no antialias),
            ``"area"`` (box average, as Pillow's ``BOX``) or ``"nearest"``.
        crop: ``"center"`` scales the image to cover ``size`` and cuts the overflow evenly
            (``None``/``"none"``: no crop).
        keep_aspect: without ``crop``, fit the image inside ``size`` (aspect kept) and fill
            the centred margins with ``pad``.
        channels: ``"RGB"`` or ``"BGR"`` output order (inputs are RGB).
        dtype: ``numpy.float32`` (default), ``numpy.float16`` (the float32 values rounded to
            nearest, in the same pass) or ``numpy.uint8`` (the resized pixels, unnormalized,
            for models that take uint8 input). Default: ``out``'s dtype if given.
        pad: pixel value (0–255, before normalization) of letterbox margins.
        draft: decode JPEGs at 1/4 or 1/8 scale when that still leaves twice the output
            size (much faster; ``False`` decodes at full size, as Pillow does).
        out: a C-contiguous array of the batch's shape and dtype to write into and return.
            Without it, the batch's memory comes from a small pool of buffers that earlier
            batches freed (up to 4 buffers, 256 MB, kept idle), so a steady stream of calls
            does not pay for paging in a fresh batch each time.

    Returns:
        A C-contiguous array of ``N`` images (``N`` may be 0), or ``out``.

    Raises:
        ImageError: an image cannot be read, decoded or used (wrong dtype or shape); the
            message names its index and file.
        InputError: ``images`` is not a list of images, or ``out`` does not fit the batch.
        ConfigError: an option is invalid.
    """

def set_preprocessing(
    path: str | PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    mean: _PerChannel | None = None,
    std: _PerChannel | None = None,
    layout: Literal["NCHW", "NHWC"] | None = None,
    resize: _ResizeMode | None = None,
    crop: Literal["center", "none"] | None = None,
    keep_aspect: bool | None = None,
    channels: Literal["RGB", "BGR"] | None = None,
    pad: int | None = None,
    draft: bool | None = None,
) -> None:
    """Store image preprocessing in the ONNX file at ``path`` (JSON in its ``metadata_props``
    under ``"jarvis_performance.preprocess"``), so that ``Runtime.infer_images(images)`` and
    ``jarvis-perf run model.onnx --input input=photo.jpg`` need no options.

    Options left ``None`` are not stored (size and layout then come from the model input).
    The file is rewritten atomically (temporary file + rename); other metadata, the graph and
    the weights are kept as they are. With every option ``None`` the record is removed.

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: the file is not an ONNX model.
        ConfigError: an option is invalid (nothing is written).
    """

def get_preprocessing(path: str | PathLike[str]) -> dict[str, Any] | None:
    """The preprocessing stored in the ONNX file at ``path`` (see :func:`set_preprocessing`)
    as a dict of the options it sets, or ``None``.

    Raises:
        FileNotFoundError, ModelLoadError: as for :func:`set_preprocessing`.
        ConfigError: the stored record is malformed.
    """

def _vision_pool_idle_bytes() -> int:
    """Bytes held by idle pooled output buffers of :func:`preprocess` (for the tests)."""

def _restore_runtime(
    data: bytes,
    source: str,
    threads: int | None = None,
    max_cpu_percent: float | None = None,
    max_memory_bytes: int | None = None,
    allow_non_finite: bool = False,
    max_plans: int | None = None,
) -> Runtime:
    """Rebuild a pickled ``Runtime`` (the target of ``Runtime.__reduce__``) with every load
    option; the last two default so that older four-argument pickles still load."""

def cli_main(argv: list[str]) -> int:
    """Run the ``jarvis-perf`` command line with ``argv`` (program name first)."""

def _panic_for_tests(message: str) -> None:
    """Panic inside a native call on purpose; raises ``JarvisError`` (tests of the FFI guard)."""

