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
The word-embedding table becomes Gather(int codes) -> Cast -> Mul(Gather(row scales)).

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
from compress.qweight import QWeight, pack_bits

log = logging.getLogger(__name__)
KERNELS = ("int8", "float", "nbits")
ACTIVATIONS = ("token", "tensor", "static")  # int8 kernel: activation scales per token, per tensor (the whole batch), or calibrated
NBITS_ACCURACY_LEVEL = 4  # MatMulNBits: quantize the activations to int8 per block, integer dot products


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


class Inline:
    """Where a weight's integer codes and scales come from in the graph: packed into the graph itself
    (a pack's task graph takes them from the shared backbone file instead: compress.exporters.shared)."""

    def codes(self, bld: _Builder, base: str, w: QWeight) -> str:
        """-> int8 [rows, cols] signed codes (folded at load; int8 keeps the intermediate tensors of the fold small)."""
        rows, cols = w.shape
        if w.storage_bits == 8:
            return bld.const(f"{base}.codes_int8", w.codes)
        x = bld.node("Cast", [bld.unpack(base, w.stored(), w.storage_bits, "codes")], base, to=TensorProto.INT8)[0]  # < 16: exact
        if w.zero is None:
            return bld.node("Sub", [x, bld.const(base, np.array(2 ** (w.storage_bits - 1), np.int8))], base)[0]
        zero = bld.node("Cast", [bld.unpack(base, w.zero[..., None], w.bits, "zero")], base, to=TensorProto.INT8)[0]
        return bld.grouped(base, w, lambda x: bld.node("Sub", [x, zero], base)[0], x)

    def scale(self, bld: _Builder, base: str, w: QWeight, shape: tuple[int, ...]) -> str:
        """-> float32 scales [rows, groups] reshaped to `shape` (stored as float16)."""
        return bld.half(f"{base}.scale", w.scale.reshape(shape))

    def scale16(self, bld: _Builder, base: str, w: QWeight) -> str:
        """-> the float16 per-row scales [rows] as stored (per-channel weights)."""
        return bld.const(f"{base}.scale", w.scale.reshape(-1).astype(np.float16))


