"""How the int8 kernel quantizes activations: one piece per mode, each with its own cache of quantized inputs.

Every piece takes an activation x (divided by its smoothing factors s, compress.exporters.smoothing) to uint8 codes,
a scale and a zero point, and builds the integer matmul y = x @ W^T on int8 weights W [cols, rows] with per-row
scales, and the fused attention on packed int8 Q/K/V:

    "static"  (StaticActivations) one scale per activation fixed at export, the calibration's max |x / s| / 127, zero
              point 128: QuantizeLinear, then the integer kernels apply both scales in their epilogue (QAttention for
              Q/K/V, com.microsoft MatMulIntegerToFloat for the rest); batch-independent, clips what the calibration
              never reached.
    "token"   (TokenActivations) one scale per token at run time (max |x| of its row / 127, zero point 128), so a
              sequence's logits do not depend on its batch-mates or on the padding; the weight scales are applied in
              MatMulIntegerToFloat's epilogue, the token scales by one Mul; Q, K and V share one quantized input and feed
              MultiHeadAttention.
    "tensor"  (TensorActivations) ONNX Runtime's own dynamic-quantization pattern, DynamicQuantizeLinear (one scale for
              the whole padded batch) fused into DynamicQuantizeMatMul / QAttention: faster, but a sequence's logits
              move with whatever it is batched with.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from compress.errors import ConfigError
from compress.exporters.builder import Builder
from compress.exporters.smoothing import SmoothedInputs
from compress.qweight import QWeight

Int8Weight = tuple[str, str]  # (int8 [cols, rows] graph tensor, float [rows] per-row scale)


class _Activations:
    """What every mode shares: the graph it builds in, the factors its inputs are divided by, a quantized input per (x, s)."""

    def __init__(self, bld: Builder, smoothing: SmoothedInputs, linears: dict[str, QWeight], input_ids: str | None):
        self.bld, self.smoothing, self.linears, self.input_ids = bld, smoothing, linears, input_ids
        self.quantized: dict[tuple[str, str | None], list[str]] = {}  # (x, smoothing tensor) -> its codes, scale, zero point, ...

    def quantize(self, x: str, base: str, sm: str | None, names: list[str]) -> list[str]:
        """-> (uint8 codes, scale, zero point, ...) of x / s, made once per activation and smoothing, shared by its consumers."""
        key = (x, sm)
        if key not in self.quantized:
            self.quantized[key] = self._quantize(x, base, sm, names)
        return self.quantized[key]

    def _quantize(self, x: str, base: str, sm: str | None, names: list[str]) -> list[str]:
        raise NotImplementedError

    def matmul(self, x: str, y: str, base: str, w: Int8Weight, sm: str | None, names: list[str]) -> None:
        """y = x @ W^T through the integer kernel."""
        raise NotImplementedError

    def attention(
        self, att: onnx.NodeProto, base: str, names: list[str], weights: list[Int8Weight], bias: str, sm: str | None
    ) -> onnx.NodeProto:
        """The fused attention node on int8 Q/K/V (`weights`, in that order) that replaces `att`."""
        bld = self.bld
        xq, xs, xzp = self.quantize(att.input[0], base, sm, names)[:3]
        packed = bld.node("Concat", [wt for wt, _ in weights], base, axis=1)[0]
        col_scale = bld.node("Concat", [s8 for _, s8 in weights], base, axis=0)[0]  # per column of the packed weight
        mask_index = att.input[3] if len(att.input) > 3 else ""
        new = helper.make_node(
            "QAttention", [xq, packed, bias, xs, col_scale, mask_index, xzp], list(att.output), name=bld.name(base), domain="com.microsoft"
        )
        new.attribute.extend(a for a in att.attribute if a.name in ("num_heads", "unidirectional"))
        return new


class StaticActivations(_Activations):
    def _quantize(self, x: str, base: str, sm: str | None, names: list[str]) -> list[str]:
        """One scale fixed at export, sigma = the calibration's max |x_j / s_j| / 127 (ONNX Runtime's per-axis QuantizeLinear
        on the last axis is ~20x slower than a Mul and a per-tensor QuantizeLinear)."""
        bld = self.bld
        top = self.smoothing.max_scaled(names, sm)
        if top is None:
            raise ConfigError(
                f"{names[0]}: static activation scales need calibration ranges for its input; export with "
                "calibration batches or activations='token'"
            )
        sigma = bld.const(base, np.array(max(top, 2.0**-24) / 127, np.float32))
        zp = bld.const(base, np.array(128, np.uint8))
        xs = self.smoothing.divide(x, base, sm)
        return [bld.node("QuantizeLinear", [xs, sigma, zp], base, outputs=[bld.name(f"{x}_q")])[0], sigma, zp]

    def matmul(self, x: str, y: str, base: str, w: Int8Weight, sm: str | None, names: list[str]) -> None:
        """Both scales in the integer matmul's epilogue: nothing else to run."""
        xq, xs, xzp = self.quantize(x, base, sm, names)
        self.bld.node("MatMulIntegerToFloat", [xq, w[0], xs, w[1], xzp], base, outputs=[y], domain="com.microsoft")


