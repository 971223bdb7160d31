"""Validate an exported graph: onnx.checker, then PyTorch-vs-ONNX Runtime parity per output."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from compress.errors import CompressError

log = logging.getLogger(__name__)


class ExportValidationError(CompressError, RuntimeError):
    """Base class: the exported graph cannot be shipped."""


class GraphValidityError(ExportValidationError):
    """onnx.checker rejected the graph."""


class ParityError(ExportValidationError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance."""


class AccuracyDriftError(ExportValidationError):
    """The deployed graph's task metric drifted from PyTorch's beyond the allowed drop."""


def check_graph(model_or_path) -> None:
    try:
        onnx.checker.check_model(model_or_path if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise GraphValidityError(f"onnx.checker rejected the exported graph: {str(e).splitlines()[0]}") from e


def compare(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], atol: float, what: str) -> dict[str, float]:
    """Max |difference| per output; raises ParityError naming the output if one exceeds atol."""
    diffs = {}
    for name, ref in reference.items():
        got = actual[name]
        if got.shape != ref.shape:
            raise ParityError(f"{what}: output '{name}' has shape {got.shape}, PyTorch gives {ref.shape}")
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
        if not np.isfinite(diffs[name]) or diffs[name] > atol:
            raise ParityError(
                f"{what}: output '{name}' differs from PyTorch by max |d| = {diffs[name]:.3g} > atol {atol:g}: "
                "the folded weights do not match the model that was trained; re-export from the same artifact"
            )
    log.info("%s parity: %s (atol %g)", what, diffs, atol)
    return diffs
