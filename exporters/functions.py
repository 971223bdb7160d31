"""ONNX model-local functions for the constant subgraphs that a pack's task graph repeats for every weight.

A MiniLM task graph unpacks, masks and re-rounds about 40 weights; written out node by node that is
some 1,500 nodes and 70 kB, a third as much as its mask. As functions (domain ``compress.pack``) each
is one call node. ONNX Runtime inlines model-local functions when it loads the graph, before constant
folding, so what runs is the same folded int8 weights on the same kernels. The standalone artifact's
graph keeps the subgraphs inline (its size is the codes', not the graph's).

    unpack{2,4}(packed uint8 [n], shape int64 [2]) -> int8 [rows, cols]    bit-packed symmetric codes, signed (by shifts)
    unpack8(packed uint8 [n], shape int64 [2])     -> int8 [rows, cols]    8-bit stored codes (code + 128), signed
    mask_rice{0,1}(code uint8 [n], shape int64 [2]) -> bool [rows, cols]   Rice-coded positions of the value 0 (1)
                                                   (compress.maskcodec.RiceCode.to_bytes: header, unary bits, remainders)
    prep(codes int8 [rows, cols], scale float16 [rows], smooth float [cols]) -> (int8 [cols, rows], float [rows])
                                                   per-channel codes * smoothing re-rounded per row (the standalone
                                                   graph's steps, computed in the graph), transposed
"""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "compress.pack"
OPSET = 17


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _function(name: str, inputs: list[str], outputs: list[str], nodes: list[onnx.NodeProto]) -> onnx.FunctionProto:
    return helper.make_function(DOMAIN, name, inputs, outputs, nodes, [helper.make_opsetid("", OPSET)])


@cache
def unpack(bits: int) -> onnx.FunctionProto:
    n = helper.make_node
    if bits == 8:
        nodes = [
            _const("off", np.array(128, np.int16)),
            n("Reshape", ["packed", "shape"], ["u"]),
            n("Cast", ["u"], ["i"], to=TensorProto.INT16),
            n("Sub", ["i", "off"], ["s"]),
            n("Cast", ["s"], ["codes"], to=TensorProto.INT8),
        ]
        return _function("unpack8", ["packed", "shape"], ["codes"], nodes)
    per = 8 // bits
    nodes = [_const("down", np.array(8 - bits, np.uint8)), _const("axis", np.array([1], np.int64))]
    nodes.append(_const("off", np.array(2 ** (bits - 1), np.int16)))
    for k in range(per):  # code k of each byte: bits [k * bits, (k + 1) * bits), shifted to the top, then to the bottom
        top = "packed"
        if k < per - 1:
            top = f"top{k}"
            up = _const(f"up{k}", np.array(8 - (k + 1) * bits, np.uint8))
            nodes += [up, n("BitShift", ["packed", f"up{k}"], [top], direction="LEFT")]
        nodes += [n("BitShift", [top, "down"], [f"code{k}"], direction="RIGHT"), n("Unsqueeze", [f"code{k}", "axis"], [f"col{k}"])]
    nodes += [
        n("Concat", [f"col{k}" for k in range(per)], ["u"], axis=1),  # [n, per]: each byte's codes in order
        n("Cast", ["u"], ["i"], to=TensorProto.INT16),
        n("Sub", ["i", "off"], ["s"]),
        n("Cast", ["s"], ["s8"], to=TensorProto.INT8),
        n("Reshape", ["s8", "shape"], ["codes"]),
    ]
    return _function(f"unpack{bits}", ["packed", "shape"], ["codes"], nodes)


def _unpack1(x: str, count: str, out: str, tag: str) -> list[onnx.NodeProto]:
    """Nodes: bit-packed uint8 `x` (first value in the low bit) -> its first `count` bits as int64 `out`."""
    n = helper.make_node
    return [
        n("Reshape", [x, "col"], [f"{tag}c"]),
        n("BitShift", [f"{tag}c", "left"], [f"{tag}l"], direction="LEFT"),
        n("BitShift", [f"{tag}l", "seven"], [f"{tag}r"], direction="RIGHT"),
        n("Reshape", [f"{tag}r", "flat"], [f"{tag}f"]),
        n("Slice", [f"{tag}f", "start", count], [f"{tag}s"]),
        n("Cast", [f"{tag}s"], [out], to=TensorProto.INT64),
    ]


