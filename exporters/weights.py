"""Fold masks and quantization into integer initializers of the ONNX graph.

On disk each quantized weight is its integer codes, bit-packed (8 bits: int8; 4 and 2 bits: two
or four codes per byte; 1 bit: a 2-bit container, because a pruned weight needs the code 0), plus
float16 scales and, for asymmetric weights, bit-packed zero points per group. A small unpacking
subgraph (BitShift / Reshape / Cast / Sub) turns the packed bytes back into integers. All of its inputs
are constants, so ONNX Runtime folds it once at session load: "low-bit on disk, int8 in the kernel".

``quantize_graph`` finds every quantized weight in the fp32 graph by name (``Targets``): a linear by its
MatMul node (the torch exporter names it after the module, e.g. ``/encoder/encoder/layer.0/output/dense/MatMul``),
Q/K/V by the fused Attention node that ONNX Runtime's optimizer built from them (compress.exporters.fusions
records which), the embedding table by its parameter name; the graph's value is checked to equal the quantized
masked weight. The kernel's piece (compress.exporters.kernels: int8 with an activation mode, float, nbits)
builds what replaces each one; this module removes what it replaced and puts the graph back in order. Where
the codes come from is a source: ``Inline`` packs them into the graph; a pack's task graph takes them from
the shared backbone file instead (compress.exporters.shared).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.configs import ACTIVATIONS, KERNELS
from compress.errors import CompressError
from compress.exporters import functions
from compress.exporters.builder import Builder, Inline, toposort
from compress.exporters.kernels import KERNELS as PIECES
from compress.exporters.kernels import Context, Gathers
from compress.exporters.smoothing import Smoothing
from compress.qweight import QWeight

log = logging.getLogger(__name__)


class WeightMatchError(CompressError, RuntimeError):
    """A quantized tensor has no matching initializer in the exported graph."""


def module_of(node_name: str) -> str:
    """The torch module a node was exported from: '/encoder/encoder/layer.0/output/dense/MatMul' ->
    'encoder.encoder.layer.0.output.dense'."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def _check(name: str, where: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape or not np.array_equal(got, expected):
        detail = (
            f"shape {got.shape} vs {expected.shape}"
            if got.shape != expected.shape
            else f"max |d| {float(np.abs(got - expected).max()):.3g}"
        )
        raise WeightMatchError(
            f"{name}: the exported graph's weight {where} does not equal its dequantized masked weight ({detail}): "
            "export the same model that was quantized"
        )


@dataclass
class Targets:
    """Where the quantized weights are in the fp32 graph, and what has been replaced so far."""

    graph: onnx.GraphProto
    inits: dict[str, onnx.TensorProto]
    matmuls: dict[str, list[onnx.NodeProto]]  # linear -> its MatMul nodes
    fused: dict[str, onnx.NodeProto]  # Attention nodes by name
    qkv: dict[str, tuple[onnx.NodeProto, int]]  # Q/K/V projection -> (its Attention node, its block of the packed weight)
    input_ids: str | None
    drop_nodes: set[int] = field(default_factory=set)  # id() of replaced nodes (held in `dropped`, so that the ids stay theirs)
    dropped: list[onnx.NodeProto] = field(default_factory=list)
    drop_inits: set[str] = field(default_factory=set)  # replaced initializers

    @classmethod
    def find(cls, graph: onnx.GraphProto, linears: dict[str, QWeight], attention: dict[str, tuple[str, str, str]]) -> Targets:
        inits = {i.name: i for i in graph.initializer}
        matmuls: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            if node.op_type == "MatMul" and node.input[1] in inits and module_of(node.name) in linears:
                matmuls.setdefault(module_of(node.name), []).append(node)
        fused = {n.name: n for n in graph.node if n.op_type == "Attention"}
        qkv = {lin: (fused[att], j) for att, names in attention.items() if att in fused for j, lin in enumerate(names)}
        ids = next((i.name for i in graph.input if i.name == "input_ids"), None)
        return cls(graph, inits, matmuls, fused, qkv, ids)

    def gathers(self, table: str) -> list[onnx.NodeProto]:
        """The Gather nodes that read rows of the initializer `table` and are not replaced yet."""
        return [n for n in self.graph.node if n.op_type == "Gather" and n.input[0] == table and id(n) not in self.drop_nodes]

    def replaced(self, nodes: list[onnx.NodeProto], init: str) -> None:
        self.dropped += nodes  # a message's Python object lives as long as it is referenced: its id() is only unique while held
        self.drop_nodes.update(id(n) for n in nodes)
        self.drop_inits.add(init)

    def float_tables(self) -> dict[str, tuple[onnx.TensorProto, Gathers]]:
        """Every 2-D float initializer that Gathers read (not replaced yet), with its Gathers' (ids, output), in graph order."""
        out: dict[str, list[onnx.NodeProto]] = {}
        for g in self.graph.node:
            init = self.inits.get(g.input[0]) if g.op_type == "Gather" and id(g) not in self.drop_nodes else None
            if init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
                out.setdefault(init.name, []).append(g)
        return {k: (self.inits[k], [(g.input[1], g.output[0]) for g in users]) for k, users in out.items()}


