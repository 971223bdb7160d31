"""ONNX model-local functions for the constant subgraphs that a pack's task graph repeats for every weight.

A MiniLM task graph unpacks, masks and re-rounds about 40 weights; written out node by node that is
some 1,500 nodes and 70 kB, a third as much as its mask. As functions (domain ``compress.pack``) each
is one call node. ONNX Runtime inlines model-local functions when it loads the graph, before constant
folding, so what runs is the same folded int8 weights on the same kernels. The standalone artifact's
graph keeps the subgraphs inline (its size is the codes', not the graph's).

    unpack{2,4}(packed uint8 [n], shape int64 [2]) -> int32 [rows, cols]   bit-packed symmetric codes, signed
    unpack8(packed uint8 [n], shape int64 [2])     -> int32 [rows, cols]   8-bit stored codes (code + 128), signed
    mask_gaps{0,1}(gaps uint8 [n], shape int64 [2]) -> bool [rows, cols]    gap-coded positions of the value 0 (1)
    requant(w float [rows, cols]) -> (int8 [rows, cols], float [rows])      re-rounded per row to int8, with the row scales
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
        nodes = [_const("off", np.array(128, np.int32)), n("Reshape", ["packed", "shape"], ["u"]), n("Cast", ["u"], ["i"], to=TensorProto.INT32),
                 n("Sub", ["i", "off"], ["codes"])]
        return _function("unpack8", ["packed", "shape"], ["codes"], nodes)
    per = 8 // bits
    nodes = [_const("col", np.array([-1, 1], np.int64)), _const("flat", np.array([-1], np.int64)),
             _const("left", np.array([8 - bits * (j + 1) for j in range(per)], np.uint8)), _const("right", np.array([8 - bits], np.uint8)),
             _const("off", np.array(2 ** (bits - 1), np.int32)),
             n("Reshape", ["packed", "col"], ["c"]), n("BitShift", ["c", "left"], ["l"], direction="LEFT"),
             n("BitShift", ["l", "right"], ["r"], direction="RIGHT"), n("Reshape", ["r", "flat"], ["f"]), n("Reshape", ["f", "shape"], ["u"]),
             n("Cast", ["u"], ["i"], to=TensorProto.INT32), n("Sub", ["i", "off"], ["codes"])]
    return _function(f"unpack{bits}", ["packed", "shape"], ["codes"], nodes)


@cache
def mask_gaps(rare: bool) -> onnx.FunctionProto:
    """The position closing a gap = (sum of the bytes so far) + (gaps closed so far) - 1; an escape byte (255)
    closes none: it scatters 0, and adding 0 changes nothing (NonZero would be simpler, but ONNX Runtime does
    not fold it)."""
    n = helper.make_node
    nodes = [_const("esc", np.array(255, np.uint8)), _const("axis", np.array(0, np.int64)), _const("one", np.array(1, np.int64)),
             _const("zero", np.array(0, np.int32)),
             n("Less", ["gaps", "esc"], ["emit"]), n("Cast", ["gaps"], ["g64"], to=TensorProto.INT64), n("CumSum", ["g64", "axis"], ["total"]),
             n("Cast", ["emit"], ["e64"], to=TensorProto.INT64), n("CumSum", ["e64", "axis"], ["count"]), n("Add", ["total", "count"], ["tc"]),
             n("Sub", ["tc", "one"], ["at"]), n("ReduceProd", ["shape"], ["size"], keepdims=1),
             n("ConstantOfShape", ["size"], ["zeros"], value=numpy_helper.from_array(np.array([0], np.int32))),
             n("Cast", ["emit"], ["e32"], to=TensorProto.INT32), n("ScatterElements", ["zeros", "at", "e32"], ["hits"], axis=0, reduction="add"),
             n("Greater", ["hits", "zero"], ["marked"])]
    if rare:
        nodes.append(n("Reshape", ["marked", "shape"], ["mask"]))
    else:
        nodes += [n("Not", ["marked"], ["kept"]), n("Reshape", ["kept", "shape"], ["mask"])]
    return _function(f"mask_gaps{int(rare)}", ["gaps", "shape"], ["mask"], nodes)


@cache
def requant() -> onnx.FunctionProto:
    n = helper.make_node
    nodes = [_const("tiny", np.array(2.0**-14, np.float32)), _const("q", np.array(127.0, np.float32)), _const("flat", np.array([-1], np.int64)),
             n("Abs", ["w"], ["a"]), n("ReduceMax", ["a"], ["m"], axes=[1], keepdims=1), n("Max", ["m", "tiny"], ["mx"]),
             n("Div", ["mx", "q"], ["row"]), n("Div", ["w", "row"], ["x"]), n("Round", ["x"], ["r"]), n("Cast", ["r"], ["w8"], to=TensorProto.INT8),
             n("Reshape", ["row", "flat"], ["scale"])]
    return _function("requant", ["w"], ["w8", "scale"], nodes)
