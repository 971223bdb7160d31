"""Building ONNX subgraphs for quantized weights: a Builder appends nodes and initializers with unique names, and
reads a weight's codes and scales from a source (Inline: packed into the graph itself; a pack's task graph takes them
from the shared backbone file instead, compress.exporters.shared). The encodings each kernel needs are its methods:
int8 codes unpacked at load, MatMulNBits / GatherBlockQuantized on the packed codes as they are.

What a session folds at load is kept to a few passes over each weight: a linear's symmetric low-bit codes are stored as
W^T (the integer kernels' layout: no Transpose) and unpacked by whole-tensor shifts straight into floats (unpack_planes);
a smoothed weight's per-channel int8 steps are computed here and stored (channel_step: no reduction over the
weight), so its re-rounding is one Div and one QuantizeLinear (rerounded)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.errors import ConfigError
from compress.exporters import functions
from compress.qweight import QWeight, byte_codes, pack_bits

NBITS_ACCURACY_LEVEL = 4  # MatMulNBits: quantize the activations to int8 per block, integer dot products


class Inline:
    """Where a weight's integer codes and scales come from in the graph: packed into the graph itself
    (a pack's task graph takes them from the shared backbone file instead: compress.exporters.shared)."""

    def codes(self, bld: Builder, base: str, w: QWeight) -> str:
        """-> int8 [rows, cols] signed codes (folded at load; int8 keeps the intermediate tensors of the fold small)."""
        if w.storage_bits == 8:
            return bld.const(f"{base}.codes_int8", w.codes)
        if w.zero is None:
            return bld.unpack(base, w.stored(), w.storage_bits, "codes", signed=True)
        x = bld.node("Cast", [bld.unpack(base, w.stored(), w.storage_bits, "codes")], base, to=TensorProto.INT8)[0]  # < 16: exact
        zero = bld.node("Cast", [bld.unpack(base, w.zero[..., None], w.bits, "zero")], base, to=TensorProto.INT8)[0]
        return bld.grouped(base, w, lambda x: bld.node("Sub", [x, zero], base)[0], x)

    def codes_t(self, bld: Builder, base: str, w: QWeight, dtype: int = TensorProto.INT8) -> str:
        """-> [cols, rows] signed codes of W^T (the integer kernels' layout) as int8 or float (dtype): symmetric low-bit codes
        stored transposed and unpacked by shifts straight into that type (Builder.unpack_planes), so that no Transpose is
        left to fold at load; other codes: codes() transposed and cast."""
        if w.zero is None and w.storage_bits < 8:
            return bld.unpack_planes(base, np.ascontiguousarray(w.stored().T), w.storage_bits, "codes_t", dtype)
        return bld.cast(bld.node("Transpose", [self.codes(bld, base, w)], base, perm=[1, 0])[0], base, dtype)

    def rows(self, bld: Builder, base: str, w: QWeight):
        """-> a function: graph tensor of row indices -> float32 codes of those rows of the table W (its word embeddings):
        gathered from the packed codes at run time (Builder.packed_rows), not unpacked at load; 8-bit or asymmetric codes,
        and rows that do not fill their last byte: the int8 table, gathered and cast."""
        bits, (n, cols) = w.storage_bits, w.shape
        if bits < 8 and w.zero is None and cols * bits % 8 == 0:
            packed = pack_bits(w.stored(), bits).reshape(n, cols * bits // 8)
            return bld.packed_rows(base, bld.const(base, packed, name=f"{base}.codes_{bits}bit"), cols, bits)
        return self.table_rows(bld, base, w)

    def table_rows(self, bld: Builder, base: str, w: QWeight):
        """rows(), from the int8 codes of the whole table (folded at load)."""
        table = self.codes(bld, base, w)
        return lambda ids: bld.node("Cast", [bld.node("Gather", [table, ids], base, axis=0)[0]], base, to=TensorProto.FLOAT)[0]

    def scale(self, bld: Builder, base: str, w: QWeight, shape: tuple[int, ...]) -> str:
        """-> float32 scales [rows, groups] reshaped to `shape` (stored as float16)."""
        return bld.half(f"{base}.scale", w.scale.reshape(shape))

    def scale16(self, bld: Builder, base: str, w: QWeight) -> str:
        """-> the float16 per-row scales [rows] as stored (per-channel weights)."""
        return bld.const(f"{base}.scale", w.scale.reshape(-1).astype(np.float16))


class Prefolded(Inline):
    """The int8 kernel's weights stored as ONNX Runtime's integer kernels take them (ExportConfig.prefold): int8 codes
    (group-wise or smoothed weights re-rounded per row here, with the very float32 operations the graph would run at load)
    and float32 row scales; the word embeddings as GatherBlockQuantized on their packed codes. Nothing is folded at session
    load, so loading needs no transient memory; a linear's weight takes 8 bits on disk instead of its packed width."""

    def codes(self, bld: Builder, base: str, w: QWeight) -> str:
        return bld.const(f"{base}.codes_int8", w.codes)

    def int8(self, w: QWeight, smooth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """-> (int8 [rows, cols], float32 [rows]): what Builder.int8_weight's subgraph folds to at load, computed here."""
        if w.groups == 1 and smooth is None:
            return w.codes, w.scale.reshape(-1).astype(np.float32)
        if w.groups == 1:  # Builder.rerounded's operations, in its [cols, rows] layout
            step = channel_step(w, smooth).astype(np.float32)
            inverse = np.float32(1.0) / smooth.astype(np.float32)
            x = np.round(w.codes.T.astype(np.float32) / step / inverse.reshape(-1, 1))
            return np.clip(x, -128, 127).astype(np.int8).T, w.scale.reshape(-1).astype(np.float32) * step
        wf = w.dequantize()  # codes * scale in float32, per row or group: the graph's Cast and Mul
        if smooth is not None:
            wf = wf * smooth.astype(np.float32)
        absmax = np.maximum(np.abs(wf).max(axis=1, keepdims=True), np.float32(2.0**-14))
        row_scale = absmax / np.float32(127.0)
        return np.round(wf / row_scale).astype(np.int8), row_scale.reshape(-1)


class Builder:
    """Appends nodes and initializers to a graph, with unique names."""

    def __init__(self, source: Inline | None = None, tag: str = "", compact: bool = False):
        self.nodes, self.inits, self.n, self.tag = [], [], 0, tag
        self.small: dict[tuple, str] = {}  # shapes, shifts, ...: one initializer per value
        self.named: set[str] = set()
        self.source = source or Inline()
        self.compact = compact  # repeated subgraphs as calls of model-local functions (a pack's task graph)
        self.functions: dict[str, onnx.FunctionProto] = {}

    def call(self, fn: onnx.FunctionProto, inputs: list[str], base: str, outputs: int = 1) -> list[str]:
        """One node calling a model-local function (compress.exporters.functions)."""
        self.functions[fn.name] = fn
        return self.node(fn.name, inputs, base, outputs=[self.name(f"{base}/{fn.name}") for _ in range(outputs)], domain=fn.domain)

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base.removeprefix('encoder.encoder.')}~{self.tag}{self.n}"

    def const(self, base: str, array: np.ndarray, name: str | None = None) -> str:
        """An initializer: small ones (shapes, shifts) once per value; with `name`, under exactly that name, once."""
        array = np.ascontiguousarray(array)
        if name is not None:
            if name not in self.named:
                self.inits.append(numpy_helper.from_array(array, name))
                self.named.add(name)
            return name
        key = (array.dtype.str, array.shape, array.tobytes()) if array.nbytes <= 64 else None
        if key in self.small:
            return self.small[key]
        name = self.name(base if key is None else "const")
        self.inits.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.small[key] = name
        return name

    def unpack(self, base: str, stored: np.ndarray, bits: int, suffix: str, name: str | None = None, signed: bool = False) -> str:
        """Unsigned codes (any shape) -> bit-packed uint8 initializer + subgraph giving uint8 of that shape (signed: int8
        codes less 2^(bits - 1), the symmetric grid's offset)."""
        if bits == 8 and not signed:
            return self.const(f"{base}.{suffix}_8bit", stored.astype(np.uint8), name)
        packed = pack_bits(stored, bits)
        return self.unpacked(base, self.const(f"{base}.{suffix}_{bits}bit", packed, name), packed.size, stored.shape, bits, signed)

    def unpacked(self, base: str, packed: str, packed_size: int, shape: tuple[int, ...], bits: int, signed: bool = False) -> str:
        """The subgraph that unpacks a bit-packed uint8 graph tensor into uint8 codes of `shape` (signed: int8, less
        2^(bits - 1)): each byte looked up in a 256-entry table of its 8 / bits codes (a Gather: ONNX Runtime's BitShift
        kernel took half the time of folding a model's weights at load)."""
        per = 8 // bits
        table = byte_codes(bits)
        table = (table - 2 ** (bits - 1)).astype(np.int8) if signed else table.astype(np.uint8)
        flat = self.const(base, np.array([-1], np.int64))
        index = self.node("Cast", [self.node("Reshape", [packed, flat], base)[0]], base, to=TensorProto.INT32)[0]
        x = self.node("Gather", [self.const(base, table), index], base, axis=0)[0]  # [packed_size, per]
        x = self.node("Reshape", [x, flat], base)[0]
        count = int(np.prod(shape))
        if packed_size * per != count:  # the last byte can hold codes past the end
            x = self.node("Slice", [x, self.const(base, np.array([0], np.int64)), self.const(base, np.array([count], np.int64))], base)[0]
        return self.node("Reshape", [x, self.const(base, np.array(shape, np.int64))], base)[0]

    def unpack_planes(self, base: str, stored: np.ndarray, bits: int, suffix: str, dtype: int = TensorProto.INT8) -> str:
        """Unsigned codes [rows, cols] (bits < 8) -> bit-packed uint8 initializer + subgraph giving their signed codes (less
        2^(bits - 1)) as int8 or float (dtype). Packed in planes: byte [j, c] holds the codes of rows j, j + rows / per, ...
        (per = 8 / bits; the first in the low bits), so that each plane is two BitShifts of the bytes (the high bits shifted
        out to the left, the low ones to the right: uint8 arithmetic) and the planes, concatenated, are the rows in order.
        Every op runs over whole tensors, none per element (ONNX Runtime's Gather costs ~5 ns an index: a lookup table
        took twice as long); rows that do not fill the last plane are padded and sliced off."""
        per, (rows, cols) = 8 // bits, stored.shape
        planes = np.pad(stored, ((0, -rows % per), (0, 0))).reshape(per, -1, cols)
        packed = pack_bits(np.moveaxis(planes, 0, -1), bits).reshape(-1, cols)  # a byte's codes: one of each plane
        x = self.const(f"{base}.{suffix}_{bits}bit", packed)
        shift = lambda y, by, way: self.node("BitShift", [y, self.const(base, np.array(by, np.uint8))], base, direction=way)[0]
        out = []
        for k in range(per):  # plane k: bits [k * bits, (k + 1) * bits) of each byte, shifted to the top, then to the bottom
            out.append(shift(x if k == per - 1 else shift(x, 8 - (k + 1) * bits, "LEFT"), 8 - bits, "RIGHT"))
        x = self.node("Concat", out, base, axis=0)[0]  # [rows padded, cols]
        if packed.shape[0] * per != rows:
            x = self.node("Slice", [x, self.const(base, np.array([0], np.int64)), self.const(base, np.array([rows], np.int64))], base)[0]
        offset = self.const(base, np.array(2 ** (bits - 1), np.float32))
        x = self.node("Sub", [self.node("Cast", [x], base, to=TensorProto.FLOAT)[0], offset], base)[0]
        return x if dtype == TensorProto.FLOAT else self.node("Cast", [x], base, to=dtype)[0]

    def cast(self, x: str, base: str, dtype: int) -> str:
        """x as dtype (int8 tensors here: as they are)."""
        return x if dtype == TensorProto.INT8 else self.node("Cast", [x], base, to=dtype)[0]

    def packed_rows(self, base: str, packed: str, cols: int, bits: int):
        """-> a function: graph tensor of row indices -> float32 symmetric codes of those rows of a table whose rows are
        `packed` ([rows, cols * bits / 8] uint8, first code in the low bits): the rows' bytes gathered, each turned into its
        8 / bits codes by a 256-entry lookup table (exact), so that nothing unpacks the table at load."""
        table = self.const(base, (byte_codes(bits) - 2 ** (bits - 1)).astype(np.float32))

        def gather(ids: str) -> str:
            x = self.node("Gather", [packed, ids], base, axis=0)[0]  # [..., cols * bits / 8] bytes
            x = self.node("Gather", [table, self.node("Cast", [x], base, to=TensorProto.INT32)[0]], base, axis=0)[0]
            shape = self.node("Concat", [self.node("Shape", [ids], base)[0], self.const(base, np.array([cols], np.int64))], base, axis=0)[0]
            return self.node("Reshape", [x, shape], base)[0]  # [..., cols]

        return gather

    def node(self, op: str, inputs: list[str], base: str, outputs: list[str] | None = None, domain: str = "", **attrs) -> list[str]:
        outs = outputs or [self.name(f"{base}/{op}")]
        self.nodes.append(
            helper.make_node(op, inputs, outs, name=outs[0] if not outputs else self.name(f"{base}/{op}"), domain=domain or None, **attrs)
        )
        return outs

    def grouped(self, base: str, w: QWeight, op, x: str) -> str:
        """op applied to x [rows, cols] seen as [rows, groups, cols / groups] (per-group scales, zero points)."""
        rows, cols = w.shape
        x = self.node("Reshape", [x, self.const(base, np.array([rows, w.groups, cols // w.groups], np.int64))], base)[0]
        return self.node("Reshape", [op(x), self.const(base, np.array([rows, cols], np.int64))], base)[0]

    def dequant_float(self, base: str, w: QWeight) -> str:
        """-> fp32 [rows, cols] = codes * scale (per row or per group)."""
        rows, _ = w.shape
        x = self.node("Cast", [self.source.codes(self, base, w)], base, to=TensorProto.FLOAT)[0]
        if w.groups == 1:
            return self.node("Mul", [x, self.source.scale(self, base, w, (rows, 1))], base)[0]
        scale = self.source.scale(self, base, w, (rows, w.groups, 1))
        return self.grouped(base, w, lambda g: self.node("Mul", [g, scale], base)[0], x)

    def matmul_nbits(self, base: str, x: str, y: str, w: QWeight) -> None:
        """y = x @ W^T with com.microsoft MatMulNBits reading the stored codes directly."""
        if type(self.source) is not Inline:
            raise ConfigError(
                f"{base}: MatMulNBits reads packed codes as they are, so they cannot come from a shared backbone: use kernel int8"
            )
        rows, cols = w.shape
        bits = w.storage_bits
        block = w.group_size if w.groups > 1 else min(cols & -cols, 256)  # a power of two >= 16 that divides cols
        if block < 16:
            raise ConfigError(f"{base}: MatMulNBits needs blocks of >= 16 inputs, and {cols} inputs allow only {block}: use --kernel int8")
        blocks = cols // block
        codes = pack_bits(w.stored(), bits).reshape(rows, blocks, block * bits // 8)
        scale = np.repeat(w.scale.reshape(rows, -1), blocks // w.groups, axis=1)
        inputs = [x, self.const(f"{base}.codes_{bits}bit", codes), self.half(f"{base}.scale", scale)]
        if w.zero is not None:  # else MatMulNBits' default zero point 2^(bits-1) is our symmetric code offset
            zero = np.repeat(w.zero.reshape(rows, -1), blocks // w.groups, axis=1)
            inputs.append(self.const(f"{base}.zero_{bits}bit", np.stack([pack_bits(z, bits) for z in zero])))
        self.node(
            "MatMulNBits",
            inputs,
            base,
            outputs=[y],
            domain="com.microsoft",
            K=cols,
            N=rows,
            bits=bits,
            block_size=block,
            accuracy_level=NBITS_ACCURACY_LEVEL,
        )

    def gather_nbits(self, base: str, gathers: list[tuple[str, str]], w: QWeight) -> None:
        """y = rows `ids` of the table W for each (ids, y) of `gathers`, with com.microsoft GatherBlockQuantized reading the
        stored codes (one copy for all) directly (ONNX Runtime's mobile packages have it: the table stays low-bit in an
        .ort file, not folded to int8)."""
        if type(self.source) not in (Inline, Prefolded):
            raise ConfigError(
                f"{base}: GatherBlockQuantized reads packed codes as they are, so they cannot come from a shared backbone: use kernel int8"
            )
        rows, cols = w.shape
        bits = w.storage_bits
        # a block is a power of two >= 16: per-row scales take one block that covers the row (ORT pads the last block)
        block = w.group_size if w.groups > 1 else max(16, 1 << (cols - 1).bit_length())
        if cols % w.groups or (w.groups > 1 and (block < 16 or block & (block - 1))):
            raise ConfigError(f"{base}: GatherBlockQuantized needs blocks of a power of two >= 16 inputs, not {block}: use --kernel int8")
        table = [
            self.const(f"{base}.codes_{bits}bit", pack_bits(w.stored(), bits).reshape(rows, -1)),
            self.const(f"{base}.scale", w.scale.reshape(rows, -1).astype(np.float32)),
        ]
        if w.zero is not None:  # else the default zero point 2^(bits-1) is our symmetric code offset
            table.append(self.const(f"{base}.zero_{bits}bit", np.stack([pack_bits(z, bits) for z in w.zero.reshape(rows, -1)])))
        for ids, y in gathers:
            self.node(
                "GatherBlockQuantized",
                [table[0], ids, *table[1:]],
                base,
                outputs=[y],
                domain="com.microsoft",
                gather_axis=0,
                quantize_axis=1,
                block_size=block,
                bits=bits,
            )

    def int8_weight(self, base: str, w: QWeight, smooth: str | None = None, smooth_values: np.ndarray | None = None) -> tuple[str, str]:
        """-> (int8 [cols, rows], float [rows] per-row scale) graph tensors for an integer matmul x @ (W * diag(s))^T,
        smooth = the graph tensor holding s (smooth_values: its values). Per-channel codes are used as they are (codes_t);
        group-wise or smoothed weights are re-rounded to int8 per row (rerounded), all folded at load (Prefolded: computed
        at export)."""
        rows, _ = w.shape
        if isinstance(self.source, Prefolded):
            w8, flat = self.source.int8(w, smooth_values if smooth is not None else None)
            return self.const(f"{base}.weight_int8", np.ascontiguousarray(w8.T)), self.const(f"{base}.row_scale", flat)
        if w.groups == 1 and smooth is None:
            return self.source.codes_t(self, base, w), self.source.scale(self, base, w, (rows,))
        if self.compact and w.groups == 1:
            return self.call(functions.prep(), [self.source.codes(self, base, w), self.source.scale16(self, base, w), smooth], base, 2)
        if w.groups == 1:
            return self.rerounded(base, w, smooth, smooth_values)
        # group-wise codes: dequantized (per group), re-rounded per row, transposed
        wf = self.dequant_float(base, w)
        if smooth is not None:
            wf = self.node("Mul", [wf, smooth], base)[0]
        absmax = self.node("ReduceMax", [self.node("Abs", [wf], base)[0]], base, axes=[1], keepdims=1)[0]
        absmax = self.node("Max", [absmax, self.const(base, np.array(2.0**-14, np.float32))], base)[0]
        row_scale = self.node("Div", [absmax, self.const(base, np.array(127.0, np.float32))], base)[0]
        shape = self.const(base, np.array([rows], np.int64))
        flat = self.node("Reshape", [row_scale, shape], base)[0]
        zero = self.node("ConstantOfShape", [shape], base, value=numpy_helper.from_array(np.array([0], np.int8)))[0]
        # round(wf / row) to even and saturated, per row: Div -> Round -> Cast in one op, without their float tensors
        w8 = self.node("QuantizeLinear", [wf, flat, zero], base, axis=0)[0]
        return self.node("Transpose", [w8], base, perm=[1, 0])[0], flat

    def rerounded(self, base: str, w: QWeight, smooth: str, smooth_values: np.ndarray) -> tuple[str, str]:
        """-> (int8 [cols, rows], float [rows]): per-channel codes c of W^T times the smoothing factors s, re-rounded per
        output channel to round(c / step / (1 / s)), its scale the codes' scale * step (channel_step, stored: the codes'
        float scale cancels out of the rounding). After the unpacking, which gives floats, two passes at load: Div by the steps
        and QuantizeLinear by 1 / s per input channel (axis 0; ONNX Runtime runs a per-axis QuantizeLinear on one thread).
        Prefolded.int8 computes the same."""
        rows, cols = w.shape
        step = self.half(f"{base}.step", channel_step(w, smooth_values))
        x = self.node("Div", [self.source.codes_t(self, base, w, TensorProto.FLOAT), step], base)[0]
        inverse = self.node("Div", [self.const(base, np.array(1.0, np.float32)), smooth], base)[0]
        inverse = self.node("Reshape", [inverse, self.const(base, np.array([cols], np.int64))], base)[0]
        zero = self.node(
            "ConstantOfShape", [self.const(base, np.array([cols], np.int64))], base, value=numpy_helper.from_array(np.zeros(1, np.int8))
        )[0]
        w8 = self.node("QuantizeLinear", [x, inverse, zero], base, axis=0)[0]  # rounded half to even, saturated
        return w8, self.node("Mul", [self.source.scale(self, base, w, (rows,)), step], base)[0]

    def half(self, base: str, values: np.ndarray) -> str:
        """float32 values stored as float16 (scales and smoothing factors were rounded to float16 values: lossless)."""
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values.astype(np.float32)):
            raise ValueError(f"{base}: values are not float16-exact; quantize with compress.quantize")
        return self.node("Cast", [self.const(base, half)], base, to=TensorProto.FLOAT)[0]


def channel_step(w: QWeight, smooth: np.ndarray) -> np.ndarray:
    """float16 [rows]: each output channel's int8 step for its per-channel codes c times the smoothing factors s: max |c * s|
    / 127 (at least 2^-14: an all-zero channel's), raised by 2^-10 and rounded to a float16, so that no re-rounded value
    saturates and the channel's largest lands within 0.2% of 127. Stored with the graph, 2 bytes a channel, so that nothing
    reduces over the weight at load; a pack's task graph computes the same in its graph (compress.exporters.functions.prep)."""
    x = np.abs(w.codes.astype(np.float32) * smooth.astype(np.float32).reshape(1, -1)).max(axis=1) / np.float32(127.0)
    return (np.maximum(x, np.float32(2.0**-14)) * np.float32(1.0 + 2.0**-10)).astype(np.float16)


def toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    producers = {}
    for n in nodes:
        for o in n.output:
            producers[o] = n
    out, done = [], set()

    def visit(n):
        stack = [(n, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                out.append(node)
                continue
            stack.append((node, True))
            for i in node.input:
                p = producers.get(i)
                if p is not None and id(p) not in done and i not in ready:
                    stack.append((p, False))

    for n in nodes:
        visit(n)
    return out