def quantize_graph(
    model: onnx.ModelProto,
    linears: dict[str, QWeight],
    embedding: tuple[str, QWeight] | None,
    kernel: str = "int8",
    smooth: Smoothing | None = None,
    attention: dict[str, tuple[str, str, str]] | None = None,
    source: Inline | None = None,
    activations: str = "token",
    values: dict[str, str] | None = None,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Replace every quantized weight by its integer encoding: fused Attention -> one integer matmul on the packed int8
    Q/K/V weight + MultiHeadAttention (activations="tensor" / "static": QAttention), MatMul -> integer matmul,
    word-embedding Gather -> int8 Gather ("nbits": MatMulNBits and GatherBlockQuantized on the packed codes).

    attention: fused Attention node name -> the (Q, K, V) module names it was built from (fusions.optimize).
    values: attention output projection -> its attention's V projection (masking.attention_of). Where both are int8 and
    the output projection's input is smoothed (x / s), s is folded into V's rows and bias instead (the attention's
    output channels are V's: exact), so that input needs no division at run time.
    Returns the new model and byte counts {weights, scales, embeddings} of the initializers written.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel '{kernel}' is not one of {KERNELS}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations '{activations}' is not one of {ACTIVATIONS}")
    t = Targets.find(model.graph, linears, attention or {})
    bld = Builder(source, compact=getattr(source, "compact", False))
    piece = PIECES[kernel](Context(bld, linears, smooth, activations, t.input_ids))
    for name, w in linears.items():
        _replace_linear(t, piece, name, w, linears, values or {})
    for att_name, names in _attentions(t, linears).items():
        att = t.fused[att_name]
        bld.nodes.append(piece.attention(att, names))
        t.replaced([att], att.input[1])
    tables = set()
    if embedding is not None:
        tables.add(_replace_embedding(t, piece, *embedding))
    for init_name in piece.tables(t.float_tables()):
        t.replaced(t.gathers(init_name), init_name)
        tables.add(init_name.removesuffix(".weight"))
    return _assemble(model, t, bld), _sizes(bld, tables)


def _replace_linear(t: Targets, piece, name: str, w: QWeight, linears: dict[str, QWeight], values: dict[str, str]) -> None:
    """Every MatMul of one linear (a Q/K/V projection waits for its fused Attention node)."""
    if name in t.qkv:
        att, j = t.qkv[name]
        block = np.split(numpy_helper.to_array(t.inits[att.input[1]]), 3, axis=1)[j]
        _check(name, f"(block {j} of {att.input[1]})", block, w.dequantize().T)
        return
    if name not in t.matmuls:
        raise WeightMatchError(
            f"{name}: the exported graph has no MatMul node of that module (nor a fused Attention built from it): "
            "export the model whose linears were quantized, with compress.exporters.export"
        )
    v = values.get(name)
    fold_into = v if v in t.qkv and v in linears and len(t.matmuls[name]) == 1 else None
    for mm in t.matmuls[name]:
        _check(name, mm.input[1], numpy_helper.to_array(t.inits[mm.input[1]]), w.dequantize().T)
        piece.linear(name, w, mm.input[0], mm.output[0], fold_into)
        t.replaced([mm], mm.input[1])


def _attentions(t: Targets, linears: dict[str, QWeight]) -> dict[str, list[str]]:
    """Fused Attention node -> its Q, K, V projections (all three quantized), in the order the linears come."""
    out: dict[str, list] = {}
    for name in linears:
        if name in t.qkv:
            att, j = t.qkv[name]
            out.setdefault(att.name, [None] * 3)[j] = name
    for att_name, names in out.items():
        if None in names:
            raise WeightMatchError(
                f"{att_name}: only {[n for n in names if n]} of its Q/K/V weights are quantized; "
                "quantize all three projections of a layer or none"
            )
    return out


def _replace_embedding(t: Targets, piece, name: str, w: QWeight) -> str:
    init = t.inits.get(f"{name}.weight")
    users = t.gathers(init.name) if init is not None else []
    if not users:
        raise WeightMatchError(f"{name}: the exported graph has no Gather of {name}.weight (was EmbedLayerNormalization fused?)")
    _check(name, init.name, numpy_helper.to_array(init), w.dequantize())
    piece.embedding(name, w, [(g.input[1], g.output[0]) for g in users])
    t.replaced(users, init.name)
    return name


def _assemble(model: onnx.ModelProto, t: Targets, bld: Builder) -> onnx.ModelProto:
    """The graph without what was replaced, with what replaced it, in topological order; the opsets it now needs."""
    graph = t.graph
    still_used = {i for n in graph.node if id(n) not in t.drop_nodes for i in n.input}
    kept = [n for n in graph.node if id(n) not in t.drop_nodes]
    del graph.node[:]
    graph.node.extend(toposort(kept + bld.nodes, graph))
    remaining = [i for i in graph.initializer if i.name not in t.drop_inits or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(remaining + bld.inits)
    if any(n.domain == "com.microsoft" for n in bld.nodes) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if bld.functions:
        model.functions.extend(bld.functions.values())
        model.opset_import.append(helper.make_opsetid(functions.DOMAIN, 1))
    return model


def _sizes(bld: Builder, tables: set[str]) -> dict[str, int]:
    """Bytes of the initializers written: weight codes, scales (and zero points, smoothing factors), embedding tables."""
    sizes = {"weights": 0, "scales": 0, "embeddings": 0}
    for i in bld.inits:
        n = len(i.raw_data) if i.raw_data else numpy_helper.to_array(i).nbytes
        key = (
            "embeddings"
            if any(i.name.startswith(t) for t in tables)
            else "scales"
            if any(t in i.name for t in (".scale", ".zero", ".smooth"))
            else "weights"
        )
        sizes[key] += n
    return sizes
