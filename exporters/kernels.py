"""What each kernel puts in the graph in place of a weight: one piece per kernel (``KERNELS``), each with its own state.

A piece replaces, through a Builder (compress.exporters.builder), a linear's MatMul (``linear``), a fused Attention
node's packed Q/K/V (``attention``, returning the new node), the word-embedding table's Gathers (``embedding``) and
the kernel's other tables (``tables``); compress.exporters.weights finds those nodes and removes the old ones.

    "int8"  (Int8Kernel) integer matmuls (u8 x s8 VNNI/AMX kernels) on int8 weights unpacked at load: per-channel codes
            as they are, group-wise or smoothed weights re-rounded per row (<= 1/254 of the row's range); the
            activations quantized as their piece says (compress.exporters.activations); SmoothQuant factors
            (compress.exporters.smoothing) divide the inputs, or fold into V ahead of the attention output projection.
    "float" (FloatKernel) W = Cast(codes) * scale folded to fp32 at load -> MatMul: bit-exact with PyTorch.
    "nbits" (NBitsKernel) com.microsoft MatMulNBits (accuracy_level 4: int8 compute) on the packed codes as they are,
            block = the group size (per-channel scales repeated over blocks of <= 256 inputs); no Attention fusion. On
            x86 CPUs it is slower than "int8" (benchmarks/results/export_vs_ort.md), but it is the low-bit kernel of
            ORT's GPU and ARM builds. The word-embedding table and the other float tables of >= TABLE_MIN_SIZE values
            (position embeddings, rounded to 8 bits per row) become GatherBlockQuantized on packed codes, so that nothing
            in the graph unpacks a weight and ONNX Runtime's .ort converter keeps every weight low-bit
            (compress.exporters.ort_format).
    "qdq"   (QDQKernel) standard ONNX only, the form TensorRT, OpenVINO and QNN take: each weight is DequantizeLinear
            (opset 21) of its codes stored as an INT4 initializer (INT8 at 8 bits; UINT4/UINT8 with zero points for
            asymmetric grids; blocked along the inputs for groups) -> MatMul, the word-embedding table DequantizeLinear
            -> Gather. A pruned weight is the code 0 (its zero point): exact. Activations "static": QuantizeLinear ->
            DequantizeLinear (int8, symmetric: zero point 0, one scale from the calibration's max |x| / 127) on each
            linear's input; "none": float activations (weight-only). No SmoothQuant (it would change the codes) and no
            ONNX Runtime fusions (they are contrib operators).
The int8 and float kernels gather the word-embedding table as int codes: Gather -> Cast -> Mul(Gather(row scales)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress.errors import ConfigError
from compress.exporters.activations import MODES, _Activations
from compress.exporters.builder import Builder, Inline, Prefolded
from compress.exporters.smoothing import SmoothedInputs, Smoothing
from compress.qweight import QWeight

TABLE_MIN_SIZE = 65536  # "nbits": float Gather tables this large are stored 8-bit per row (token-type tables stay float)
Gathers = list[tuple[str, str]]  # (ids, output) of each Gather of one table


@dataclass
class Context:
    """What a kernel piece is built with: the graph being written and the weights being replaced."""

    bld: Builder
    linears: dict[str, QWeight]
    smooth: Smoothing | None = None  # int8: calibration ranges and smoothing factors
    activations: str = "static"  # int8: compress.exporters.activations.MODES
    input_ids: str | None = None  # the graph input every activation's leading shape is read from


class _Kernel:
    def __init__(self, ctx: Context):
        self.bld, self.linears = ctx.bld, ctx.linears

    def linear(self, name: str, w: QWeight, x: str, y: str, fold_into: str | None) -> None:
        """y = x @ W^T. fold_into: the V projection whose rows may absorb this linear's input smoothing (int8)."""
        raise NotImplementedError

    def attention(self, att: onnx.NodeProto, names: list[str]) -> onnx.NodeProto:
        raise NotImplementedError

    def embedding(self, name: str, w: QWeight, gathers: Gathers) -> None:
        """Rows of the word-embedding table: int codes gathered, cast and scaled per row (prefolded: GatherBlockQuantized on the
        packed codes, nothing unpacked at load)."""
        bld = self.bld
        if isinstance(bld.source, Prefolded):
            bld.gather_nbits(name, gathers, w)
            return
        rows = bld.source.rows(bld, name, w)
        row_scale = bld.source.scale(bld, name, w, (w.shape[0], 1))
        for ids, y in gathers:
            bld.node("Mul", [rows(ids), bld.node("Gather", [row_scale, ids], name, axis=0)[0]], name, outputs=[y])

    def tables(self, float_tables: dict[str, tuple[onnx.TensorProto, Gathers]]) -> list[str]:
        """The kernel's other quantized tables (float Gather tables, by initializer); -> their names (replaced)."""
        return []


