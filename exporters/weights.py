"""Fold masks and quantization into integer initializers of the ONNX graph.

On disk each quantized weight is its integer codes, bit-packed (8 bits: int8; 4 and 2 bits: two
or four codes per byte; 1 bit: a 2-bit container, because a pruned weight needs the code 0), plus
float16 scales and, for asymmetric weights, bit-packed zero points per group. A small unpacking
subgraph (BitShift / Reshape / Cast / Sub) turns the packed bytes back into integers. All of its inputs are constants, so ONNX Runtime folds it once at session load:
"low-bit on disk, int8 in the kernel".

Kernels (``kernel=``):
  "int8"  DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_int8) -> Cast -> Mul(x_scale * w_scale):
          ONNX Runtime's own dynamic-quantization pattern, which it fuses into DynamicQuantizeMatMul
          (u8 x s8 VNNI/AMX kernels). Per-channel codes feed it exactly; group-wise codes are
          dequantized and re-rounded to per-channel int8 at load (<= 1/254 of the row's range).
  "float" W = Cast(codes) * scale folded to fp32 at load -> MatMul: bit-exact with PyTorch.
  "nbits" com.microsoft MatMulNBits (accuracy_level 4: int8 compute) on the packed codes as they are,
          block = the group size (per-channel scales repeated over blocks of <= 256 inputs); no
          Attention fusion. Kept to measure against: on x86 CPUs it is slower than "int8"
          (benchmarks/results/export_vs_ort.md), but it is the low-bit kernel of ORT's GPU and ARM builds.
The word-embedding table becomes Gather(int codes) -> Cast -> Mul(Gather(row scales)).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.quantize import pack_bits, to_unsigned

log = logging.getLogger(__name__)
KERNELS = ("int8", "float", "nbits")
NBITS_ACCURACY_LEVEL = 4  # MatMulNBits: quantize the activations to int8 per block, integer dot products


class WeightMatchError(RuntimeError):
    """A quantized tensor has no matching initializer in the exported graph."""


@dataclass
class IntWeight:
    """Integer codes [rows, cols] (torch layout, mask folded: pruned = 0), scales [rows, groups] and,
    if asymmetric, zero points [rows, groups]: the stored code is codes + zero, in [0, 2^bits)."""

    codes: np.ndarray
    scale: np.ndarray
    bits: int  # the quantization bits (1, 2, 4, 8)
    group_size: int | None
    zero: np.ndarray | None = None

    @property
    def storage_bits(self) -> int:
        return 2 if self.bits == 1 else self.bits  # a masked 1-bit weight is ternary {-1, 0, 1}

    @property
    def groups(self) -> int:
        cols = self.codes.shape[1]
        return 1 if self.group_size is None else cols // self.group_size

    def grouped(self, a: np.ndarray) -> np.ndarray:
        rows, cols = self.codes.shape
        return a.reshape(rows, self.groups, cols // self.groups)

    def stored(self) -> np.ndarray:
        """The unsigned codes that go to disk."""
        if self.zero is None:
            return to_unsigned(self.codes, self.storage_bits)
        return (self.grouped(self.codes.astype(np.int16)) + self.zero[..., None]).astype(np.uint8).reshape(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        w = self.grouped(self.codes.astype(np.float32)) * self.scale[..., None].astype(np.float32)
        return w.reshape(self.codes.shape)


def int_weight(qt, mask: np.ndarray | None = None) -> IntWeight:
    """From a compress.quantize.QTensor and an optional boolean mask of the same shape."""
    codes = qt.q.numpy().astype(np.int8)
    if mask is not None:
        codes = np.where(mask, codes, 0).astype(np.int8)
    zero = None if qt.zero is None else qt.zero.numpy().astype(np.uint8)
    return IntWeight(codes, qt.scale.numpy().astype(np.float32), qt.bits, qt.group_size, zero)


@dataclass
class Smoothing:
    """SmoothQuant (Xiao et al. 2023) for the int8 kernel: activations are quantized per tensor at run
    time, so a few outlier input channels (MiniLM: up to 15x the median channel's range ahead of the
    FFN) cost every other channel its resolution. Dividing input channel j by s_j and multiplying
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
    alpha: float = 0.75
    max_bits: int = 4

    def factors(self, names: list[str], weights_: list[np.ndarray], bits: int) -> np.ndarray | None:
        """One s for linears sharing their input (Q/K/V): from their inputs' and columns' ranges."""
        if bits > self.max_bits or any(n not in self.input_absmax for n in names):
            return None
        x = np.max([self.input_absmax[n] for n in names], axis=0).astype(np.float64)
        w = np.max([np.abs(w).max(0) for w in weights_], axis=0).astype(np.float64)
        s = np.where((x > 0) & (w > 0), x ** self.alpha / np.maximum(w, 1e-12) ** (1 - self.alpha), 1.0)
        return np.clip(s, 1e-3, 1e3).astype(np.float16).astype(np.float32)  # stored as float16


