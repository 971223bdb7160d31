"""Fold masks and quantization into integer initializers of the ONNX graph.

On disk each quantized weight is its integer codes, bit-packed (8 bits: int8; 4 and 2 bits: two
or four codes per byte; 1 bit: a 2-bit container, because a pruned weight needs the code 0), plus
float16 scales and, for asymmetric weights, bit-packed zero points per group. A small unpacking
subgraph (BitShift / Reshape / Cast / Sub) turns the packed bytes back into integers. All of its inputs are constants, so ONNX Runtime folds it once at session load:
"low-bit on disk, int8 in the kernel".

Kernels (``kernel=``):
  "int8"  activations quantized to uint8 at run time -> MatMulInteger(x_q, W_int8) -> Cast -> Mul(x_scale * w_scale)
          (u8 x s8 VNNI/AMX kernels). Per-channel codes feed it exactly; group-wise codes are
          dequantized and re-rounded to per-channel int8 at load (<= 1/254 of the row's range).
          activations="static" (ExportConfig's default): one scale per activation fixed at export, the
          calibration's max |x / s| / 127 (s: smoothing), zero point 128: QuantizeLinear, then the integer
          kernels apply both scales in their epilogue (QAttention for Q/K/V, com.microsoft
          MatMulIntegerToFloat for the rest); batch-independent, clips what the calibration never reached.
          activations="token": one scale per token at run time (max |x| of its row / 127, zero point
          128), so a sequence's logits do not depend on its batch-mates or on the padding; the
          weight scales are applied in com.microsoft MatMulIntegerToFloat's epilogue, the token
          scales by one Mul; Q, K and V share one quantized input and feed MultiHeadAttention.
          activations="tensor": ONNX Runtime's own dynamic-quantization pattern, DynamicQuantizeLinear
          (one scale for the whole padded batch) fused into DynamicQuantizeMatMul / QAttention:
          faster, but a sequence's logits move with whatever it is batched with.
  "float" W = Cast(codes) * scale folded to fp32 at load -> MatMul: bit-exact with PyTorch.
  "nbits" com.microsoft MatMulNBits (accuracy_level 4: int8 compute) on the packed codes as they are,
          block = the group size (per-channel scales repeated over blocks of <= 256 inputs); no
          Attention fusion. Kept to measure against: on x86 CPUs it is slower than "int8"
          (benchmarks/results/export_vs_ort.md), but it is the low-bit kernel of ORT's GPU and ARM builds.
The word-embedding table becomes Gather(int codes) -> Cast -> Mul(Gather(row scales)); with "nbits",
com.microsoft GatherBlockQuantized on the packed codes (one block per row), and the other float tables of
>= TABLE_MIN_SIZE values (position embeddings) rounded to 8 bits per row the same way, so that nothing in the
graph unpacks a weight and ONNX Runtime's .ort converter keeps every weight low-bit (compress.exporters.ort_format).

Each weight is found in the fp32 graph by name: a linear by its MatMul node (the torch exporter
names it after the module, e.g. ``/encoder/encoder/layer.0/output/dense/MatMul``), Q/K/V by the
fused Attention node that ONNX Runtime's optimizer built from them (compress.exporters.fusions
records which), the embedding table by its parameter name; the graph's value is then checked to
equal the quantized masked weight. Where the codes come from is a source: ``Inline`` packs
them into the graph; a pack's task graph takes them from the shared backbone file instead
(compress.exporters.shared).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.errors import ConfigError
from compress.exporters import functions
from compress.exporters.builder import Builder, Inline, toposort
from compress.qweight import QWeight

log = logging.getLogger(__name__)
KERNELS = ("int8", "float", "nbits")
ACTIVATIONS = ("token", "tensor", "static")  # int8 kernel: activation scales per token, per tensor (the whole batch), or calibrated
TABLE_MIN_SIZE = 65536  # "nbits": float Gather tables this large are stored 8-bit per row (token-type tables stay float)


class WeightMatchError(RuntimeError):
    """A quantized tensor has no matching initializer in the exported graph."""


@dataclass
class Smoothing:
    """SmoothQuant (Xiao et al. 2023) for the int8 kernel: activations are quantized per token (or per
    tensor) at run time, one scale across all channels, so a few outlier input channels (MiniLM: up to
    15x the median channel's range ahead of the FFN) cost every other channel its resolution. Dividing input channel j by s_j and multiplying
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
        s = np.where((x > 0) & (w > 0), x ** self.alpha / np.maximum(w, 1e-12) ** (1 - self.alpha), 1.0)
        return np.clip(s, 1e-3, 1e3).astype(np.float16).astype(np.float32)  # stored as float16


def _rows_int8(table: np.ndarray) -> QWeight:
    """A float table quantized per row, symmetric 8 bits, round to nearest (|error| <= half a step of max |row| / 127)."""
    scale = (np.maximum(np.abs(table).max(axis=1, keepdims=True), 2.0**-14) / 127).astype(np.float16).astype(np.float32)  # as QWeight's
    codes = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
    return QWeight(codes=codes, scale=scale, zero=None, bits=8, group_size=None)


def module_of(node_name: str) -> str:
    """The torch module a node was exported from: '/encoder/encoder/layer.0/output/dense/MatMul' -> 'encoder.encoder.layer.0.output.dense'."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def _check(name: str, where: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape or not np.array_equal(got, expected):
        detail = f"shape {got.shape} vs {expected.shape}" if got.shape != expected.shape else \
            f"max |d| {float(np.abs(got - expected).max()):.3g}"
        raise WeightMatchError(f"{name}: the exported graph's weight {where} does not equal its dequantized masked weight ({detail}): "
                               "export the same model that was quantized")


def quantize_graph(model: onnx.ModelProto, linears: dict[str, QWeight], embedding: tuple[str, QWeight] | None,
                   kernel: str = "int8", smooth: Smoothing | None = None, attention: dict[str, tuple[str, str, str]] | None = None,
                   source: Inline | None = None, activations: str = "token",
                   values: dict[str, str] | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Replace every quantized weight by its integer encoding: fused Attention -> one integer matmul on the packed int8
    Q/K/V weight + MultiHeadAttention (activations="tensor": QAttention), MatMul -> integer matmul, word-embedding
    Gather -> int8 Gather ("nbits": MatMulNBits and GatherBlockQuantized on the packed codes).

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
    per_token = activations == "token"
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    matmuls: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and module_of(node.name) in linears:
            matmuls.setdefault(module_of(node.name), []).append(node)
    fused = {n.name: n for n in graph.node if n.op_type == "Attention"}
    qkv = {lin: (fused[att], j) for att, names in (attention or {}).items() if att in fused for j, lin in enumerate(names)}
    bld, drop_nodes, drop_inits, dql = Builder(source, compact=getattr(source, "compact", False)), set(), set(), {}

    def quantized_input(x: str, base: str, sm: str | None, channels: int) -> list[str]:
        """-> (uint8 codes, scale, zero point) of activation x (divided by the smoothing factors sm), made once per
        activation and smoothing and shared by its consumers. Per token: codes [tokens, channels], scales [tokens], and
        the shape of x without its last axis (to restore the matmul's output); per tensor: DynamicQuantizeLinear's outputs."""
        key = (x, sm)
        if key not in dql:
            xs = smoothed(x, base, sm)
            if per_token:  # tokens as rows [tokens, channels]: QuantizeLinear per row (axis 0)
                rows = bld.node("Reshape", [xs, bld.const(base, np.array([-1, channels], np.int64))], base)[0]
                # max |x| per row from two reductions that only read x (Abs would write a copy of it first)
                top = bld.node("ReduceMax", [rows], base, axes=[1], keepdims=1)[0]
                bottom = bld.node("Neg", [bld.node("ReduceMin", [rows], base, axes=[1], keepdims=1)[0]], base)[0]
                absmax = bld.node("Max", [top, bottom, bld.const(base, np.array(2.0**-24, np.float32))], base)[0]
                column = bld.node("Div", [absmax, bld.const(base, np.array(127.0, np.float32))], base)[0]  # [tokens, 1]
                scale = bld.node("Reshape", [column, bld.const(base, np.array([-1], np.int64))], base, outputs=[bld.name(f"{x}_scale")])[0]
                lead, zps = tokens(x, base)
                q = bld.node("QuantizeLinear", [rows, scale, zps], base, outputs=[bld.name(f"{x}_q")], axis=0)[0]  # |x/scale| <= 127
                dql[key] = [q, column, bld.const(base, np.array(128, np.uint8)), lead]
            else:
                dql[key] = bld.node("DynamicQuantizeLinear", [xs], base, outputs=[bld.name(f"{x}_q"), bld.name(f"{x}_scale"), bld.name(f"{x}_zp")])
        return dql[key]

    ids = next((i.name for i in graph.input if i.name == "input_ids"), None)
    per_graph: dict = {}  # tensors every quantized activation shares: shape, zero points, output shapes

    def tokens(x: str, base: str) -> tuple[str, str]:
        """-> (x's shape without its last axis, zero points 128 per token). Every activation of the encoder has the input_ids'
        [batch, tokens]: computed once from them (fewer nodes to run at batch 1), else from x itself."""
        if ids is None or "lead" not in per_graph:
            lead = bld.node("Shape", [ids or x], base)[0]
            if ids is None:
                lead = bld.node("Slice", [lead, bld.const(base, np.array([0], np.int64)), bld.const(base, np.array([-1], np.int64))], base)[0]
            count = bld.node("ReduceProd", [lead], base, keepdims=1)[0]
            per_graph.update(lead=lead, zps=bld.node("Expand", [bld.const(base, np.array(128, np.uint8)), count], base)[0])
        return per_graph["lead"], per_graph["zps"]

    def int8_matmul(x: str, y: str, base: str, wt: str, w_scale: str, sm: str | None, shape: tuple[int, int], names: list[str]) -> None:
        """y = x @ W^T through the integer kernel: W [rows, cols] = `shape` as int8 [cols, rows] with per-row scales w_scale."""
        if activations == "static":  # both scales in the integer matmul's epilogue: nothing else to run
            xq, xs, xzp = static_input(x, base, sm, names)
            bld.node("MatMulIntegerToFloat", [xq, wt, xs, w_scale, xzp], base, outputs=[y], domain="com.microsoft")
            return
        xq, xs, xzp, *lead = quantized_input(x, base, sm, shape[1])
        if per_token:  # integer matmul scaled per weight column in its epilogue, then per token (row); back to [..., outputs]
            acc = bld.node("MatMulIntegerToFloat", [xq, wt, bld.const(base, np.array(1.0, np.float32)), w_scale, xzp], base,
                           domain="com.microsoft")[0]
            yf = bld.node("Mul", [acc, xs], base)[0]
            key = ("shape", lead[0], shape[0])
            if key not in per_graph:  # [..., outputs]: one per output width
                per_graph[key] = bld.node("Concat", [lead[0], bld.const(base, np.array([shape[0]], np.int64))], base, axis=0)[0]
            bld.node("Reshape", [yf, per_graph[key]], base, outputs=[y])
        else:
            acc = bld.node("Cast", [bld.node("MatMulInteger", [xq, wt, xzp], base)[0]], base, to=TensorProto.FLOAT)[0]
            bld.node("Mul", [acc, bld.node("Mul", [xs, w_scale], base)[0]], base, outputs=[y])

    factors: dict[str, np.ndarray] = {}  # smoothing tensor -> its values
    reciprocal: dict[str, str] = {}  # smoothing tensor -> 1 / s (folded at load: on CPU a Mul costs less than a Div)
    folded_into_v: dict[str, str] = {}  # V projection -> the smoothing tensor of its output projection's input, folded into V

    def inverse(sm: str, base: str) -> str:
        if sm not in reciprocal:
            reciprocal[sm] = bld.node("Reciprocal", [sm], base)[0]
        return reciprocal[sm]

    def smoothed(x: str, base: str, sm: str | None) -> str:
        """x / s as x * (1 / s); x itself where there is no smoothing or V's rows already divided it (folded_into_v)."""
        if sm is None or sm in folded_into_v.values():
            return x
        return bld.node("Mul", [x, inverse(sm, base)], base)[0]

    def smoothing(names: list[str]) -> str | None:
        bits = max(linears[n].bits for n in names)
        s = None if smooth is None else smooth.factors(names, [linears[n].dequantize() for n in names], bits)
        if s is None:
            return None
        name = bld.half(f"{names[0]}.smooth", s)
        factors[name] = s
        return name

    def static_input(x: str, base: str, sm: str | None, names: list[str]) -> list[str]:
        """-> (uint8 codes, scale, zero point) of x / s (smoothing) quantized with one scale fixed at export, sigma = the
        calibration's max |x_j / s_j| / 127 (ONNX Runtime's per-axis QuantizeLinear on the last axis is ~20x slower than
        a Mul and a per-tensor QuantizeLinear)."""
        key = (x, sm)
        if key not in dql:
            if smooth is None or any(n not in smooth.input_absmax for n in names):
                raise ConfigError(f"{names[0]}: static activation scales need calibration ranges for its input; export with "
                                  "calibration batches or activations='token'")
            ranges = np.max([smooth.input_absmax[n] for n in names], axis=0).astype(np.float64)
            s = factors[sm].astype(np.float64) if sm is not None else np.ones_like(ranges)
            sigma = bld.const(base, np.array(max(float((ranges / s).max()), 2.0**-24) / 127, np.float32))
            zp = bld.const(base, np.array(128, np.uint8))
            xs = smoothed(x, base, sm)
            dql[key] = [bld.node("QuantizeLinear", [xs, sigma, zp], base, outputs=[bld.name(f"{x}_q")])[0], sigma, zp]
        return dql[key]

    attentions: dict[str, list] = {}
    for name, w in linears.items():
        if name in qkv:
            att, j = qkv[name]
            block = np.split(numpy_helper.to_array(inits[att.input[1]]), 3, axis=1)[j]
            _check(name, f"(block {j} of {att.input[1]})", block, w.dequantize().T)
            attentions.setdefault(att.name, [None] * 3)[j] = name
            continue
        if name not in matmuls:
            raise WeightMatchError(f"{name}: the exported graph has no MatMul node of that module (nor a fused Attention built from it): "
                                   "export the model whose linears were quantized, with compress.exporters.export")
        for mm in matmuls[name]:
            _check(name, mm.input[1], numpy_helper.to_array(inits[mm.input[1]]), w.dequantize().T)
            x, y = mm.input[0], mm.output[0]
            if kernel == "float":
                wt = bld.node("Transpose", [bld.dequant_float(name, w)], name, perm=[1, 0])[0]
                bld.node("MatMul", [x, wt], name, outputs=[y])
            elif kernel == "nbits":
                bld.matmul_nbits(name, x, y, w)
            else:
                sm = smoothing([name])
                v = (values or {}).get(name)
                if sm is not None and v in qkv and v in linears and len(matmuls[name]) == 1:  # its input is V's output: fold 1 / s into V
                    folded_into_v[v] = sm
                int8_matmul(x, y, name, *bld.int8_weight(name, w, sm), sm, w.shape, [name])
            drop_nodes.add(id(mm))
            drop_inits.add(mm.input[1])
    for att_name, names in attentions.items():
        att = fused[att_name]
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
            mask_index = att.input[3] if len(att.input) > 3 else ""
            bias = att.input[2]
            if names[2] in folded_into_v:  # V's rows and bias divided by its output projection's smoothing factors
                inv = inverse(folded_into_v[names[2]], base)
                int8[2] = (int8[2][0], bld.node("Mul", [int8[2][1], inv], base)[0])
                qk = sum(linears[n].shape[0] for n in names[:2])
                ones = bld.node("Expand", [bld.const(base, np.array([1.0], np.float32)), bld.const(base, np.array([qk], np.int64))], base)[0]
                bias = bld.node("Mul", [bias, bld.node("Concat", [ones, inv], base, axis=0)[0]], base)[0]
            if per_token:  # QAttention takes one input scale: project Q, K and V as integer matmuls on one quantized input
                q, k, v = [bld.name(f"{base}/{p}") for p in "qkv"]
                for out_, (wt, w8_scale), n in zip((q, k, v), int8, names):
                    int8_matmul(att.input[0], out_, n, wt, w8_scale, sm, linears[n].shape, names)
                new = helper.make_node("MultiHeadAttention", [q, k, v, bias, mask_index], list(att.output),
                                       name=bld.name(base), domain="com.microsoft")
                new.attribute.extend(a for a in att.attribute if a.name == "num_heads")
            else:
                if activations == "static":
                    xq, xs, xzp = static_input(att.input[0], base, sm, names)
                else:
                    xq, xs, xzp = quantized_input(att.input[0], base, sm, linears[names[0]].shape[1])
                packed = bld.node("Concat", [wt for wt, _ in int8], base, axis=1)[0]
                col_scale = bld.node("Concat", [s8 for _, s8 in int8], base, axis=0)[0]  # per column of the packed weight
                new = helper.make_node("QAttention", [xq, packed, bias, xs, col_scale, mask_index, xzp], list(att.output),
                                       name=bld.name(base), domain="com.microsoft")
                new.attribute.extend(a for a in att.attribute if a.name in ("num_heads", "unidirectional"))
        bld.nodes.append(new)
        drop_nodes.add(id(att))
        drop_inits.add(att.input[1])
    if embedding is not None:
        name, w = embedding
        init = inits.get(f"{name}.weight")
        users = [n for n in consumers.get(init.name, []) if n.op_type == "Gather" and n.input[0] == init.name] if init is not None else []
        if not users:
            raise WeightMatchError(f"{name}: the exported graph has no Gather of {name}.weight (was EmbedLayerNormalization fused?)")
        _check(name, init.name, numpy_helper.to_array(init), w.dequantize())
        if kernel == "nbits":
            bld.gather_nbits(name, [(g.input[1], g.output[0]) for g in users], w)
            drop_nodes.update(id(g) for g in users)
        else:
            table = bld.source.codes(bld, name, w)
            row_scale = bld.source.scale(bld, name, w, (w.shape[0], 1))
            for g in users:
                ids, y = g.input[1], g.output[0]
                rows = bld.node("Cast", [bld.node("Gather", [table, ids], name, axis=0)[0]], name, to=TensorProto.FLOAT)[0]
                bld.node("Mul", [rows, bld.node("Gather", [row_scale, ids], name, axis=0)[0]], name, outputs=[y])
                drop_nodes.add(id(g))
        drop_inits.add(init.name)
    tables = {embedding[0]} if embedding else set()
    if kernel == "nbits":  # the other float tables (position embeddings: 0.8 MB of MiniLM's 12.4) at 8 bits per row as well
        gathers: dict[str, list[onnx.NodeProto]] = {}
        for g in graph.node:
            init = inits.get(g.input[0]) if g.op_type == "Gather" and id(g) not in drop_nodes else None
            if init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) == 2 and init.dims[0] * init.dims[1] >= TABLE_MIN_SIZE:
                gathers.setdefault(init.name, []).append(g)
        for init_name, users in gathers.items():
            base = init_name.removesuffix(".weight")
            bld.gather_nbits(base, [(g.input[1], g.output[0]) for g in users], _rows_int8(numpy_helper.to_array(inits[init_name])))
            tables.add(base)
            drop_nodes.update(id(g) for g in users)
            drop_inits.add(init_name)
    still_used = {i for n in graph.node if id(n) not in drop_nodes for i in n.input}
    kept = [n for n in graph.node if id(n) not in drop_nodes]
    del graph.node[:]
    graph.node.extend(toposort(kept + bld.nodes, graph))
    remaining = [i for i in graph.initializer if i.name not in drop_inits or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(remaining + bld.inits)
    if any(n.domain == "com.microsoft" for n in bld.nodes) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if bld.functions:
        model.functions.extend(bld.functions.values())
        model.opset_import.append(helper.make_opsetid(functions.DOMAIN, 1))
    sizes = {"weights": 0, "scales": 0, "embeddings": 0}
    for i in bld.inits:
        n = len(i.raw_data) if i.raw_data else numpy_helper.to_array(i).nbytes
        key = ("embeddings" if any(i.name.startswith(t) for t in tables) else "scales" if any(t in i.name for t in (".scale", ".zero", ".smooth"))
               else "weights")
        sizes[key] += n
    return model, sizes