class TensorActivations(_Activations):
    def _quantize(self, x: str, base: str, sm: str | None, names: list[str]) -> list[str]:
        bld = self.bld
        xs = self.smoothing.divide(x, base, sm)
        return bld.node("DynamicQuantizeLinear", [xs], base, outputs=[bld.name(f"{x}_q"), bld.name(f"{x}_scale"), bld.name(f"{x}_zp")])

    def matmul(self, x: str, y: str, base: str, w: Int8Weight, sm: str | None, names: list[str]) -> None:
        bld = self.bld
        xq, xs, xzp = self.quantize(x, base, sm, names)
        acc = bld.node("Cast", [bld.node("MatMulInteger", [xq, w[0], xzp], base)[0]], base, to=TensorProto.FLOAT)[0]
        bld.node("Mul", [acc, bld.node("Mul", [xs, w[1]], base)[0]], base, outputs=[y])


class TokenActivations(_Activations):
    def __init__(self, bld: Builder, smoothing: SmoothedInputs, linears: dict[str, QWeight], input_ids: str | None):
        super().__init__(bld, smoothing, linears, input_ids)
        self.per_graph: dict = {}  # tensors every quantized activation shares: the leading shape, zero points, output shapes

    def _quantize(self, x: str, base: str, sm: str | None, names: list[str]) -> list[str]:
        """Tokens as rows [tokens, channels], QuantizeLinear per row (axis 0) -> (codes [tokens, channels], scales [tokens, 1],
        zero point, the shape of x without its last axis: to restore the matmul's output)."""
        bld, channels = self.bld, self.linears[names[0]].shape[1]
        xs = self.smoothing.divide(x, base, sm)
        rows = bld.node("Reshape", [xs, bld.const(base, np.array([-1, channels], np.int64))], base)[0]
        # max |x| per row from two reductions that only read x (Abs would write a copy of it first)
        top = bld.node("ReduceMax", [rows], base, axes=[1], keepdims=1)[0]
        bottom = bld.node("Neg", [bld.node("ReduceMin", [rows], base, axes=[1], keepdims=1)[0]], base)[0]
        absmax = bld.node("Max", [top, bottom, bld.const(base, np.array(2.0**-24, np.float32))], base)[0]
        column = bld.node("Div", [absmax, bld.const(base, np.array(127.0, np.float32))], base)[0]  # [tokens, 1]
        scale = bld.node("Reshape", [column, bld.const(base, np.array([-1], np.int64))], base, outputs=[bld.name(f"{x}_scale")])[0]
        lead, zps = self._tokens(x, base)
        q = bld.node("QuantizeLinear", [rows, scale, zps], base, outputs=[bld.name(f"{x}_q")], axis=0)[0]  # |x/scale| <= 127
        return [q, column, bld.const(base, np.array(128, np.uint8)), lead]

    def _tokens(self, x: str, base: str) -> tuple[str, str]:
        """-> (x's shape without its last axis, zero points 128 per token). Every activation of the encoder has the input_ids'
        [batch, tokens]: computed once from them (fewer nodes to run at batch 1), else from x itself."""
        bld, ids = self.bld, self.input_ids
        if ids is None or "lead" not in self.per_graph:
            lead = bld.node("Shape", [ids or x], base)[0]
            if ids is None:
                lead = bld.node("Slice", [lead, bld.const(base, np.array([0], np.int64)), bld.const(base, np.array([-1], np.int64))], base)[
                    0
                ]
            count = bld.node("ReduceProd", [lead], base, keepdims=1)[0]
            self.per_graph.update(lead=lead, zps=bld.node("Expand", [bld.const(base, np.array(128, np.uint8)), count], base)[0])
        return self.per_graph["lead"], self.per_graph["zps"]

    def matmul(self, x: str, y: str, base: str, w: Int8Weight, sm: str | None, names: list[str]) -> None:
        """Integer matmul scaled per weight column in its epilogue, then per token (row); back to [..., outputs]."""
        bld, rows = self.bld, self.linears[base].shape[0]
        xq, xs, xzp, lead = self.quantize(x, base, sm, names)
        acc = bld.node(
            "MatMulIntegerToFloat", [xq, w[0], bld.const(base, np.array(1.0, np.float32)), w[1], xzp], base, domain="com.microsoft"
        )[0]
        yf = bld.node("Mul", [acc, xs], base)[0]
        key = ("shape", lead, rows)
        if key not in self.per_graph:  # [..., outputs]: one per output width
            self.per_graph[key] = bld.node("Concat", [lead, bld.const(base, np.array([rows], np.int64))], base, axis=0)[0]
        bld.node("Reshape", [yf, self.per_graph[key]], base, outputs=[y])

    def attention(
        self, att: onnx.NodeProto, base: str, names: list[str], weights: list[Int8Weight], bias: str, sm: str | None
    ) -> onnx.NodeProto:
        """QAttention takes one input scale: project Q, K and V as integer matmuls on one quantized input, then MultiHeadAttention."""
        bld = self.bld
        q, k, v = [bld.name(f"{base}/{p}") for p in "qkv"]
        for out_, w, n in zip((q, k, v), weights, names):
            self.matmul(att.input[0], out_, n, w, sm, names)
        mask_index = att.input[3] if len(att.input) > 3 else ""
        new = helper.make_node(
            "MultiHeadAttention", [q, k, v, bias, mask_index], list(att.output), name=bld.name(base), domain="com.microsoft"
        )
        new.attribute.extend(a for a in att.attribute if a.name == "num_heads")
        return new


MODES: dict[str, type[_Activations]] = {"static": StaticActivations, "token": TokenActivations, "tensor": TensorActivations}