class _Builder:
    """Appends nodes and initializers to a graph, with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0
        self.small: dict[tuple, str] = {}  # shapes, shifts, ...: one initializer per value

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base.removeprefix('encoder.encoder.')}~{self.n}"

    def const(self, base: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.nbytes <= 64 else None
        if key in self.small:
            return self.small[key]
        name = self.name(base if key is None else "const")
        self.inits.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.small[key] = name
        return name

    def scale(self, base: str, scale: np.ndarray) -> str:
        """fp32 scales stored as float16 (quantize_ rounded them to float16 values: lossless)."""
        half = scale.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), scale.astype(np.float32)):
            raise ValueError(f"{base}: scales are not float16 values; quantize with compress.quantize")
        return self.node("Cast", [self.const(f"{base}.scale", half)], base, to=TensorProto.FLOAT)[0]

    def unpack(self, base: str, stored: np.ndarray, bits: int, suffix: str) -> str:
        """Unsigned codes (any shape) -> bit-packed uint8 initializer + subgraph giving uint8 of that shape."""
        if bits == 8:
            return self.const(f"{base}.{suffix}_8bit", stored.astype(np.uint8))
        packed = pack_bits(stored, bits)
        per = 8 // bits
        col = self.node("Reshape", [self.const(f"{base}.{suffix}_{bits}bit", packed), self.const(base, np.array([-1, 1], np.int64))], base)[0]
        left = self.const(base, np.array([8 - bits * (j + 1) for j in range(per)], np.uint8))
        x = self.node("BitShift", [col, left], base, direction="LEFT")[0]
        x = self.node("BitShift", [x, self.const(base, np.array([8 - bits], np.uint8))], base, direction="RIGHT")[0]
        x = self.node("Reshape", [x, self.const(base, np.array([-1], np.int64))], base)[0]
        if packed.size * per != stored.size:
            x = self.node("Slice", [x, self.const(base, np.array([0], np.int64)), self.const(base, np.array([stored.size], np.int64))], base)[0]
        return self.node("Reshape", [x, self.const(base, np.array(stored.shape, np.int64))], base)[0]

    def node(self, op: str, inputs: list[str], base: str, outputs: list[str] | None = None, domain: str = "", **attrs) -> list[str]:
        outs = outputs or [self.name(f"{base}/{op}")]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0] if not outputs else self.name(f"{base}/{op}"),
                                           domain=domain or None, **attrs))
        return outs

    def unpack_int32(self, base: str, w: IntWeight) -> str:
        """Packed codes -> int32 tensor [rows, cols] (folded at load)."""
        rows, cols = w.codes.shape
        if w.storage_bits == 8:
            return self.node("Cast", [self.const(f"{base}.codes_int8", w.codes)], base, to=TensorProto.INT32)[0]
        x = self.node("Cast", [self.unpack(base, w.stored(), w.storage_bits, "codes")], base, to=TensorProto.INT32)[0]
        if w.zero is None:
            return self.node("Sub", [x, self.const(base, np.array(2 ** (w.storage_bits - 1), np.int32))], base)[0]
        zero = self.node("Cast", [self.unpack(base, w.zero[..., None], w.bits, "zero")], base, to=TensorProto.INT32)[0]
        x = self.node("Reshape", [x, self.const(base, np.array([rows, w.groups, cols // w.groups], np.int64))], base)[0]
        x = self.node("Sub", [x, zero], base)[0]
        return self.node("Reshape", [x, self.const(base, np.array([rows, cols], np.int64))], base)[0]

    def dequant_float(self, base: str, w: IntWeight) -> str:
        """-> fp32 [rows, cols] = codes * scale (per row or per group)."""
        rows, cols = w.codes.shape
        x = self.node("Cast", [self.unpack_int32(base, w)], base, to=TensorProto.FLOAT)[0]
        if w.groups == 1:
            return self.node("Mul", [x, self.scale(base, w.scale.reshape(rows, 1))], base)[0]
        x = self.node("Reshape", [x, self.const(base, np.array([rows, w.groups, cols // w.groups], np.int64))], base)[0]
        x = self.node("Mul", [x, self.scale(base, w.scale.reshape(rows, w.groups, 1))], base)[0]
        return self.node("Reshape", [x, self.const(base, np.array([rows, cols], np.int64))], base)[0]

    def matmul_nbits(self, base: str, x: str, y: str, w: IntWeight) -> None:
        """y = x @ W^T with com.microsoft MatMulNBits reading the stored codes directly."""
        rows, cols = w.codes.shape
        bits = w.storage_bits
        block = w.group_size if w.groups > 1 else min(cols & -cols, 256)  # a power of two >= 16 that divides cols
        if block < 16:
            raise ValueError(f"{base}: MatMulNBits needs blocks of >= 16 inputs, and {cols} inputs allow only {block}: use --kernel int8")
        blocks = cols // block
        codes = pack_bits(w.stored(), bits).reshape(rows, blocks, block * bits // 8)
        scale = np.repeat(w.scale.reshape(rows, -1), blocks // w.groups, axis=1)
        inputs = [x, self.const(f"{base}.codes_{bits}bit", codes), self.scale(base, scale)]
        if w.zero is not None:  # else MatMulNBits' default zero point 2^(bits-1) is our symmetric code offset
            zero = np.repeat(w.zero.reshape(rows, -1), blocks // w.groups, axis=1)
            inputs.append(self.const(f"{base}.zero_{bits}bit", np.stack([pack_bits(z, bits) for z in zero])))
        self.node("MatMulNBits", inputs, base, outputs=[y], domain="com.microsoft", K=cols, N=rows, bits=bits, block_size=block,
                  accuracy_level=NBITS_ACCURACY_LEVEL)

    def int8_weight(self, base: str, w: IntWeight, smooth: str | None = None) -> tuple[str, str]:
        """-> (int8 [rows, cols], float [rows] per-row scale) graph tensors for an integer matmul of
        W * diag(s), smooth = the graph tensor holding s. Per-channel codes are used as they are;
        group-wise or smoothed weights are re-rounded to int8 per row, all folded at load."""
        rows = w.codes.shape[0]
        if w.groups == 1 and smooth is None:
            codes = self.unpack_int32(base, w)
            return self.node("Cast", [codes], base, to=TensorProto.INT8)[0], self.scale(base, w.scale.reshape(-1))
        wf = self.dequant_float(base, w)
        if smooth is not None:
            wf = self.node("Mul", [wf, smooth], base)[0]
        absmax = self.node("ReduceMax", [self.node("Abs", [wf], base)[0]], base, axes=[1], keepdims=1)[0]
        absmax = self.node("Max", [absmax, self.const(base, np.array(2.0**-14, np.float32))], base)[0]
        row_scale = self.node("Div", [absmax, self.const(base, np.array(127.0, np.float32))], base)[0]
        x = self.node("Round", [self.node("Div", [wf, row_scale], base)[0]], base)[0]
        flat = self.node("Reshape", [row_scale, self.const(base, np.array([rows], np.int64))], base)[0]
        return self.node("Cast", [x], base, to=TensorProto.INT8)[0], flat


def _key(a: np.ndarray) -> tuple:
    return a.shape, float(np.abs(a).astype(np.float64).sum())


def _index(graph: onnx.GraphProto) -> dict[tuple, list[tuple]]:
    """Where a weight can sit in the fp32 graph: a 2-D float initializer -> ("init", tensor), or one
    of the Q/K/V blocks of a fused Attention's packed weight [hidden, 3 * hidden] -> ("attention", node, j)."""
    idx: dict[tuple, list] = {}
    inits = {i.name: i for i in graph.initializer}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
            arr = numpy_helper.to_array(init)
            idx.setdefault(_key(arr), []).append((arr, ("init", init)))
    for node in graph.node:
        if node.op_type == "Attention" and node.input[1] in inits:
            for j, block in enumerate(np.split(numpy_helper.to_array(inits[node.input[1]]), 3, axis=1)):
                block = np.ascontiguousarray(block)
                idx.setdefault(_key(block), []).append((block, ("attention", node, j)))
    return idx


