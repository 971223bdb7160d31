"""The file names of an artifact, a backbone and a pack: the contract between stages, in one place.

An artifact directory (`compress run`, `compress export`, `compress materialize`):

    onnx/model.onnx        GRAPH: the shipped graph (packed low-bit weights, int8 kernels), where Hugging Face-style
                           loaders look (artifacts written before that layout keep it at the top: LEGACY_GRAPH)
    onnx/model.ort         MOBILE_GRAPH (+ MOBILE_OPERATORS): `compress export DIR --format ort`
    onnx/model_with_tokenizer.onnx  GRAPH_WITH_TOKENIZER: `compress export DIR --with-tokenizer`
    config.json            HF_CONFIG: what Optimum and Transformers.js read (compress.hf_layout)
    mask.npz               MASKS: the learned binary masks (compress.maskcodec)
    calibration.npz        CALIBRATION: the task's calibration tokens, so that a re-export quantizes alike
    trainable.safetensors  TRAINABLE: what the task trained (the head; every weight in mode=weights)
    tokenizer files        TOKENIZER_FILES
    manifest.json          MANIFEST: compress.manifest, SHA-256 of every other file
    report.md              REPORT: the human summary

A backbone directory (`compress quantize`): BACKBONE_WEIGHTS, HF_CONFIG, the tokenizer, MANIFEST, BACKBONE_README.
A pack directory (`compress pack`): PACK_SHARED (the backbone's weights, byte for byte), the tokenizer, per task
``task_graph(name)`` and ``task_manifest(name)``, MANIFEST, REPORT.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "manifest.json"
REPORT = "report.md"
GRAPH = "onnx/model.onnx"
LEGACY_GRAPH = "model.onnx"
MOBILE_GRAPH = "onnx/model.ort"
MOBILE_OPERATORS = "onnx/model.required_operators.config"
LEGACY_MOBILE = ("model.ort", "model.required_operators.config")  # where artifacts before the Hugging Face layout had them
GRAPH_WITH_TOKENIZER = "onnx/model_with_tokenizer.onnx"
HF_CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = (TOKENIZER, TOKENIZER_CONFIG, "special_tokens_map.json", "vocab.txt")
MASKS = "mask.npz"
CALIBRATION = "calibration.npz"
TRAINABLE = "trainable.safetensors"
BACKBONE_WEIGHTS = "weights.safetensors"  # a backbone's shared file; its SHA-256 is the backbone's identity
BACKBONE_README = "README.md"
PACK_SHARED = "backbone.safetensors"  # a pack's copy of its backbone's weights, which every task graph points into


def task_graph(task: str) -> str:
    """A pack's graph of one task."""
    return f"{task}.onnx"


def task_manifest(task: str) -> str:
    """A pack's copy of one task's artifact manifest (gzipped JSON, for `compress materialize`)."""
    return f"{task}.json.gz"


def graph_path(directory: str | Path) -> Path:
    """The shipped graph of an artifact directory (onnx/model.onnx, or model.onnx in older artifacts)."""
    d = Path(directory)
    return d / GRAPH if (d / GRAPH).is_file() or not (d / LEGACY_GRAPH).is_file() else d / LEGACY_GRAPH


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