class FloatKernel(_Kernel):
    def linear(self, name: str, w: QWeight, x: str, y: str, fold_into: str | None) -> None:
        wt = self.bld.node("Transpose", [self.bld.dequant_float(name, w)], name, perm=[1, 0])[0]
        self.bld.node("MatMul", [x, wt], name, outputs=[y])

    def attention(self, att: onnx.NodeProto, names: list[str]) -> onnx.NodeProto:
        bld, base = self.bld, att.name or names[0]
        parts = [bld.node("Transpose", [bld.dequant_float(n, self.linears[n])], n, perm=[1, 0])[0] for n in names]
        new = helper.make_node(
            "Attention",
            [att.input[0], bld.node("Concat", parts, base, axis=1)[0], *att.input[2:]],
            list(att.output),
            name=bld.name(base),
            domain="com.microsoft",
        )
        new.attribute.extend(att.attribute)
        return new


class NBitsKernel(_Kernel):
    def linear(self, name: str, w: QWeight, x: str, y: str, fold_into: str | None) -> None:
        self.bld.matmul_nbits(name, x, y, w)

    def attention(self, att: onnx.NodeProto, names: list[str]) -> onnx.NodeProto:
        raise ValueError(f"{att.name}: kernel 'nbits' takes unfused Q/K/V MatMuls; export with fusions.optimize(keep_matmuls=True)")

    def embedding(self, name: str, w: QWeight, gathers: Gathers) -> None:
        self.bld.gather_nbits(name, gathers, w)

    def tables(self, float_tables: dict[str, tuple[onnx.TensorProto, Gathers]]) -> list[str]:
        """The other float tables (position embeddings: 0.8 MB of MiniLM's 12.4) at 8 bits per row as well."""
        out = []
        for init_name, (init, gathers) in float_tables.items():
            if init.dims[0] * init.dims[1] >= TABLE_MIN_SIZE:
                base = init_name.removesuffix(".weight")
                self.bld.gather_nbits(base, gathers, _rows_int8(numpy_helper.to_array(init)))
                out.append(init_name)
        return out


class Int8Kernel(_Kernel):
    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.smoothing = SmoothedInputs(ctx.bld, ctx.smooth, ctx.linears)
        self.activations: _Activations = MODES[ctx.activations](ctx.bld, self.smoothing, ctx.linears, ctx.input_ids)

    def linear(self, name: str, w: QWeight, x: str, y: str, fold_into: str | None) -> None:
        sm = self.smoothing.factors([name])
        if sm is not None and fold_into is not None:  # its input is V's output: fold 1 / s into V
            self.smoothing.fold_into_v(fold_into, sm)
        self.activations.matmul(x, y, name, self.bld.int8_weight(name, w, sm, self.smoothing.values.get(sm)), sm, [name])

    def attention(self, att: onnx.NodeProto, names: list[str]) -> onnx.NodeProto:
        bld, base = self.bld, att.name or names[0]
        sm = self.smoothing.factors(names)
        int8 = [bld.int8_weight(n, self.linears[n], sm, self.smoothing.values.get(sm)) for n in names]
        bias = att.input[2]
        if (v_sm := self.smoothing.folded_into(names[2])) is not None:  # V's rows and bias divided by its output projection's factors
            inv = self.smoothing.inverse(v_sm, base)
            int8[2] = (int8[2][0], bld.node("Mul", [int8[2][1], inv], base)[0])
            qk = sum(self.linears[n].shape[0] for n in names[:2])
            ones = bld.node("Expand", [bld.const(base, np.array([1.0], np.float32)), bld.const(base, np.array([qk], np.int64))], base)[0]
            bias = bld.node("Mul", [bias, bld.node("Concat", [ones, inv], base, axis=0)[0]], base)[0]
        return self.activations.attention(att, base, names, int8, bias, sm)


