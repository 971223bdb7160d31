"""Fold masks and quantization into integer initializers of the ONNX graph.

On disk each quantized weight is its integer codes, bit-packed (8 bits: int8; 4 and 2 bits: two
or four codes per byte; 1 bit: a 2-bit container, because a pruned weight needs the code 0), plus
float scales. A small unpacking subgraph (BitShift / Reshape / Cast / Sub) turns the packed bytes
back into integers. All of its inputs are constants, so ONNX Runtime folds it once at session load:
"low-bit on disk, int8 in the kernel".

Kernels (``kernel=``):
  "int8"  DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_int8) -> Cast -> Mul(x_scale * w_scale):
          ONNX Runtime's own dynamic-quantization pattern, which it fuses into DynamicQuantizeMatMul
          (u8 x s8 VNNI/AMX kernels). Per-channel codes feed it exactly; group-wise codes are
          dequantized and re-rounded to per-channel int8 at load (<= 1/254 of the row's range).
  "float" W = Cast(codes) * scale folded to fp32 at load -> MatMul: bit-exact with PyTorch.
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
KERNELS = ("int8", "float")


class WeightMatchError(RuntimeError):
    """A quantized tensor has no matching initializer in the exported graph."""


@dataclass
class IntWeight:
    """Integer codes [rows, cols] (torch layout, mask folded: pruned = 0) and scales [rows, groups]."""

    codes: np.ndarray
    scale: np.ndarray
    bits: int  # the quantization bits (1, 2, 4, 8)
    group_size: int | None

    @property
    def storage_bits(self) -> int:
        return 2 if self.bits == 1 else self.bits  # a masked 1-bit weight is ternary {-1, 0, 1}

    def dequantize(self) -> np.ndarray:
        rows, cols = self.codes.shape
        g = cols if self.group_size is None else self.group_size
        w = self.codes.reshape(rows, cols // g, g).astype(np.float32) * self.scale[..., None].astype(np.float32)
        return w.reshape(rows, cols)


def int_weight(qt, mask: np.ndarray | None = None) -> IntWeight:
    """From a compress.quantize.QTensor and an optional boolean mask of the same shape."""
    codes = qt.q.numpy().astype(np.int8)
    if mask is not None:
        codes = np.where(mask, codes, 0).astype(np.int8)
    return IntWeight(codes, qt.scale.numpy().astype(np.float32), qt.bits, qt.group_size)


class _Builder:
    """Appends nodes and initializers to a graph, with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}__q{self.n}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, outputs: list[str] | None = None, domain: str = "", **attrs) -> list[str]:
        outs = outputs or [self.name(f"{base}_{op}")]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(f"{base}/{op}"), domain=domain or None, **attrs))
        return outs

    def unpack_int32(self, base: str, w: IntWeight) -> str:
        """Packed codes -> int32 tensor [rows, cols] (folded at load)."""
        rows, cols = w.codes.shape
        b = w.storage_bits
        if b == 8:
            return self.node("Cast", [self.const(f"{base}.codes_int8", w.codes)], base, to=TensorProto.INT32)[0]
        packed = pack_bits(to_unsigned(w.codes, b), b)
        per = 8 // b
        col = self.node("Reshape", [self.const(f"{base}.codes_{b}bit", packed), self.const(base, np.array([-1, 1], np.int64))], base)[0]
        left = self.const(base, np.array([8 - b * (j + 1) for j in range(per)], np.uint8))
        x = self.node("BitShift", [col, left], base, direction="LEFT")[0]
        x = self.node("BitShift", [x, self.const(base, np.array([8 - b], np.uint8))], base, direction="RIGHT")[0]
        x = self.node("Reshape", [x, self.const(base, np.array([-1], np.int64))], base)[0]
        if packed.size * per != rows * cols:
            x = self.node("Slice", [x, self.const(base, np.array([0], np.int64)), self.const(base, np.array([rows * cols], np.int64))], base)[0]
        x = self.node("Reshape", [x, self.const(base, np.array([rows, cols], np.int64))], base)[0]
        x = self.node("Cast", [x], base, to=TensorProto.INT32)[0]
        return self.node("Sub", [x, self.const(base, np.array(2 ** (b - 1), np.int32))], base)[0]

    def dequant_float(self, base: str, w: IntWeight) -> str:
        """-> fp32 [rows, cols] = codes * scale (per row or per group)."""
        rows, cols = w.codes.shape
        g = cols if w.group_size is None else w.group_size
        x = self.node("Cast", [self.unpack_int32(base, w)], base, to=TensorProto.FLOAT)[0]
        if g == cols:
            return self.node("Mul", [x, self.const(f"{base}.scale", w.scale.reshape(rows, 1))], base)[0]
        x = self.node("Reshape", [x, self.const(base, np.array([rows, cols // g, g], np.int64))], base)[0]
        x = self.node("Mul", [x, self.const(f"{base}.scale", w.scale.reshape(rows, cols // g, 1))], base)[0]
        return self.node("Reshape", [x, self.const(base, np.array([rows, cols], np.int64))], base)[0]

    def int8_weight(self, base: str, w: IntWeight) -> tuple[str, np.ndarray]:
        """-> (int8 [rows, cols] tensor name, per-row float scale) for an integer matmul."""
        if w.group_size is None or w.group_size == w.codes.shape[1]:
            codes = self.unpack_int32(base, w)
            return self.node("Cast", [codes], base, to=TensorProto.INT8)[0], w.scale.reshape(-1).astype(np.float32)
        row_scale = np.maximum(np.abs(w.dequantize()).max(1), 1e-12).astype(np.float32) / 127.0
        x = self.node("Mul", [self.dequant_float(base, w), self.const(base, (1.0 / row_scale).reshape(-1, 1).astype(np.float32))], base)[0]
        x = self.node("Round", [x], base)[0]
        return self.node("Cast", [x], base, to=TensorProto.INT8)[0], row_scale


def _index(graph: onnx.GraphProto) -> dict[tuple, list[onnx.TensorProto]]:
    idx: dict[tuple, list] = {}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
            arr = numpy_helper.to_array(init)
            idx.setdefault((arr.shape, float(np.abs(arr).astype(np.float64).sum())), []).append(init)
    return idx


def _find(idx, expected: np.ndarray, what: str) -> onnx.TensorProto:
    for init in idx.get((expected.shape, float(np.abs(expected).astype(np.float64).sum())), []):
        if np.array_equal(numpy_helper.to_array(init), expected):
            return init
    raise WeightMatchError(f"{what}: no initializer of shape {expected.shape} in the exported graph equals its "
                           "dequantized masked weight; export the same model that was quantized")


def quantize_graph(model: onnx.ModelProto, linears: dict[str, IntWeight], embedding: tuple[str, IntWeight] | None,
                   kernel: str = "int8") -> tuple[onnx.ModelProto, dict[str, int]]:
    """Replace every matched MatMul weight (and the word-embedding Gather) by its integer encoding.

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
    for name, w in linears.items():
        init = _find(idx, np.ascontiguousarray(w.dequantize().T), name)
        users = [n for n in consumers.get(init.name, []) if n.op_type == "MatMul" and n.input[1] == init.name]
        if not users:
            raise WeightMatchError(f"{name}: its weight {init.name} feeds no MatMul (found {[n.op_type for n in consumers.get(init.name, [])]})")
        for mm in users:
            x, y = mm.input[0], mm.output[0]
            if kernel == "float":
                wt = bld.node("Transpose", [bld.dequant_float(name, w)], name, perm=[1, 0])[0]
                bld.node("MatMul", [x, wt], name, outputs=[y])
            else:
                w8, s8 = bld.int8_weight(name, w)
                wt = bld.node("Transpose", [w8], name, perm=[1, 0])[0]
                if x not in dql:
                    dql[x] = bld.node("DynamicQuantizeLinear", [x], name, outputs=[bld.name(f"{x}_q"), bld.name(f"{x}_scale"), bld.name(f"{x}_zp")])
                xq, xs, xzp = dql[x]
                acc = bld.node("MatMulInteger", [xq, wt, xzp], name)[0]
                accf = bld.node("Cast", [acc], name, to=TensorProto.FLOAT)[0]
                scale = bld.node("Mul", [xs, bld.const(f"{name}.scale", s8)], name)[0]
                bld.node("Mul", [accf, scale], name, outputs=[y])
            drop_nodes.add(id(mm))
        drop_inits.add(init.name)
    if embedding is not None:
        name, w = embedding
        init = _find(idx, w.dequantize(), name)
        users = [n for n in consumers.get(init.name, []) if n.op_type == "Gather" and n.input[0] == init.name]
        if not users:
            raise WeightMatchError(f"{name}: the embedding table {init.name} feeds no Gather (was EmbedLayerNormalization fused?)")
        table = bld.node("Cast", [bld.unpack_int32(name, w)], name, to=TensorProto.INT8)[0]
        row_scale = bld.const(f"{name}.scale", w.scale.reshape(-1, 1))
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
        key = "embeddings" if emb_name and i.name.startswith(emb_name) else "scales" if ".scale" in i.name else "weights"
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
