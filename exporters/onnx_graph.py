"""torch -> fp32 ONNX, masks folded into the weights (pruned weights are exact zeros)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from compress.configs import OPSET

log = logging.getLogger(__name__)
QDQ_OPSET = 21  # DequantizeLinear of INT4 codes and blocked (per-group) scales


def input_names(model) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if model.uses_token_types else [])


def export_fp32(model: torch.nn.Module, path: Path, opset: int = OPSET) -> Path:
    """Export a SequenceClassifier (MaskedLinear layers already folded) with dynamic batch and length."""
    from compress import masking

    model = masking.folded(model).eval().float()
    names = input_names(model)
    dummy = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            dummy,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    log.info("exported fp32 graph to %s", path)
    return path


def to_opset(model, opset: int):
    """The graph at a later ONNX opset (onnx.version_converter's adapters), checked."""
    import onnx
    from onnx import version_converter

    out = version_converter.convert_version(model, opset)
    onnx.checker.check_model(out)
    return out
