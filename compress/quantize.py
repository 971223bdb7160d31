"""Quantize the frozen pretrained weights: symmetric per-channel or group-wise, 8/4/2/1 bits.

A weight ``W[out, in]`` becomes integer codes ``q`` and float scales ``s`` with ``W ~= s * q``:
per output channel (``group_size=None``, one scale per row) or per group of ``group_size`` inputs
(one scale per row and group). b >= 2 bits use the symmetric grid ``q in [-(2^(b-1)-1), 2^(b-1)-1]``
(2 bits is therefore ternary {-1, 0, 1}); 1 bit is ``sign(W) * s`` with the L2-optimal
``s = mean|W|``. Scales are chosen by a small MSE search over clipping ratios (``clip_search``).

``quantize_(model, config)`` replaces the target weights in place by their dequantized values,
so that the mask is learned on exactly the weights that ship, and returns the integer form.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

SUPPORTED_BITS = (1, 2, 4, 8, 16, 32)


class QuantConfigError(ValueError):
    """A QuantConfig that cannot be applied."""


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    group_size: int | None = None  # None: one scale per output channel
    clip_search: bool = True  # MSE-optimal clipping ratio per channel/group
    embeddings: bool = True  # also quantize the word-embedding table (per row, >= 4 bits)

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise QuantConfigError(f"bits={self.bits} is not supported: use one of {SUPPORTED_BITS} (16/32 = no quantization)")
        if self.group_size is not None and (self.group_size < 2 or self.group_size & (self.group_size - 1)):
            raise QuantConfigError(f"group_size={self.group_size} must be a power of two >= 2, or None for per-channel scales")

    @property
    def enabled(self) -> bool:
        return self.bits <= 8


def embedding_bits(config: QuantConfig) -> int:
    """The word-embedding table is quantized per row (token vector) at no fewer than 4 bits."""
    return max(config.bits, 4)


@dataclass
class QTensor:
    """Integer codes (int8 tensor, same shape as the weight) and scales [rows, n_groups]."""

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    group_size: int | None

    def dequantize(self) -> torch.Tensor:
        return dequantize(self)


def _qmax(bits: int) -> int:
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    if cols % g:
        raise QuantConfigError(f"input dimension {cols} is not divisible by group_size={g}: pick a divisor of {cols} or per-channel scales")
    return w.reshape(rows, cols // g, g)


def _quantize_groups(wg: torch.Tensor, bits: int, clip_search: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """wg [rows, groups, g] float32 -> codes int8 (same shape), scales [rows, groups]."""
    if bits == 1:
        scale = wg.abs().mean(-1).clamp(min=1e-12)
        q = torch.where(wg >= 0, 1, -1).to(torch.int8)
        return q, scale
    qmax = _qmax(bits)
    absmax = wg.abs().amax(-1).clamp(min=1e-12)
    ratios = torch.linspace(1.0, 0.5, 11) if clip_search else torch.ones(1)
    best_err, best_scale = None, None
    for r in ratios:
        scale = absmax * r / qmax
        q = torch.clamp(torch.round(wg / scale[..., None]), -qmax, qmax)
        err = ((q * scale[..., None] - wg) ** 2).sum(-1)
        if best_err is None:
            best_err, best_scale = err, scale
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
    q = torch.clamp(torch.round(wg / best_scale[..., None]), -qmax, qmax).to(torch.int8)
    return q, best_scale


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = None, clip_search: bool = True) -> QTensor:
    """Quantize a 2-D weight [rows, cols] along its last dimension."""
    if bits > 8:
        raise QuantConfigError(f"quantize_tensor needs bits <= 8, got {bits}")
    wg = _grouped(w.detach().float(), group_size)
    q, scale = _quantize_groups(wg, bits, clip_search)
    return QTensor(q.reshape(w.shape), scale, bits, group_size)


def dequantize(qt: QTensor) -> torch.Tensor:
    qg = _grouped(qt.q.float(), qt.group_size)
    return (qg * qt.scale[..., None]).reshape(qt.q.shape)


# ---------------------------------------------------------------- bit packing (little-endian in a byte)
def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes in [0, 2^bits) -> uint8 bytes, 8/bits values per byte, first value in the low bits."""
    if bits not in (1, 2, 4, 8):
        raise QuantConfigError(f"cannot pack {bits}-bit codes: use 1, 2, 4 or 8")
    flat = np.asarray(codes, dtype=np.uint8).reshape(-1)
    if flat.size and flat.max() >= 2**bits:
        raise QuantConfigError(f"code {int(flat.max())} does not fit in {bits} bits")
    per = 8 // bits
    flat = np.pad(flat, (0, (-flat.size) % per)).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    vals = (packed.reshape(-1, 1) >> shifts) & np.uint8(2**bits - 1)
    return vals.reshape(-1)[:count]


def code_offset(bits: int) -> int:
    """Signed code q is stored as unsigned q + offset (1 bit: {-1, 1} -> {0, 1} via (q + 1) / 2)."""
    return 0 if bits == 1 else 2 ** (bits - 1)


def to_unsigned(q: np.ndarray, bits: int) -> np.ndarray:
    q = np.asarray(q, dtype=np.int16)
    return ((q + 1) // 2 if bits == 1 else q + code_offset(bits)).astype(np.uint8)


def to_signed(u: np.ndarray, bits: int) -> np.ndarray:
    u = np.asarray(u, dtype=np.int16)
    return (2 * u - 1 if bits == 1 else u - code_offset(bits)).astype(np.int8)


# ---------------------------------------------------------------- applying to a model
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


@torch.no_grad()
def quantize_(model: torch.nn.Module, config: QuantConfig) -> dict[str, QTensor]:
    """Quantize the model's frozen weights in place (weights := dequantize(quantize(W))).

    Returns {module name: QTensor} for every quantized Linear and, if configured, the word
    embeddings (quantized per row, i.e. per token vector). Empty when config.bits > 8.
    """
    if not config.enabled:
        return {}
    result: dict[str, QTensor] = {}
    for name, lin in target_linears(model).items():
        qt = quantize_tensor(lin.weight, config.bits, config.group_size, config.clip_search)
        lin.weight.copy_(qt.dequantize().to(lin.weight.dtype))
        result[name] = qt
    if config.embeddings and (found := word_embeddings(model)):
        name, emb = found
        qt = quantize_tensor(emb.weight, embedding_bits(config), None, config.clip_search)
        emb.weight.copy_(qt.dequantize().to(emb.weight.dtype))
        result[name] = qt
    if not result:
        raise QuantConfigError("found no nn.Linear layers under model.encoder to quantize: is this a BERT-family encoder?")
    log.info("quantized %d tensors to %d bits (group_size=%s)", len(result), config.bits, config.group_size)
    return result
