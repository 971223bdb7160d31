"""The quantized frozen weights: quantize a model's encoder, and the backbone artifact every task can share.

``quantize_(model, config, calibration)`` replaces the target weights in place by their dequantized
values (so that the mask is learned on exactly the weights that ship) and returns their integer form:
round to nearest, or GPTQ on the calibration batches the caller passes (the task's texts, or the
package's general text: ``QuantConfig.calibration``).

``compress quantize`` writes a **backbone** directory, quantized without any task's data:

    weights.safetensors  every encoder tensor: per quantized weight W its bit-packed codes
                         (``W.codes``), float16 scales (``W.scale``) and packed zero points
                         (``W.zero``); every other tensor (biases, LayerNorms, position and token-type
                         embeddings, pooler) as float32 under its own name. The raw bytes are laid out
                         so that ONNX graphs can point into this file (external data): a pack ships it once.
    config.json          the encoder's Hugging Face config (the encoder is rebuilt from it, no hub)
    tokenizer files
    manifest.json        kind "backbone": model, QuantConfig, calibration, layers, bytes, SHA-256 of every file

Its identity is the SHA-256 of weights.safetensors: ``compress run --backbone DIR`` learns a task's
mask on exactly those codes and records that hash; ``compress pack`` refuses artifacts whose hashes differ.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from compress import calibration, files, gptq, quantize, staging
from compress import manifest as mf
from compress.errors import CompressError
from compress.qweight import QWeight

log = logging.getLogger(__name__)
WEIGHTS = files.BACKBONE_WEIGHTS
PARTS = ("codes", "scale", "zero")  # the suffixes of a quantized tensor in weights.safetensors


class BackboneError(CompressError, ValueError):
    """A backbone that cannot be made or used as asked."""


# ---------------------------------------------------------------- quantizing a model in place
@torch.no_grad()
def quantize_(model: torch.nn.Module, config: quantize.QuantConfig, calibration_batches=None) -> dict[str, QWeight]:
    """Quantize the model's frozen weights in place (weights := dequantize(quantize(W))).

    Returns {module name: QWeight} for every quantized Linear and, if configured, the word
    embeddings (quantized per row, i.e. per token vector). Empty when config.bits > 8.
    calibration_batches: for method="gptq", batches (dicts of input tensors) to run through the model.
    """
    if not config.enabled:
        return {}
    result: dict[str, QWeight] = {}
    linears = quantize.target_linears(model)
    if config.method == "gptq":
        if calibration_batches is None:
            raise quantize.QuantConfigError("method 'gptq' needs calibration batches: pass calibration_batches=..., or use method 'rtn'")
        hessians = gptq.input_hessians(model, list(linears), calibration_batches)  # one pass over the unquantized model
    for name, lin in linears.items():
        if config.method == "gptq":
            qw = gptq.gptq_tensor(lin.weight, hessians.pop(name), config.bits, config.group_size, config.clip_search, config.symmetric)
        else:
            qw = quantize.quantize_tensor(lin.weight, config.bits, config.group_size, config.clip_search, config.symmetric)
        result[name] = qw
    if config.embeddings and (found := quantize.word_embeddings(model)):
        name, emb = found
        result[name] = quantize.quantize_tensor(emb.weight, quantize.embedding_bits(config), None, config.clip_search)
    if not result:
        raise quantize.QuantConfigError("found no nn.Linear layers under model.encoder to quantize: is this a BERT-family encoder?")
    load_(model, result)
    log.info(
        "quantized %d tensors to %d bits (group_size=%s, symmetric=%s, %s)",
        len(result),
        config.bits,
        config.group_size,
        config.symmetric,
        config.method,
    )
    return result


@torch.no_grad()
def load_(model: torch.nn.Module, qweights: dict[str, QWeight]) -> None:
    """Set each named module's weight to its dequantized codes."""
    for name, qw in qweights.items():
        weight = model.get_submodule(name).weight
        if tuple(weight.shape) != qw.shape:
            raise BackboneError(
                f"{name}: the quantized weight has shape {qw.shape}, the model's {tuple(weight.shape)}: they come from different models"
            )
        weight.copy_(torch.from_numpy(qw.dequantize()).to(weight.dtype))