class _Builder:
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

    def unpack(self, base: str, stored: np.ndarray, bits: int, suffix: str, name: str | None = None) -> str:
        """Unsigned codes (any shape) -> bit-packed uint8 initializer + subgraph giving uint8 of that shape."""
        if bits == 8:
            return self.const(f"{base}.{suffix}_8bit", stored.astype(np.uint8), name)
        packed = pack_bits(stored, bits)
        return self.unpacked(base, self.const(f"{base}.{suffix}_{bits}bit", packed, name), packed.size, stored.shape, bits)

    def unpacked(self, base: str, packed: str, packed_size: int, shape: tuple[int, ...], bits: int) -> str:
        """The subgraph that unpacks a bit-packed uint8 graph tensor into uint8 codes of `shape`."""
        per = 8 // bits
        count = int(np.prod(shape))
        col = self.node("Reshape", [packed, self.const(base, np.array([-1, 1], np.int64))], base)[0]
        left = self.const(base, np.array([8 - bits * (j + 1) for j in range(per)], np.uint8))
        x = self.node("BitShift", [col, left], base, direction="LEFT")[0]
        x = self.node("BitShift", [x, self.const(base, np.array([8 - bits], np.uint8))], base, direction="RIGHT")[0]
        x = self.node("Reshape", [x, self.const(base, np.array([-1], np.int64))], base)[0]
        if packed_size * per != count:
            x = self.node("Slice", [x, self.const(base, np.array([0], np.int64)), self.const(base, np.array([count], np.int64))], base)[0]
        return self.node("Reshape", [x, self.const(base, np.array(shape, np.int64))], base)[0]

    def node(self, op: str, inputs: list[str], base: str, outputs: list[str] | None = None, domain: str = "", **attrs) -> list[str]:
        outs = outputs or [self.name(f"{base}/{op}")]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0] if not outputs else self.name(f"{base}/{op}"),
                                           domain=domain or None, **attrs))
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
            raise ConfigError(f"{base}: MatMulNBits reads packed codes as they are, so they cannot come from a shared backbone: use kernel int8")
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
        self.node("MatMulNBits", inputs, base, outputs=[y], domain="com.microsoft", K=cols, N=rows, bits=bits, block_size=block,
                  accuracy_level=NBITS_ACCURACY_LEVEL)

    def int8_weight(self, base: str, w: QWeight, smooth: str | None = None) -> tuple[str, str]:
        """-> (int8 [cols, rows], float [rows] per-row scale) graph tensors for an integer matmul x @ (W * diag(s))^T,
        smooth = the graph tensor holding s. Per-channel codes are used as they are; group-wise or smoothed
        weights are re-rounded to int8 per row, all folded at load."""
        rows, _ = w.shape
        if w.groups == 1 and smooth is None:
            w8, flat = self.source.codes(self, base, w), self.source.scale(self, base, w, (rows,))
        elif self.compact and w.groups == 1:
            return self.call(functions.prep(), [self.source.codes(self, base, w), self.source.scale16(self, base, w), smooth], base, 2)
        else:
            wf = self.dequant_float(base, w)
            if smooth is not None:
                wf = self.node("Mul", [wf, smooth], base)[0]
            absmax = self.node("ReduceMax", [self.node("Abs", [wf], base)[0]], base, axes=[1], keepdims=1)[0]
            absmax = self.node("Max", [absmax, self.const(base, np.array(2.0**-14, np.float32))], base)[0]
            row_scale = self.node("Div", [absmax, self.const(base, np.array(127.0, np.float32))], base)[0]
            x = self.node("Round", [self.node("Div", [wf, row_scale], base)[0]], base)[0]
            flat = self.node("Reshape", [row_scale, self.const(base, np.array([rows], np.int64))], base)[0]
            w8 = self.node("Cast", [x], base, to=TensorProto.INT8)[0]
        return self.node("Transpose", [w8], base, perm=[1, 0])[0], flat

    def half(self, base: str, values: np.ndarray) -> str:
        """float32 values stored as float16 (scales and smoothing factors were rounded to float16 values: lossless)."""
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values.astype(np.float32)):
            raise ValueError(f"{base}: values are not float16-exact; quantize with compress.quantize")
        return self.node("Cast", [self.const(base, half)], base, to=TensorProto.FLOAT)[0]


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
                   source: Inline | None = None, activations: str = "token") -> tuple[onnx.ModelProto, dict[str, int]]:
    """Replace every quantized weight by its integer encoding: fused Attention -> one integer matmul on the packed int8
    Q/K/V weight + MultiHeadAttention (activations="tensor": QAttention), MatMul -> integer matmul, word-embedding
    Gather -> int8 Gather.

    attention: fused Attention node name -> the (Q, K, V) module names it was built from (fusions.optimize).
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
    bld, drop_nodes, drop_inits, dql = _Builder(source, compact=getattr(source, "compact", False)), set(), set(), {}

    def quantized_input(x: str, base: str, sm: str | None, channels: int) -> list[str]:
        """-> (uint8 codes, scale, zero point) of activation x (divided by the smoothing factors sm), made once per
        activation and smoothing and shared by its consumers. Per token: codes [tokens, channels], scales [tokens], and
        the shape of x without its last axis (to restore the matmul's output); per tensor: DynamicQuantizeLinear's outputs."""
        key = (x, sm)
        if key not in dql:
            xs = x if sm is None else bld.node("Div", [x, sm], base)[0]
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
        a Div and a per-tensor QuantizeLinear)."""
        key = (x, sm)
        if key not in dql:
            if smooth is None or any(n not in smooth.input_absmax for n in names):
                raise ConfigError(f"{names[0]}: static activation scales need calibration ranges for its input; export with "
                                  "calibration batches or activations='token'")
            ranges = np.max([smooth.input_absmax[n] for n in names], axis=0).astype(np.float64)
            s = factors[sm].astype(np.float64) if sm is not None else np.ones_like(ranges)
            sigma = bld.const(base, np.array(max(float((ranges / s).max()), 2.0**-24) / 127, np.float32))
            zp = bld.const(base, np.array(128, np.uint8))
            xs = x if sm is None else bld.node("Div", [x, sm], base)[0]
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
            if per_token:  # QAttention takes one input scale: project Q, K and V as integer matmuls on one quantized input
                q, k, v = [bld.name(f"{base}/{p}") for p in "qkv"]
                for out_, (wt, w8_scale), n in zip((q, k, v), int8, names):
                    int8_matmul(att.input[0], out_, n, wt, w8_scale, sm, linears[n].shape, names)
                new = helper.make_node("MultiHeadAttention", [q, k, v, att.input[2], mask_index], list(att.output),
                                       name=bld.name(base), domain="com.microsoft")
                new.attribute.extend(a for a in att.attribute if a.name == "num_heads")
            else:
                if activations == "static":
                    xq, xs, xzp = static_input(att.input[0], base, sm, names)
                else:
                    xq, xs, xzp = quantized_input(att.input[0], base, sm, linears[names[0]].shape[1])
                packed = bld.node("Concat", [wt for wt, _ in int8], base, axis=1)[0]
                col_scale = bld.node("Concat", [s8 for _, s8 in int8], base, axis=0)[0]  # per column of the packed weight
                new = helper.make_node("QAttention", [xq, packed, att.input[2], xs, col_scale, mask_index, xzp], list(att.output),
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
        table = bld.source.codes(bld, name, w)
        row_scale = bld.source.scale(bld, name, w, (w.shape[0], 1))
        for g in users:
            ids, y = g.input[1], g.output[0]
            rows = bld.node("Cast", [bld.node("Gather", [table, ids], name, axis=0)[0]], name, to=TensorProto.FLOAT)[0]
            bld.node("Mul", [rows, bld.node("Gather", [row_scale, ids], name, axis=0)[0]], name, outputs=[y])
            drop_nodes.add(id(g))
        drop_inits.add(init.name)
    still_used = {i for n in graph.node if id(n) not in drop_nodes for i in n.input}
    kept = [n for n in graph.node if id(n) not in drop_nodes]
    del graph.node[:]
    graph.node.extend(_toposort(kept + bld.nodes, graph))
    remaining = [i for i in graph.initializer if i.name not in drop_inits or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(remaining + bld.inits)
    if any(n.domain == "com.microsoft" for n in bld.nodes) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if bld.functions:
        model.functions.extend(bld.functions.values())
        model.opset_import.append(helper.make_opsetid(functions.DOMAIN, 1))
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