def _find(idx, expected: np.ndarray, what: str) -> tuple:
    for arr, where in idx.get(_key(expected), []):
        if np.array_equal(arr, expected):
            return where
    raise WeightMatchError(f"{what}: no initializer of shape {expected.shape} in the exported graph equals its "
                           "dequantized masked weight; export the same model that was quantized")


def quantize_graph(model: onnx.ModelProto, linears: dict[str, IntWeight], embedding: tuple[str, IntWeight] | None,
                   kernel: str = "int8", smooth: Smoothing | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Replace every matched weight by its integer encoding: fused Attention -> QAttention with the
    packed int8 Q/K/V weight, MatMul -> integer matmul, word-embedding Gather -> int8 Gather.

    Returns the new model and byte counts {weights, scales, embeddings}.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel '{kernel}' is not one of {KERNELS}")
    graph = model.graph
    idx = _index(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    bld, drop_nodes, drop_inits, dql = _Builder(), set(), set(), {}

    def quantized_input(x: str, base: str, sm: str | None = None) -> list[str]:
        key = (x, sm)
        if key not in dql:  # one DynamicQuantizeLinear per activation (and smoothing), shared by its consumers
            xs = x if sm is None else bld.node("Div", [x, sm], base)[0]
            dql[key] = bld.node("DynamicQuantizeLinear", [xs], base, outputs=[bld.name(f"{x}_q"), bld.name(f"{x}_scale"), bld.name(f"{x}_zp")])
        return dql[key]

    def smoothing(names: list[str]) -> str | None:
        bits = max(linears[n].bits for n in names)
        s = None if smooth is None else smooth.factors(names, [linears[n].dequantize() for n in names], bits)
        return None if s is None else bld.scale(f"{names[0]}.smooth", s)

    attentions: dict[int, tuple[onnx.NodeProto, list]] = {}
    for name, w in linears.items():
        where = _find(idx, np.ascontiguousarray(w.dequantize().T), name)
        if where[0] == "attention":
            attentions.setdefault(id(where[1]), (where[1], [None] * 3))[1][where[2]] = name
            continue
        init = where[1]
        users = [n for n in consumers.get(init.name, []) if n.op_type == "MatMul" and n.input[1] == init.name]
        if not users:
            raise WeightMatchError(f"{name}: its weight {init.name} feeds no MatMul (found {[n.op_type for n in consumers.get(init.name, [])]})")
        for mm in users:
            x, y = mm.input[0], mm.output[0]
            if kernel == "float":
                wt = bld.node("Transpose", [bld.dequant_float(name, w)], name, perm=[1, 0])[0]
                bld.node("MatMul", [x, wt], name, outputs=[y])
            elif kernel == "nbits":
                bld.matmul_nbits(name, x, y, w)
            else:
                sm = smoothing([name])
                w8, s8 = bld.int8_weight(name, w, sm)
                wt = bld.node("Transpose", [w8], name, perm=[1, 0])[0]
                xq, xs, xzp = quantized_input(x, name, sm)
                acc = bld.node("MatMulInteger", [xq, wt, xzp], name)[0]
                accf = bld.node("Cast", [acc], name, to=TensorProto.FLOAT)[0]
                scale = bld.node("Mul", [xs, s8], name)[0]
                bld.node("Mul", [accf, scale], name, outputs=[y])
            drop_nodes.add(id(mm))
        drop_inits.add(init.name)
    for att, names in attentions.values():
        if kernel == "nbits":
            raise ValueError(f"{att.name}: kernel 'nbits' takes unfused Q/K/V MatMuls; export with fusions.optimize(keep_matmuls=True)")
        if None in names:
            raise WeightMatchError(f"{att.name}: only {[n for n in names if n]} of its Q/K/V weights are quantized; "
                                   "quantize all three projections of a layer or none")
        base = att.name or names[0]
        if kernel == "float":
            parts = [bld.node("Transpose", [bld.dequant_float(n, linears[n])], n, perm=[1, 0])[0] for n in names]
            new = helper.make_node("Attention", [att.input[0], bld.node("Concat", parts, base, axis=1)[0], *att.input[2:]],
                                   list(att.output), name=bld.name(base), domain="com.microsoft")
            new.attribute.extend(att.attribute)
        else:
            sm = smoothing(names)
            int8 = [bld.int8_weight(n, linears[n], sm) for n in names]
            parts = [bld.node("Transpose", [w8], n, perm=[1, 0])[0] for n, (w8, _) in zip(names, int8)]
            col_scale = bld.node("Concat", [s8 for _, s8 in int8], base, axis=0)[0]  # per column of the packed weight
            xq, xs, xzp = quantized_input(att.input[0], base, sm)
            mask_index = att.input[3] if len(att.input) > 3 else ""
            new = helper.make_node("QAttention", [xq, bld.node("Concat", parts, base, axis=1)[0], att.input[2], xs, col_scale,
                                                  mask_index, xzp], list(att.output), name=bld.name(base), domain="com.microsoft")
            new.attribute.extend(a for a in att.attribute if a.name in ("num_heads", "unidirectional"))
        bld.nodes.append(new)
        drop_nodes.add(id(att))
        drop_inits.add(att.input[1])
    if embedding is not None:
        name, w = embedding
        where = _find(idx, w.dequantize(), name)
        init = where[1]
        users = [n for n in consumers.get(init.name, []) if n.op_type == "Gather" and n.input[0] == init.name]
        if not users:
            raise WeightMatchError(f"{name}: the embedding table {init.name} feeds no Gather (was EmbedLayerNormalization fused?)")
        table = bld.node("Cast", [bld.unpack_int32(name, w)], name, to=TensorProto.INT8)[0]
        row_scale = bld.scale(name, w.scale.reshape(-1, 1))
        for g in users:
            ids, y = g.input[1], g.output[0]
            rows = bld.node("Cast", [bld.node("Gather", [table, ids], name, axis=0)[0]], name, to=TensorProto.FLOAT)[0]
            bld.node("Mul", [rows, bld.node("Gather", [row_scale, ids], name, axis=0)[0]], name, outputs=[y])
            drop_nodes.add(id(g))
        drop_inits.add(init.name)
    kept = [n for n in graph.node if id(n) not in drop_nodes]
    del graph.node[:]
    graph.node.extend(_toposort(kept + bld.nodes, graph))
    remaining = [i for i in graph.initializer if i.name not in drop_inits]
    del graph.initializer[:]
    graph.initializer.extend(remaining + bld.inits)
    sizes = {"weights": 0, "scales": 0, "embeddings": 0}
    emb_name = embedding[0] if embedding else None
    for i in bld.inits:
        n = len(i.raw_data) if i.raw_data else numpy_helper.to_array(i).nbytes
        key = ("embeddings" if emb_name and i.name.startswith(emb_name) else "scales" if any(t in i.name for t in (".scale", ".zero", ".smooth"))
               else "weights")
        sizes[key] += n
    return model, sizes


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
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
