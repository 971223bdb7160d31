"""The one quantized-weight type, from quantization to export and packing, and its bit packing.

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


def byte_codes(bits: int) -> np.ndarray:
    """[256, 8 / bits] int32: the unsigned codes packed into each byte value (pack_bits' order: first in the low bits), the
    lookup table a graph unpacks packed codes with."""
    per = 8 // bits
    return unpack_bits(np.arange(256, dtype=np.uint8), bits, 256 * per).reshape(256, per).astype(np.int32)


def code_offset(bits: int) -> int:
    """Signed code q is stored as unsigned q + offset (1 bit: {-1, 1} -> {0, 1} via (q + 1) / 2)."""
    return 0 if bits == 1 else 2 ** (bits - 1)


def to_unsigned(q: np.ndarray, bits: int) -> np.ndarray:
    q = np.asarray(q, dtype=np.int16)
    return ((q + 1) // 2 if bits == 1 else q + code_offset(bits)).astype(np.uint8)


def to_signed(u: np.ndarray, bits: int) -> np.ndarray:
    u = np.asarray(u, dtype=np.int16)
    return (2 * u - 1 if bits == 1 else u - code_offset(bits)).astype(np.int8)


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
        return dataclasses.replace(
            self, codes=self.codes[keep], scale=self.scale[keep], zero=None if self.zero is None else self.zero[keep]
        )

    def cols(self, keep: np.ndarray) -> QWeight:
        """Only the input columns `keep` (sorted indices); with groups, `keep` must take whole groups (their scales go with them)."""
        if self.group_size is None:
            return dataclasses.replace(self, codes=np.ascontiguousarray(self.codes[:, keep]))
        groups = np.asarray(keep).reshape(-1, self.group_size) if len(keep) % self.group_size == 0 else None
        if groups is None or not (groups == groups[:, :1] + np.arange(self.group_size)).all() or (groups[:, 0] % self.group_size).any():
            raise ValueError(f"columns {list(keep[:4])}... do not take whole groups of {self.group_size}")
        g = groups[:, 0] // self.group_size
        return dataclasses.replace(
            self,
            codes=np.ascontiguousarray(self.codes[:, keep]),
            scale=self.scale[:, g],
            zero=None if self.zero is None else self.zero[:, g],
        )

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
