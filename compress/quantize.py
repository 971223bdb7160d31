"""Quantize a tensor: per-channel or group-wise grids, 8/4/2/1 bits, rounded to nearest (RTN).

A weight ``W[out, in]`` becomes integer codes ``q`` and float scales ``s`` with ``W ~= s * q``:
per output channel (``group_size=None``, one scale per row) or per group of ``group_size`` inputs
(one scale per row and group).
  symmetric (default)  ``q in [-(2^(b-1)-1), 2^(b-1)-1]``: 2 bits is therefore ternary {-1, 0, 1}.
  asymmetric (2/4 bits) stored code ``u in [0, 2^b - 1]`` with an integer zero point ``z`` per
                       group, ``q = u - z``: all 2^b levels are used (2 bits: 4 levels instead of 3),
                       and ``W = 0`` is still exactly ``u = z``, so a pruned weight stays exact.
  1 bit                ``sign(W) * s`` with the L2-optimal ``s = mean|W|``.
Scales are chosen by a small MSE search over clipping ratios (``clip_search``) and rounded to
float16, so that the file stores them in 16 bits without changing a single dequantized weight.

The result is a ``compress.qweight.QWeight``. GPTQ (compress.gptq) rounds on the same grids; which
tensors of a model are quantized, and how, is compress.backbone's job.
"""

from __future__ import annotations

import logging

import torch

from compress.configs import ASYMMETRIC_BITS, QuantConfig, QuantConfigError
from compress.qweight import QWeight

log = logging.getLogger(__name__)


def embedding_bits(config: QuantConfig) -> int:
    """The word-embedding table is quantized per row (token vector) at no fewer than 4 bits."""
    return max(config.bits, 4)


def default_config(bits: int, group_size: int | None = None, symmetric: bool | None = None, method: str | None = None, **kw) -> QuantConfig:
    """The recommended config for a bit width, unless told otherwise:
    4 bits: GPTQ per output channel, symmetric (RTN loses more: pooled-embedding error .39 -> .25 on MiniLM,
            and the codes stay exact in the int8 kernels);
    2 bits: GPTQ, asymmetric, in groups of 16 (per-channel ternary 2-bit weights lose the task;
            see benchmarks/results/export_vs_ort.md);
    8 and 1 bits: round to nearest per channel."""
    if bits == 2:
        group_size = 16 if group_size is None else group_size
        symmetric = False if symmetric is None else symmetric
    if bits in (2, 4):
        method = method or "gptq"
    return QuantConfig(bits=bits, group_size=group_size, symmetric=True if symmetric is None else symmetric, method=method or "rtn", **kw)


def _qmax(bits: int) -> int:
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    if cols % g:
        raise QuantConfigError(f"input dimension {cols} is not divisible by group_size={g}: pick a divisor of {cols} or per-channel scales")
    return w.reshape(rows, cols // g, g)


def _fp16_exact(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to float16 values (kept in float32), so that storing them as float16 is lossless."""
    return scale.clamp(min=2.0**-20, max=6.0e4).half().float()


def _codes(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Signed codes q (stored code minus zero point) for scales/zeros [rows, groups]."""
    if zero is None:
        qmax = _qmax(bits)
        return torch.clamp(torch.round(wg / scale[..., None]), -qmax, qmax)
    return torch.clamp(torch.round(wg / scale[..., None]) + zero[..., None], 0, 2**bits - 1) - zero[..., None]


def _candidates(wg: torch.Tensor, bits: int, symmetric: bool, r: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    if symmetric:
        return _fp16_exact(wg.abs().amax(-1) * r / _qmax(bits)), None
    lo, hi = wg.amin(-1).clamp(max=0) * r, wg.amax(-1).clamp(min=0) * r  # the range always holds 0
    scale = _fp16_exact((hi - lo) / (2**bits - 1))
    return scale, torch.clamp(torch.round(-lo / scale), 0, 2**bits - 1)


def _quantize_groups(wg: torch.Tensor, bits: int, clip_search: bool, symmetric: bool = True):
    """wg [rows, groups, g] float32 -> codes int8 (same shape), scales [rows, groups], zeros or None."""
    if bits == 1:
        scale = _fp16_exact(wg.abs().mean(-1))
        q = torch.where(wg >= 0, 1, -1).to(torch.int8)
        return q, scale, None
    ratios = torch.linspace(1.0, 0.5, 11) if clip_search else torch.ones(1)
    best_err, best_scale, best_zero = None, None, None
    for r in ratios.tolist():
        scale, zero = _candidates(wg, bits, symmetric, r)
        err = ((_codes(wg, scale, zero, bits) * scale[..., None] - wg) ** 2).sum(-1)
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = None if zero is None else torch.where(better, zero, best_zero)
    q = _codes(wg, best_scale, best_zero, bits).to(torch.int8)
    return q, best_scale, None if best_zero is None else best_zero.to(torch.uint8)


def qweight(q: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None, zero: torch.Tensor | None) -> QWeight:
    """torch codes [rows, cols], scales and zero points [rows, groups] -> QWeight (numpy)."""
    return QWeight(
        q.to(torch.int8).numpy(), scale.float().numpy(), bits, group_size, None if zero is None else zero.to(torch.uint8).numpy()
    )


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = None, clip_search: bool = True, symmetric: bool = True) -> QWeight:
    """Round a 2-D weight [rows, cols] to nearest on its grid, along its last dimension."""
    if bits > 8:
        raise QuantConfigError(f"quantize_tensor needs bits <= 8, got {bits}")
    if not symmetric and bits not in ASYMMETRIC_BITS:
        raise QuantConfigError(f"asymmetric quantization is for bits in {ASYMMETRIC_BITS}, not {bits}")
    wg = _grouped(w.detach().float(), group_size)
    q, scale, zero = _quantize_groups(wg, bits, clip_search, symmetric)
    return qweight(q.reshape(w.shape), scale, bits, group_size, zero)


# ---------------------------------------------------------------- which tensors of a model
def target_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear of the encoder's transformer layers: not the pooler, not the classifier."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("encoder.") and ".pooler" not in name:
            out[name] = mod
    return out


def word_embeddings(model: torch.nn.Module) -> tuple[str, torch.nn.Embedding] | None:
    get = getattr(model.encoder, "get_input_embeddings", None)
    emb = get() if get else None
    if emb is None:
        return None
    for name, mod in model.named_modules():
        if mod is emb:
            return name, mod
    return None
