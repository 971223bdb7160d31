"""The one quantized-weight type, from quantization to export and packing.

A weight ``W[rows, cols]`` is held as signed integer codes ``q`` (int8, same shape), float scales
``[rows, groups]`` (float16 values kept in float32) and, for asymmetric grids, integer zero points
``[rows, groups]``: ``W ~= scale * q`` per group of ``cols / groups`` inputs. A pruned weight is
``q = 0``, exact for every grid. On disk the codes are their unsigned form ``stored()`` (code plus
zero point, or plus the symmetric offset ``2^(bits-1)``), bit-packed ``8 / bits`` to a byte.

Only numpy: the exporters, the backbone file and the pack read it without torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


class PackingError(ValueError):
    """Codes that do not fit the requested bit width."""


# ---------------------------------------------------------------- bit packing (little-endian in a byte)
def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes in [0, 2^bits) -> uint8 bytes, 8/bits values per byte, first value in the low bits."""
    if bits not in (1, 2, 4, 8):
        raise PackingError(f"cannot pack {bits}-bit codes: use 1, 2, 4 or 8")
    flat = np.asarray(codes, dtype=np.uint8).reshape(-1)
    if flat.size and flat.max() >= 2**bits:
        raise PackingError(f"code {int(flat.max())} does not fit in {bits} bits")
    per = 8 // bits
    flat = np.pad(flat, (0, (-flat.size) % per)).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    vals = (np.asarray(packed, dtype=np.uint8).reshape(-1, 1) >> shifts) & np.uint8(2**bits - 1)
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
        return cls(data[13:13 + unary_bytes], data[13 + unary_bytes:], count, unary_bits, k)


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
    r = unpack_bits(code.remainders, 1, code.count * code.k).reshape(code.count, code.k).astype(np.int64) @ (1 << np.arange(code.k - 1, -1, -1))
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


# ---------------------------------------------------------------- the weight
@dataclass(frozen=True, eq=False)
class QWeight:
    codes: np.ndarray  # int8 [rows, cols], signed
    scale: np.ndarray  # float32 [rows, groups], float16-exact
    bits: int  # 1, 2, 4 or 8
    group_size: int | None  # None: one scale per row
    zero: np.ndarray | None = None  # uint8 [rows, groups]: asymmetric grid, stored code = codes + zero

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def storage_bits(self) -> int:
        return 2 if self.bits == 1 else self.bits  # a pruned 1-bit weight needs a third code: 0

    @property
    def groups(self) -> int:
        return 1 if self.group_size is None else self.codes.shape[1] // self.group_size

    def grouped(self, a: np.ndarray) -> np.ndarray:
        rows, cols = self.codes.shape
        return a.reshape(rows, self.groups, cols // self.groups)

    def stored(self) -> np.ndarray:
        """The unsigned codes that go to disk, [rows, cols] uint8 in [0, 2^storage_bits)."""
        if self.zero is None:
            return to_unsigned(self.codes, self.storage_bits)
        return (self.grouped(self.codes.astype(np.int16)) + self.zero[..., None]).astype(np.uint8).reshape(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        w = self.grouped(self.codes.astype(np.float32)) * self.scale[..., None].astype(np.float32)
        return w.reshape(self.codes.shape)

    def masked(self, mask: np.ndarray | None) -> QWeight:
        """The same weight with the pruned entries (mask False) set to code 0."""
        if mask is None:
            return self
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.codes.shape:
            raise ValueError(f"mask of shape {mask.shape} does not fit a weight of shape {self.codes.shape}")
        return dataclasses.replace(self, codes=np.where(mask, self.codes, 0).astype(np.int8))

    def rows(self, keep: np.ndarray) -> QWeight:
        """Only the output rows `keep` (indices), with their scales and zero points."""
        return dataclasses.replace(self, codes=self.codes[keep], scale=self.scale[keep], zero=None if self.zero is None else self.zero[keep])

    def cols(self, keep: np.ndarray) -> QWeight:
        """Only the input columns `keep` (sorted indices); with groups, `keep` must take whole groups (their scales go with them)."""
        if self.group_size is None:
            return dataclasses.replace(self, codes=np.ascontiguousarray(self.codes[:, keep]))
        groups = np.asarray(keep).reshape(-1, self.group_size) if len(keep) % self.group_size == 0 else None
        if groups is None or not (groups == groups[:, :1] + np.arange(self.group_size)).all() or (groups[:, 0] % self.group_size).any():
            raise ValueError(f"columns {list(keep[:4])}... do not take whole groups of {self.group_size}")
        g = groups[:, 0] // self.group_size
        return dataclasses.replace(self, codes=np.ascontiguousarray(self.codes[:, keep]), scale=self.scale[:, g],
                                   zero=None if self.zero is None else self.zero[:, g])

    def packed(self) -> dict[str, np.ndarray]:
        """The on-disk form: bit-packed codes, float16 scales, bit-packed zero points (asymmetric)."""
        out = {"codes": pack_bits(self.stored(), self.storage_bits), "scale": self.scale.astype(np.float16)}
        if self.zero is not None:
            out["zero"] = pack_bits(self.zero, self.bits)
        return out

    @classmethod
    def from_packed(cls, arrays: dict[str, np.ndarray], shape: tuple[int, int], bits: int, group_size: int | None) -> QWeight:
        """Inverse of packed()."""
        rows, cols = shape
        storage = 2 if bits == 1 else bits
        stored = unpack_bits(arrays["codes"], storage, rows * cols).reshape(rows, cols)
        scale = np.asarray(arrays["scale"]).astype(np.float32)
        zero = None
        if "zero" in arrays:
            zero = unpack_bits(arrays["zero"], bits, scale.size).reshape(scale.shape).astype(np.uint8)
            groups = scale.shape[1]
            codes = (stored.reshape(rows, groups, -1).astype(np.int16) - zero[..., None]).reshape(rows, cols).astype(np.int8)
        else:
            codes = to_signed(stored, storage)
        return cls(codes, scale, bits, group_size, zero)
