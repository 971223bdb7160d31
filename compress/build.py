"""The torch model a run trains: model (or a backbone) + task -> quantized frozen weights -> masks.

``build`` loads the encoder (or rebuilds it from a backbone's codes), quantizes it as ``RunConfig.quant``
says (GPTQ on the task's calibration tokens or on the general text) and, to learn a mask, puts a
MaskedLinear on every target linear. ``prepare`` turns the model's masks and the integer weights into what
the exporter folds into the graph; ``layer_table`` is what the manifest records of them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress import backbone, calibration, masking, models, quantize, tasks
from compress import manifest as mf
from compress.configs import RunConfig
from compress.errors import ConfigError
from compress.qweight import QWeight

log = logging.getLogger(__name__)


@dataclass
class Built:
    """A run's model and what came with it."""

    model: torch.nn.Module  # models.SequenceClassifier, its target linears masked (mode=structure)
    tokenizer: object
    source: models.ModelSource
    qweights: dict[str, QWeight]  # the quantized tensors ({} before post-training quantization, or unquantized)
    calibration: dict[str, np.ndarray] | None  # the task's calibration tokens (None when nothing is quantized)


def resolve_backbone(cfg: RunConfig, expect_sha256: str | None = None) -> tuple[RunConfig, mf.BackboneRef | None]:
    """With cfg.backbone: the quantization and model are the backbone's; returns the config and the reference to record."""
    if not cfg.backbone:
        return cfg, None
    if cfg.train.mode != "structure" or cfg.init_from:
        raise backbone.BackboneError(
            "--backbone learns a task mask on the shared quantized weights: use --mode structure, without --init-from"
        )
    bb = backbone.load(cfg.backbone, expect_sha256)
    ref = mf.BackboneRef(bb.sha256, str(Path(cfg.backbone).resolve()), bb.manifest.model.name)
    return dataclasses.replace(cfg, quant=bb.manifest.quant, model=bb.manifest.model.name), ref


def build(
    cfg: RunConfig, task: tasks.Task, calib: tasks.Split | dict[str, np.ndarray] | None = None, token_types: bool | None = None
) -> Built:
    """Model with quantized frozen weights and (mode=structure) masks.

    calib: the task's calibration texts (a Split: its first cfg.quant.calibration_examples are
    tokenized) or tokens (arrays from an artifact): the export's activation smoothing, and GPTQ when
    cfg.quant.calibration is "task". With cfg.backbone the codes are the backbone's, not re-quantized.
    token_types: whether the model feeds token_type_ids to the encoder, as an artifact being rebuilt was made
    (None: whenever the encoder takes them).
    """
    if cfg.backbone:
        clf, tok, source, qweights = backbone.load(cfg.backbone).classifier(task.num_labels, cfg.pooling, seed=cfg.train.seed)
    else:
        clf, tok, source = models.build_classifier(cfg.model, task.num_labels, cfg.pooling, seed=cfg.train.seed)
        qweights = {}
    if token_types is not None:
        clf.uses_token_types = token_types
    positions = getattr(clf.encoder.config, "max_position_embeddings", None)
    if positions is not None and cfg.train.max_length > positions:
        raise ConfigError(
            f"--max-length {cfg.train.max_length} exceeds the {positions} positions of {cfg.model}: use --max-length {positions} or less"
        )
    if isinstance(calib, tasks.Split):
        calib = calibration.tokens(tok, calib, cfg.quant.calibration_examples, cfg.train.max_length) if cfg.quant.enabled else None
    masking.drop_layers_(clf, cfg.mask.layers)  # before quantizing: removed layers cost nothing
    qweights = masking.present(clf, qweights)  # a backbone's codes of the removed layers go too
    if cfg.train.mode == "structure":
        if not cfg.backbone:  # the mask is learned on the weights that ship
            qweights = quantize_model(clf, cfg, tok, calib)
        torch.manual_seed(cfg.train.seed)
        masking.apply_masks_(clf, cfg.mask)
    return Built(clf, tok, source, qweights, calib)


def quantize_model(model, cfg: RunConfig, tok, task_tokens) -> dict[str, QWeight]:
    """Quantize in place as cfg.quant says; GPTQ calibrates on the task's tokens or on the general text."""
    calib = backbone.calibration_tokens(tok, cfg.quant, cfg.train.max_length, task_tokens)
    return backbone.quantize_(model, cfg.quant, calibration.batches(calib))


def prepare(model: torch.nn.Module, qweights: dict[str, QWeight]) -> tuple[dict[str, QWeight], tuple[str, QWeight] | None]:
    """Split the quantized tensors into masked linears and the embedding table, masks folded in."""
    masks = {k: v.numpy() for k, v in masking.masks(model).items()}
    emb = quantize.word_embeddings(model)
    emb_name = emb[0] if emb else None
    linears = {n: qw.masked(masks.get(n)) for n, qw in qweights.items() if n != emb_name}
    embedding = (emb_name, qweights[emb_name]) if emb_name in qweights else None
    return linears, embedding


def trainable_tensors(model, mode: str) -> dict[str, torch.Tensor]:
    """What the task trained: the head in mode=structure, every weight in mode=weights."""
    tensors = model.state_dict() if mode == "weights" else model.head_parameters()
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def layer_table(model, linears: dict[str, QWeight], embedding) -> list[mf.LayerInfo]:
    """Per quantized/masked layer: shape, bits, group size, mask density."""
    dens = masking.densities(model)[0]
    rows = []
    for name in list(linears) or list(dens) or list(quantize.target_linears(model)):
        w = linears.get(name)
        shape = w.shape if w else model.get_submodule(name).weight.shape
        rows.append(
            mf.LayerInfo(
                name,
                list(shape),
                w.bits if w else 32,
                w.group_size if w else None,
                w.zero is None if w else None,
                name in dens,
                dens.get(name, 1.0),
            )
        )
    if embedding:
        name, w = embedding
        rows.append(mf.LayerInfo(name, list(w.shape), w.bits, None, True, False, 1.0))
    return rows