def calibration_tokens(
    tok, config: quantize.QuantConfig, max_length: int, task_tokens: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray] | None:
    """What calibrates GPTQ, as config.calibration says: the task's tokens, or the package's general text
    (None for round to nearest)."""
    if not config.enabled or config.method != "gptq":
        return None
    if config.calibration == "general":
        return calibration.general_tokens(tok, config.calibration_examples, max_length)
    if task_tokens is None:
        raise BackboneError(
            "GPTQ calibrated on task text needs the task's training texts: calibrate on general text "
            "(--calibration general) for a backbone that is shared between tasks"
        )
    return task_tokens


# ---------------------------------------------------------------- the backbone artifact
@dataclass(frozen=True)
class BackboneConfig:
    model: str = "minilm"
    quant: quantize.QuantConfig = field(default_factory=lambda: quantize.default_config(4, calibration="general"))
    max_length: int = 128  # of the general calibration texts (GPTQ)
    out: str = "backbones/minilm-4bit"
    overwrite: bool = False

    def __post_init__(self):
        if not self.quant.enabled:
            raise BackboneError(f"bits={self.quant.bits}: a backbone holds quantized weights; use --bits 8, 4, 2 or 1")
        if not self.quant.task_independent:
            raise BackboneError(
                "a backbone is shared by every task, so no task's text may calibrate it: "
                "use --quantizer rtn, or gptq with --calibration general"
            )


def _tensors(model: torch.nn.Module, qweights: dict[str, QWeight]) -> dict[str, np.ndarray]:
    """weights.safetensors' tensors: packed parts of the quantized weights, float32 for every other encoder tensor."""
    out: dict[str, np.ndarray] = {}
    for name, qw in qweights.items():
        for part, arr in qw.packed().items():
            out[f"{name}.weight.{part}"] = np.ascontiguousarray(arr)
    quantized = {f"{n}.weight" for n in qweights}
    for name, p in model.encoder.state_dict(keep_vars=False).items():
        full = f"encoder.{name}"
        if full not in quantized and p.is_floating_point():
            out[full] = np.ascontiguousarray(p.detach().float().numpy())
    return out


def write(cfg: BackboneConfig, command: str = "") -> tuple[Path, mf.BackboneManifest]:
    """Quantize cfg.model without task data and write the backbone directory."""
    from safetensors.numpy import save_file

    from compress import models

    t0 = time.perf_counter()
    out = Path(cfg.out)
    staging.check_target(out, cfg.overwrite)
    clf, tok, source = models.build_classifier(cfg.model, 2, seed=0)
    calib = calibration_tokens(tok, cfg.quant, cfg.max_length)
    qweights = quantize_(clf, cfg.quant, calibration.batches(calib))
    tensors = _tensors(clf, qweights)
    with staging.staging(out, cfg.overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "compress-backbone"})
        clf.encoder.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        emb = quantize.word_embeddings(clf)
        layers = [
            mf.QLayer(name, list(qw.shape), qw.bits, qw.group_size, qw.zero is None, emb is not None and name == emb[0])
            for name, qw in qweights.items()
        ]
        sizes = dict.fromkeys(("codes", "scales", "embeddings", "floats"), 0)
        for key, arr in tensors.items():
            owner, _, part = key.rpartition(".weight.")
            kind = (
                "floats" if owner not in qweights else "embeddings" if emb and owner == emb[0] else "codes" if part == "codes" else "scales"
            )
            sizes[kind] += arr.nbytes
        m = mf.BackboneManifest(
            command=command,
            model=models.info(clf, source, tok),
            quant=cfg.quant,
            calibration=mf.CalibrationInfo.of(cfg.quant, calibration.GENERAL_TEXT if calib is not None else None, calib),
            layers=layers,
            sizes=mf.BackboneSizes(**sizes),
            seconds=time.perf_counter() - t0,
        )
        (tmp / files.BACKBONE_README).write_text(_readme(m))
        m = mf.write(tmp, m)
    log.info("wrote backbone %s (%s, weights %s)", out, cfg.quant, m.weights_sha256)
    return out, m


