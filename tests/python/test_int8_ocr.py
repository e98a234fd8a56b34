"""The OCR recognizers of the zoo in int8 read the same text as in float: PP-OCRv4's CTC
recognizer (SVTR neck: attention) on text lines rendered with a real font, decoded greedily
(argmax per step, repeats merged, blanks dropped) into class indices, compared sequence for
sequence with the float model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import jarvis_performance as jp
from jarvis_performance import zoo

pytestmark = pytest.mark.zoo

MODELS = {m.id: m for m in zoo.selected()}

CALIBRATION_LINES = [
    "Meeting moved to Thursday 10:30",
    "Total due: 1,284.50 EUR",
    "Platform 4 - Express to Airport",
    "Keep refrigerated below 5C",
]
TEST_LINES = [
    "Invoice No. 2026-1206",
    "Delivery address: 12 Baker Street",
    "Battery at 15%, plug in soon",
    "Open Monday to Friday 9am - 6pm",
    "Password expires in 7 days",
    "Flight LH 2394 delayed 45 min",
    "Order #48213 has shipped",
    "Temperature 21.5 C  Humidity 40%",
]


def text_lines(texts: list[str], *, height: int = 48, size: int = 28) -> np.ndarray:
    """``texts`` in black on white, left-aligned on lines ``height`` high and as wide as the
    longest (a multiple of 8), as PP-OCR's recognizer takes them: NCHW float32,
    ``(pixel / 255 − 0.5) / 0.5``."""
    font = ImageFont.load_default(size=size)
    width = max(int(font.getlength(text)) for text in texts) + 16
    width = -(-width // 8) * 8
    lines = []
    for text in texts:
        image = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(image).text((8, (height - size) // 2), text, fill="black", font=font)
        lines.append(np.asarray(image, dtype=np.float32) / 255.0)
    return ((np.stack(lines) - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()


def greedy_ctc(probabilities: np.ndarray) -> list[list[int]]:
    """Class indices per sequence of ``[batch, steps, classes]`` (class 0 is the blank)."""
    decoded = []
    for steps in probabilities.argmax(axis=-1):
        merged = [int(c) for i, c in enumerate(steps) if i == 0 or c != steps[i - 1]]
        decoded.append([c for c in merged if c != 0])
    return decoded


@pytest.fixture(scope="module")
def recognizer() -> Path:
    path, _ = zoo.fetch_one(MODELS["ppocr4_rec"])
    return path


@pytest.mark.xfail(strict=True, reason=(
    "3 of 8 lines gain one class (twice a space) at near-tie CTC steps: each int8 layer alone "
    "is >= 21 dB from float, but the error accumulates to 5-18 dB by the SVTR neck, even with "
    "the depthwise layers in float"))
def test_int8_recognizer_reads_the_same_text_as_float(recognizer: Path) -> None:
    # Batches of two: tract drops a batch axis of 1 from the graph it types for that shape.
    calibration = [{"x": text_lines(CALIBRATION_LINES[i:i + 2])} for i in range(0, 4, 2)]
    float_rt = jp.Runtime.load(recognizer)
    int8_rt = jp.Runtime.load(recognizer, quantize="int8", calibration=calibration)
    report = int8_rt.quantization_report()
    assert sum(layer["int8"] for layer in report) >= 20, [
        (layer["name"], layer["reason"]) for layer in report if not layer["int8"]]
    lines = text_lines(TEST_LINES)
    want = greedy_ctc(float_rt.infer(lines))
    have = greedy_ctc(int8_rt.infer(lines))
    # The float model reads the lines: about one class per character.
    for line, indices in zip(TEST_LINES, want):
        assert len(indices) >= len(line.replace(" ", "")) * 0.8, (line, indices)
    mismatched = [line for line, w, h in zip(TEST_LINES, want, have) if w != h]
    assert not mismatched, f"int8 reads differently: {mismatched}"
