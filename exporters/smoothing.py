"""Activation smoothing for the int8 kernel (SmoothQuant, Xiao et al. 2023): the factors, and where they go in the graph.

``Smoothing`` holds the calibration's input ranges and computes one factor per input channel of a linear (or of the
Q/K/V projections that share an input). ``SmoothedInputs`` puts them in one graph: each factor tensor stored once
(float16), a linear's input multiplied by the factors' reciprocal (folded at load: on the CPU a Mul costs less than a
Div), or, ahead of an attention output projection, the factors folded into V's rows and bias instead, so that
nothing runs there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.exporters.builder import Builder
from compress.qweight import QWeight


@dataclass
class Smoothing:
    """SmoothQuant (Xiao et al. 2023) for the int8 kernel: activations are quantized per token (or per
    tensor) at run time, one scale across all channels, so a few outlier input channels (MiniLM: up to
    15x the median channel's range ahead of the FFN) cost every other channel its resolution. Dividing input channel j by s_j and
    multiplying
    the weight's column j by s_j leaves the product unchanged and evens the ranges out:
    s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), x's ranges from calibration text. The weight is then
    rounded to int8 per output channel at load (<= 1/254 of the row's range); the file keeps the
    low-bit codes and stores s (one float per input channel).

    Only weights of <= max_bits bits are smoothed: their codes use a fraction of int8's range, so the
    re-rounding is free, whereas 8-bit codes are already exact int8 and re-rounding W*s costs as
    much as their quantization did (MiniLM/MRPC: mean |logit error| 0.08 unsmoothed vs 0.12 smoothed
    at 8 bits; 0.10 vs 0.06 at 4 bits; benchmarks/results/smoothing.md). alpha 0.75: at 0.5 the
    GELU outputs ahead of FFN2 come out 2x worse than unsmoothed; 0.75 beats both everywhere."""

    input_absmax: dict[str, np.ndarray]  # linear name -> max |x| per input channel
    alpha: float | None = 0.75  # None: no smoothing (the ranges still set static activation scales)
    max_bits: int = 4

    def factors(self, names: list[str], weights_: list[np.ndarray], bits: int) -> np.ndarray | None:
        """One s for linears sharing their input (Q/K/V): from their inputs' and columns' ranges."""
        if self.alpha is None or bits > self.max_bits or any(n not in self.input_absmax for n in names):
            return None
        x = np.max([self.input_absmax[n] for n in names], axis=0).astype(np.float64)
        w = np.max([np.abs(w).max(0) for w in weights_], axis=0).astype(np.float64)
        s = np.where((x > 0) & (w > 0), x**self.alpha / np.maximum(w, 1e-12) ** (1 - self.alpha), 1.0)
        return np.clip(s, 1e-3, 1e3).astype(np.float16).astype(np.float32)  # stored as float16

    def ranges(self, names: list[str]) -> np.ndarray | None:
        """The calibrated max |x| per input channel of linears sharing an input (None: not calibrated)."""
        if any(n not in self.input_absmax for n in names):
            return None
        return np.max([self.input_absmax[n] for n in names], axis=0).astype(np.float64)


class SmoothedInputs:
    """The smoothing factors of one graph: made once per linear (or Q/K/V group), and what dividing an input by them costs."""

    def __init__(self, bld: Builder, smooth: Smoothing | None, linears: dict[str, QWeight]):
        self.bld, self.smooth, self.linears = bld, smooth, linears
        self.values: dict[str, np.ndarray] = {}  # factor tensor -> its values
        self._reciprocal: dict[str, str] = {}  # factor tensor -> 1 / s
        self._into_v: dict[str, str] = {}  # V projection -> the factor tensor of its output projection's input, folded into V

    def factors(self, names: list[str]) -> str | None:
        """The factor tensor of linears sharing an input (None: not smoothed)."""
        bits = max(self.linears[n].bits for n in names)
        s = None if self.smooth is None else self.smooth.factors(names, [self.linears[n].dequantize() for n in names], bits)
        if s is None:
            return None
        name = self.bld.half(f"{names[0]}.smooth", s)
        self.values[name] = s
        return name

    def inverse(self, sm: str, base: str) -> str:
        if sm not in self._reciprocal:
            self._reciprocal[sm] = self.bld.node("Reciprocal", [sm], base)[0]
        return self._reciprocal[sm]

    def divide(self, x: str, base: str, sm: str | None) -> str:
        """x / s as x * (1 / s); x itself where there is no smoothing or V's rows already divided it (fold_into_v)."""
        if sm is None or sm in self._into_v.values():
            return x
        return self.bld.node("Mul", [x, self.inverse(sm, base)], base)[0]

    def fold_into_v(self, v: str, sm: str) -> None:
        """The attention output projection's input is V's output: its factors divide V's rows and bias instead (exact)."""
        self._into_v[v] = sm

    def folded_into(self, v: str) -> str | None:
        return self._into_v.get(v)

    def max_scaled(self, names: list[str], sm: str | None) -> float | None:
        """The calibrated max |x_j / s_j| of the input of `names` (None: no calibration ranges)."""
        ranges = None if self.smooth is None else self.smooth.ranges(names)
        if ranges is None:
            return None
        s = self.values[sm].astype(np.float64) if sm is not None else np.ones_like(ranges)
        return float((ranges / s).max())