class QDQKernel(_Kernel):
    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.smooth = ctx.smooth if ctx.activations == "static" else None
        if ctx.activations == "static" and ctx.smooth is None:
            raise ConfigError(
                "kernel 'qdq' with static activations needs calibration ranges: export with calibration batches, or activations 'none'"
            )
        self.quantized: dict[str, str] = {}  # activation -> its QuantizeLinear -> DequantizeLinear output (Q, K and V share theirs)

    def linear(self, name: str, w: QWeight, x: str, y: str, fold_into: str | None) -> None:
        self.bld.node("MatMul", [self._activation(name, x), dequantize_linear(self.bld, name, w, transposed=True)], name, outputs=[y])

    def attention(self, att: onnx.NodeProto, names: list[str]) -> onnx.NodeProto:
        raise ValueError(f"{att.name}: kernel 'qdq' takes unfused Q/K/V MatMuls (standard ONNX): export without ONNX Runtime's fusions")

    def embedding(self, name: str, w: QWeight, gathers: Gathers) -> None:
        table = dequantize_linear(self.bld, name, w, transposed=False)
        for ids, y in gathers:
            self.bld.node("Gather", [table, ids], name, outputs=[y], axis=0)

    def _activation(self, name: str, x: str) -> str:
        if self.smooth is None:
            return x
        if x not in self.quantized:
            ranges = self.smooth.ranges([name])
            if ranges is None:
                raise ConfigError(f"{name}: no calibration range for its input; export with calibration batches or activations 'none'")
            bld = self.bld
            scale = bld.const(name, np.array(max(float(ranges.max()), 2.0**-24) / 127, np.float32))
            zero = bld.const(name, np.array(0, np.int8))
            q = bld.node("QuantizeLinear", [x, scale, zero], name)[0]
            self.quantized[x] = bld.node("DequantizeLinear", [q, scale, zero], name)[0]
        return self.quantized[x]


def dequantize_linear(bld: Builder, base: str, w: QWeight, transposed: bool) -> str:
    """W (transposed: W^T, MatMul's right input) as DequantizeLinear (opset 21) of its codes, stored as 4-bit (<= 4 bits) or
    8-bit integers: signed codes with no zero point (symmetric grids), or the unsigned stored codes and zero points."""
    import ml_dtypes

    if type(bld.source) is not Inline:
        raise ConfigError(f"{base}: kernel 'qdq' stores its own codes; a pack's task graph takes the backbone's: use kernel int8")
    signed = w.zero is None
    types = {(True, 4): ml_dtypes.int4, (False, 4): ml_dtypes.uint4, (True, 8): np.int8, (False, 8): np.uint8}
    dtype = types[(signed, 4 if w.bits <= 4 else 8)]
    codes = (w.codes if signed else w.stored()).astype(dtype)
    scale, zero = w.scale.astype(np.float32), None if signed else w.zero.astype(dtype)
    cols = w.shape[1]
    # the scales' axis: per row (1-D, `axis` = the rows' axis), or per group (blocks of cols / groups along the inputs' axis)
    if transposed:
        codes, scale, zero = codes.T, scale.T, None if zero is None else zero.T
    rows_axis, cols_axis = (1, 0) if transposed else (0, 1)
    if w.groups == 1:
        scale, zero, attrs = scale.reshape(-1), None if zero is None else zero.reshape(-1), {"axis": rows_axis}
    else:
        attrs = {"axis": cols_axis, "block_size": cols // w.groups}
    inputs = [bld.const(base, np.ascontiguousarray(codes), name=f"{base}.weight.codes")]
    inputs.append(bld.const(base, scale, name=f"{base}.weight.scale"))
    if zero is not None:
        inputs.append(bld.const(base, np.ascontiguousarray(zero), name=f"{base}.weight.zero"))
    return bld.node("DequantizeLinear", inputs, base, **attrs)[0]


KERNELS: dict[str, Callable[[Context], _Kernel]] = {"int8": Int8Kernel, "float": FloatKernel, "nbits": NBitsKernel, "qdq": QDQKernel}


def _rows_int8(table: np.ndarray) -> QWeight:
    """A float table quantized per row, symmetric 8 bits, round to nearest (|error| <= half a step of max |row| / 127)."""
    scale = (np.maximum(np.abs(table).max(axis=1, keepdims=True), 2.0**-14) / 127).astype(np.float16).astype(np.float32)  # as QWeight's
    codes = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
    return QWeight(codes=codes, scale=scale, zero=None, bits=8, group_size=None)
