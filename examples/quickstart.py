"""Load the shipped digits CNN, classify held-out digits in float and in INT8.

    python examples/quickstart.py        (from the repository root, after `pip install .`)
"""

from pathlib import Path

import numpy as np

import jarvis_performance as jp

MODELS = Path(__file__).resolve().parents[1] / "models"

rt = jp.Runtime.load(MODELS / "digits_cnn.onnx")
print(rt, rt.inputs, rt.outputs)
x = np.load(MODELS / "digits_test.npy")
labels = np.load(MODELS / "digits_test_labels.npy")
print(f"float accuracy {(rt.infer(x).argmax(1) == labels).mean():.4f}")

rt8 = jp.Runtime.load(MODELS / "digits_cnn.onnx", quantize="int8",
                      calibration=np.load(MODELS / "digits_calib.npy"))
print(f"int8 accuracy  {(rt8.infer(x).argmax(1) == labels).mean():.4f}")
for layer in rt8.quantization_report():
    if layer["int8"]:
        print(f"  {layer['name']:<32} {layer['kind']:<10} SQNR {layer['sqnr_db']:.1f} dB")
    else:  # kept float: an unsupported form, excluded, or int8 measured slower here
        print(f"  {layer['name']:<32} float      {layer['reason']}")
