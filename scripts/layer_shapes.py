"""Print the distinct Conv/Gemm layer shapes of the benchmark models at batch 1, as the Rust table
``benches/int8.rs`` times (``SHAPES``).

    python scripts/layer_shapes.py [resnet18 mobilenet_v2 efficientnet_lite0]

Exports the models into the model cache if needed (``export`` extra), runs ONNX shape inference
with the batch axis fixed to 1, and prints one line per distinct geometry with how many layers
of the model have it.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from typing import Any

import onnx
from onnx import helper, numpy_helper, shape_inference
from onnxruntime.quantization.shape_inference import quant_pre_process

from jarvis_performance.export import cached_export

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_lite0")


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def layer_shapes(name: str) -> Counter[tuple[Any, ...]]:
    """(kind, cin, cout, h, w, k, stride, pad before, pad after) → number of layers, at batch 1 (a Conv after a
    ``Pad`` node is listed with the padded input and ``pad`` 0)."""
    model = onnx.load(str(cached_export(name)))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with tempfile.TemporaryDirectory() as folder:
        # onnxruntime's pre-processing folds the shape computations of EfficientNet's
        # static-padding Pad nodes, so every Conv input gets a known shape.
        onnx.save(model, f"{folder}/in.onnx")
        quant_pre_process(f"{folder}/in.onnx", f"{folder}/out.onnx")
        model = shape_inference.infer_shapes(onnx.load(f"{folder}/out.onnx"))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input]}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    found: Counter[tuple[Any, ...]] = Counter()
    for node in model.graph.node:
        if node.op_type == "Conv":
            a = _attrs(node)
            _, cin, h, w = shapes[node.input[0]]
            assert h == w, node.name
            cout, _, kh, kw = weights[node.input[1]]
            assert kh == kw and len(set(a.get("strides", [1]))) == 1, node.name
            group = a.get("group", 1)
            kind = "depthwise" if group == cin and group > 1 else "conv"
            assert kind == "depthwise" or group == 1, node.name
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[0] == pads[1] and pads[2] == pads[3], node.name
            found[(kind, cin, cout, h, w, kh, a.get("strides", [1])[0], pads[0], pads[2])] += 1
        elif node.op_type == "Gemm":
            cout, cin = weights[node.input[1]]
            found[("linear", cin, cout, 1, 1, 1, 1, 0, 0)] += 1
    return found


def main(argv: list[str]) -> int:
    """Print the Rust rows: each geometry once, with the models (and layer counts) using it."""
    used: dict[tuple[Any, ...], list[str]] = {}
    for name in argv or MODELS:
        for shape, count in layer_shapes(name).items():
            used.setdefault(shape, []).append(f"{name}×{count}")
    for (kind, cin, cout, h, w, k, s, p0, p1), models in used.items():
        print(f'    Layer {{ used: "{" ".join(models)}", kind: Kind::{kind.capitalize()}, '
              f"cin: {cin}, cout: {cout}, hw: {h}, k: {k}, stride: {s}, pad: [{p0}, {p1}] }},")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