def _readme(m: mf.BackboneManifest) -> str:
    q = m.quant
    grid = (
        f"{q.bits}-bit, "
        + (f"groups of {q.group_size}" if q.group_size else "per channel")
        + (", symmetric" if q.symmetric else ", asymmetric")
    )
    calib = (
        "round to nearest (no calibration text)"
        if q.method == "rtn"
        else f"GPTQ calibrated on {m.calibration.examples} inputs of general text ({m.calibration.source})"
    )
    return (
        f"# Backbone: {m.model.name}, {grid}\n\nQuantized without task data: {calib}.\n\n"
        f"Train a task on it: `compress run --backbone {'{this directory}'} --task TASK`; ship several tasks with `compress pack`.\n\n"
        + "\n".join(f"- {k}: {v / 1e6:.2f} MB" for k, v in dataclasses.asdict(m.sizes).items())
        + "\n"
    )


@dataclass(frozen=True)
class Backbone:
    """A verified backbone directory."""

    directory: Path
    manifest: mf.BackboneManifest

    @property
    def sha256(self) -> str:
        return self.manifest.weights_sha256

    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS

    @cached_property
    def layout(self) -> tuple[dict, int]:
        """weights.safetensors' header (name -> {dtype, shape, data_offsets}) and where its data starts: the offsets
        of the header are relative to that."""
        return read_header(self.weights_path)

    @property
    def header(self) -> dict:
        return self.layout[0]

    @property
    def data_start(self) -> int:
        return self.layout[1]

    def tensors(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        return load_file(str(self.weights_path))

    def qweights(self, tensors: dict[str, np.ndarray] | None = None) -> dict[str, QWeight]:
        tensors = self.tensors() if tensors is None else tensors
        out = {}
        for layer in self.manifest.layers:
            parts = {p: tensors[f"{layer.name}.weight.{p}"] for p in PARTS if f"{layer.name}.weight.{p}" in tensors}
            out[layer.name] = QWeight.from_packed(parts, tuple(layer.shape), layer.bits, layer.group_size)
        return out

    def classifier(self, num_labels: int, pooling: str | None = None, seed: int = 0):
        """-> (SequenceClassifier whose encoder holds the backbone's weights, tokenizer, ModelSource, QWeights)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from compress import models

        config = AutoConfig.from_pretrained(self.directory)
        encoder = AutoModel.from_config(config, attn_implementation="eager")
        tensors = self.tensors()
        qweights = self.qweights(tensors)
        floats = {k.removeprefix("encoder."): torch.from_numpy(v) for k, v in tensors.items() if v.dtype == np.float32}
        state = encoder.state_dict()
        unknown = set(floats) - set(state)
        missing = {k for k, v in state.items() if v.is_floating_point() and k not in floats} - {
            f"{n.removeprefix('encoder.')}.weight" for n in qweights
        }
        if unknown or missing:
            raise BackboneError(
                f"{self.weights_path} does not fit its config.json (unknown {sorted(unknown)[:3]}, missing {sorted(missing)[:3]}): "
                "re-create the backbone with `compress quantize`"
            )
        encoder.load_state_dict(floats, strict=False)
        tok = AutoTokenizer.from_pretrained(self.directory)
        torch.manual_seed(seed)
        m = self.manifest.model
        clf = models.SequenceClassifier(encoder, num_labels, pooling or m.pooling)
        load_(clf, qweights)
        source = models.ModelSource(m.name, str(self.directory.resolve()), True, m.pooling)
        return clf, tok, source, qweights


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header and where its data starts (8-byte length, JSON, data)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def load(directory: str | Path, expect_sha256: str | None = None) -> Backbone:
    """Read and verify a backbone directory (every file's SHA-256); expect_sha256: the weights a task was trained on."""
    directory = Path(directory)
    m = mf.read(directory, mf.BackboneManifest)
    if expect_sha256 is not None and m.weights_sha256 != expect_sha256:
        raise BackboneError(
            f"{directory / WEIGHTS} has SHA-256 {m.weights_sha256[:12]}..., but the task was trained on "
            f"{expect_sha256[:12]}...: pass the backbone it was trained on (--backbone DIR)"
        )
    return Backbone(directory, m)