@cache
def mask_rice(rare: bool) -> onnx.FunctionProto:
    """Gap j closes at the unary stream's j-th zero bit t_j; its position is (t_j - j) * 2^k + r_0 + .. + r_j + j.
    Every bit scatters to such a position (a one-bit to one at or before the next zero's) and adds 1 if it is a zero
    bit, 0 otherwise: no NonZero, which ONNX Runtime does not fold."""
    n = helper.make_node
    nodes = _rice_constants() + _rice_header() + _rice_positions()
    if rare:
        nodes.append(n("Reshape", ["marked", "shape"], ["mask"]))
    else:
        nodes += [n("Not", ["marked"], ["kept"]), n("Reshape", ["kept", "shape"], ["mask"])]
    return _function(f"mask_rice{int(rare)}", ["code", "shape"], ["mask"], nodes)


def _rice_constants() -> list[onnx.NodeProto]:
    return [
        _const("col", np.array([-1, 1], np.int64)),
        _const("flat", np.array([-1], np.int64)),
        _const("left", np.arange(7, -1, -1, dtype=np.uint8)),
        _const("seven", np.array(7, np.uint8)),
        _const("start", np.array([0], np.int64)),
        _const("hlen", np.array([13], np.int64)),
        _const("end", np.array([2**62], np.int64)),
        _const("le", 256 ** np.arange(4, dtype=np.int64)),
        _const("i1", np.array([1], np.int64)),
        _const("axis", np.array(0, np.int64)),
        _const("one", np.array(1, np.int64)),
        _const("minus1", np.array(-1, np.int64)),
        _const("two", np.array(2.0, np.float32)),
        _const("zero64", np.array([0], np.int64)),
    ]


def _rice_header() -> list[onnx.NodeProto]:
    """The header's fields (unary bits T, positions C, unary bytes UB, k: compress.maskcodec.RiceCode.to_bytes), the two bit
    streams, and the weights 2^(k-1) .. 1 of a remainder's bits."""
    n = helper.make_node

    def field(a: int, b: int, out: str) -> list[onnx.NodeProto]:  # little-endian uint32 of header bytes [a, b)
        return [
            _const(f"{out}_a", np.array([a], np.int64)),
            _const(f"{out}_b", np.array([b], np.int64)),
            n("Slice", ["h", f"{out}_a", f"{out}_b"], [f"{out}_bytes"]),
            n("Mul", [f"{out}_bytes", "le"], [f"{out}_w"]),
            n("ReduceSum", [f"{out}_w", "zero64"], [out], keepdims=1),
        ]

    return [
        n("Slice", ["code", "start", "hlen"], ["hb"]),
        n("Cast", ["hb"], ["h"], to=TensorProto.INT64),
        *field(0, 4, "T"),
        *field(4, 8, "C"),
        *field(8, 12, "UB"),
        _const("k_a", np.array([12], np.int64)),
        n("Slice", ["h", "k_a", "hlen"], ["K"]),
        n("Add", ["hlen", "UB"], ["uend"]),
        n("Slice", ["code", "hlen", "uend"], ["unary"]),
        n("Slice", ["code", "uend", "end"], ["remainders"]),
        n("Mul", ["C", "K"], ["MK"]),
        n("Cast", ["K"], ["Kf"], to=TensorProto.FLOAT),
        n("Pow", ["two", "Kf"], ["Pf"]),
        n("Cast", ["Pf"], ["P"], to=TensorProto.INT64),
        n("Squeeze", ["K"], ["Ks"]),
        n("Sub", ["Ks", "one"], ["Km1"]),
        n("Range", ["Km1", "minus1", "minus1"], ["ex"]),
        n("Cast", ["ex"], ["exf"], to=TensorProto.FLOAT),
        n("Pow", ["two", "exf"], ["wf"]),
        n("Cast", ["wf"], ["weights"], to=TensorProto.INT64),
    ]


