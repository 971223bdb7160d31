"""How a binary mask is stored: gap and Golomb-Rice codes of sparse positions, and the mask.npz file.

A layer's mask is stored whichever way is smaller: 1 bit per weight (e.g. 2:4 masks at density 0.5), or the
positions of its rarer value as the gaps between them: a byte per gap in mask.npz (at density 0.95 ~0.32 bits per
weight against an entropy of 0.31; the .npz is deflated on top), Golomb-Rice codes in a pack's task graph (within
~1% of the entropy; decoded in the graph by compress.exporters.functions). ``mask_sha256`` is a mask's identity,
whatever coding stored it. Only numpy: any numpy can read mask.npz, and apps and packs read it without torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.qweight import pack_bits, unpack_bits


# ---------------------------------------------------------------- gap coding (sparse positions, e.g. of pruned weights)
# Sorted positions are stored as the gaps between them, one byte per gap; a byte of 255 means "add 255
# and read on" (an escape), so the cost is one byte per position plus one per 255 positions skipped.
# The decoder is cumulative sums, so an ONNX graph can decode it with CumSum / NonZero / Gather.
def gap_encode(positions: np.ndarray) -> np.ndarray:
    """Sorted distinct positions -> uint8 gaps with escapes."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    escapes = gaps // 255
    out = np.full(int(escapes.sum()) + gaps.size, 255, dtype=np.uint8)
    out[np.cumsum(escapes + 1) - 1] = gaps % 255
    return out


def gap_decode(gaps: np.ndarray) -> np.ndarray:
    """uint8 gaps -> positions: position j = (sum of the bytes up to its closing byte) + j."""
    gaps = np.asarray(gaps, dtype=np.uint8)
    total = np.cumsum(gaps.astype(np.int64))
    ends = np.flatnonzero(gaps < 255)
    return total[ends] + np.arange(ends.size)


@dataclass(frozen=True, eq=False)
class RiceCode:
    """Sorted positions as Golomb-Rice codes of the gaps between them (Golomb 1966, Rice 1979): a gap
    g = q * 2^k + r is q in unary (q one-bits, then a zero) and r in k bits, most significant first.
    For gaps that are roughly geometric (a sparse mask) it comes within ~1% of the entropy, where a
    byte per gap costs 10-15% more. The decoder is cumulative sums (compress.exporters.functions)."""

    unary: np.ndarray  # uint8, bit-packed, `unary_bits` bits
    remainders: np.ndarray  # uint8, bit-packed, k bits per position
    count: int  # positions
    unary_bits: int
    k: int

    HEADER = 13  # unary bits, positions, unary bytes (uint32, little-endian), k (uint8)

    @property
    def nbytes(self) -> int:
        return self.HEADER + self.unary.size + self.remainders.size

    def to_bytes(self) -> np.ndarray:
        """One uint8 array: the header, the unary bits, the remainder bits."""
        header = np.array([self.unary_bits, self.count, self.unary.size], "<u4").view(np.uint8)
        return np.concatenate([header, np.array([self.k], np.uint8), self.unary, self.remainders])

    @classmethod
    def from_bytes(cls, data: np.ndarray) -> RiceCode:
        data = np.asarray(data, dtype=np.uint8)
        unary_bits, count, unary_bytes = (int(x) for x in data[:12].view("<u4"))
        k = int(data[12])
        return cls(data[13 : 13 + unary_bytes], data[13 + unary_bytes :], count, unary_bits, k)


def rice_encode(positions: np.ndarray, k: int | None = None) -> RiceCode:
    """Sorted distinct positions -> RiceCode; k=None picks the k >= 1 that makes it smallest."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    if k is None:
        k = min(range(1, 16), key=lambda kk: int(((gaps >> kk) + 1 + kk).sum()))
    q = gaps >> k
    unary = np.ones(int((q + 1).sum()), np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    rem = ((gaps[:, None] >> np.arange(k - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
    return RiceCode(pack_bits(unary, 1), pack_bits(rem, 1), int(gaps.size), int(unary.size), k)


def rice_decode(code: RiceCode) -> np.ndarray:
    bits = unpack_bits(code.unary, 1, code.unary_bits)
    ends = np.flatnonzero(bits == 0)
    q = np.diff(ends, prepend=-1) - 1
    r = unpack_bits(code.remainders, 1, code.count * code.k).reshape(code.count, code.k).astype(np.int64) @ (
        1 << np.arange(code.k - 1, -1, -1)
    )
    return np.cumsum((q << code.k) + r + 1) - 1


def mask_encode(mask: np.ndarray, rice: bool = False) -> tuple[str, np.ndarray | RiceCode, bool]:
    """A boolean mask, coded the smaller way: the positions of its rarer value, as ("gaps", a byte per gap, that
    value) or with rice=True as ("rice", Rice codes, that value); or ("bits", 1 bit per entry, False)."""
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    rare = bool(flat.mean() < 0.5) if flat.size else False
    positions = np.flatnonzero(flat == rare)
    code = rice_encode(positions) if rice else gap_encode(positions)
    if (code.nbytes if rice else code.size) < -(-flat.size // 8):
        return "rice" if rice else "gaps", code, rare
    return "bits", pack_bits(flat.astype(np.uint8), 1), False


def mask_decode(kind: str, data, rare: bool, size: int) -> np.ndarray:
    """Inverse of mask_encode: the flat boolean mask of `size` entries."""
    if kind == "bits":
        return unpack_bits(data, 1, size).astype(bool)
    flat = np.full(size, not rare)
    flat[rice_decode(data) if kind == "rice" else gap_decode(data)] = rare
    return flat


# ---------------------------------------------------------------- mask.npz and a mask's identity
def mask_sha256(masks_: dict[str, np.ndarray]) -> str:
    """A mask's identity, independent of how mask.npz codes it: SHA-256 over each layer's name, shape and bits, by name."""
    h = hashlib.sha256()
    for name in sorted(masks_):
        m = np.asarray(masks_[name]).astype(bool)
        h.update(name.encode() + b"\0" + np.array(m.shape, np.int64).tobytes() + np.packbits(m.ravel()).tobytes())
    return h.hexdigest()


def write_masks(path, masks_: dict[str, np.ndarray]) -> int:
    """mask.npz: per layer NAME::shape, and NAME (1 bit per weight) or NAME::gaps + NAME::rare; returns its bytes."""
    arrays = {}
    for name, m in masks_.items():
        kind, data, rare = mask_encode(m)
        arrays[name + "::shape"] = np.array(m.shape, dtype=np.int64)
        if kind == "gaps":
            arrays[name + "::gaps"] = data
            arrays[name + "::rare"] = np.array(rare)
        else:
            arrays[name] = data
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(path).stat().st_size


def load_masks(path) -> dict[str, np.ndarray]:
    """mask.npz -> {layer: bool mask}."""
    with np.load(path) as z:
        out = {}
        for key in z.files:
            name, _, kind = key.partition("::")
            if kind != "shape":
                continue
            shape = tuple(z[key])
            if name in z.files:
                flat = mask_decode("bits", z[name], False, int(np.prod(shape)))
            else:
                flat = mask_decode("gaps", z[name + "::gaps"], bool(z[name + "::rare"]), int(np.prod(shape)))
            out[name] = flat.reshape(shape)
    return out