def _rice_positions() -> list[onnx.NodeProto]:
    """Each bit's position (see mask_rice), scattered: `marked` is True at the coded positions."""
    n = helper.make_node
    return [
        *_unpack1("unary", "T", "b", "u"),
        *_unpack1("remainders", "MK", "rb", "q"),
        n("Concat", ["flat", "K"], ["rk"], axis=0),
        n("Reshape", ["rb", "rk"], ["rbits"]),
        n("Mul", ["rbits", "weights"], ["rw"]),
        n("ReduceSum", ["rw", "i1"], ["r"], keepdims=0),
        n("CumSum", ["r", "axis"], ["rc"]),
        n("Concat", ["zero64", "rc"], ["R"], axis=0),
        n("Sub", ["one", "b"], ["z"]),
        n("CumSum", ["z", "axis"], ["zc"]),
        n("Sub", ["zc", "one"], ["j"]),
        n("Squeeze", ["T"], ["Ts"]),
        n("Range", ["axis", "Ts", "one"], ["t"]),
        n("Sub", ["t", "j"], ["tj"]),
        n("Mul", ["tj", "P"], ["hi"]),
        n("Gather", ["R", "zc"], ["lo"], axis=0),
        n("Add", ["hi", "lo"], ["hl"]),
        n("Add", ["hl", "j"], ["at"]),
        n("ReduceProd", ["shape"], ["size"], keepdims=1),
        # one byte per weight (a position takes at most one zero bit: 0 or 1 hits)
        n("ConstantOfShape", ["size"], ["zeros"], value=numpy_helper.from_array(np.array([0], np.uint8))),
        n("Cast", ["z"], ["z8"], to=TensorProto.UINT8),
        n("ScatterElements", ["zeros", "at", "z8"], ["hits"], axis=0, reduction="add"),
        n("Cast", ["hits"], ["marked"], to=TensorProto.BOOL),
    ]


@cache
def prep() -> onnx.FunctionProto:
    """The standalone graph's re-rounding (compress.exporters.builder.rerounded), its per-channel steps computed here as
    builder.channel_step computes them at export (max |c * s| / 127, at least 2^-14, raised by 2^-10 and rounded to a
    float16): the same int8 weights and scales, from the backbone's codes in W's layout."""
    n = helper.make_node
    nodes = [
        _const("tiny", np.array(2.0**-14, np.float32)),
        _const("q", np.array(127.0, np.float32)),
        _const("up", np.array(1.0 + 2.0**-10, np.float32)),
        _const("one", np.array(1.0, np.float32)),
        _const("zero", np.array(0, np.int8)),
        _const("col", np.array([-1, 1], np.int64)),
        _const("flat", np.array([-1], np.int64)),
        n("Cast", ["codes"], ["cf"], to=TensorProto.FLOAT),
        n("Mul", ["cf", "smooth"], ["cs"]),
        n("Abs", ["cs"], ["a"]),
        n("ReduceMax", ["a"], ["m"], axes=[1], keepdims=0),
        n("Div", ["m", "q"], ["mq"]),
        n("Max", ["mq", "tiny"], ["lo"]),
        n("Mul", ["lo", "up"], ["raised"]),
        n("Cast", ["raised"], ["half"], to=TensorProto.FLOAT16),
        n("Cast", ["half"], ["step"], to=TensorProto.FLOAT),
        n("Reshape", ["step", "col"], ["stepc"]),
        n("Div", ["cf", "stepc"], ["t"]),
        n("Div", ["one", "smooth"], ["inverse"]),
        n("Div", ["t", "inverse"], ["u"]),
        n("QuantizeLinear", ["u", "one", "zero"], ["w8"]),  # rounded half to even, saturated
        n("Transpose", ["w8"], ["w8t"], perm=[1, 0]),
        n("Cast", ["scale16"], ["s32"], to=TensorProto.FLOAT),
        n("Reshape", ["s32", "flat"], ["s"]),  # (the backbone's scales are [rows, 1])
        n("Mul", ["s", "step"], ["scale"]),
    ]
    return _function("prep", ["codes", "scale16", "smooth"], ["w8t", "scale"], nodes)
