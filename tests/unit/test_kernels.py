"""Each kernel piece alone (compress.exporters.kernels, .activations, .smoothing): a one-linear graph built by the piece,
run by ONNX Runtime, against numpy's x @ W^T; what one activation mode shares between its consumers."""

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from compress.exporters.builder import Builder
from compress.exporters.kernels import KERNELS, Context
from compress.exporters.smoothing import Smoothing
from compress.quantize import quantize_tensor

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(2, 5, 64)) * np.r_[np.full(60, 0.5), [8, 8, 8, 8]]).astype(np.float32)  # four outlier channels
W = {name: quantize_tensor(torch.from_numpy(RNG.normal(size=(32, 64)).astype(np.float32) * 0.1), 4) for name in ("a", "b")}
RANGES = Smoothing({name: np.abs(X).reshape(-1, 64).max(0) for name in W})


def run(bld: Builder, outputs: list[str]) -> list[np.ndarray]:
    graph = helper.make_graph(
        bld.nodes,
        "piece",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 64])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in outputs],
        initializer=bld.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, {"x": X})


@pytest.mark.parametrize(
    "kernel,activations,tol",
    [("float", "static", 1e-5), ("nbits", "static", 0.02), ("int8", "static", 0.02), ("int8", "token", 0.02), ("int8", "tensor", 0.02)],
)
def test_a_kernel_piece_alone_computes_its_linear(kernel, activations, tol):
    """Relative to the output's range: exact for the float kernel; int8 activations (per tensor, token or calibrated, smoothed)
    round to 1/254 of their range."""
    bld = Builder()
    piece = KERNELS[kernel](Context(bld, W, RANGES, activations))
    for name in W:
        piece.linear(name, W[name], "x", f"y_{name}", fold_into=None)
    for name, got in zip(W, run(bld, [f"y_{n}" for n in W])):
        ref = X @ W[name].dequantize().T
        assert got.shape == ref.shape and np.abs(got - ref).max() <= tol * np.abs(ref).max(), (kernel, activations)


@pytest.mark.parametrize(
    "activations,per_input",
    [("static", {"QuantizeLinear": 1}), ("tensor", {"DynamicQuantizeLinear": 1}), ("token", {"QuantizeLinear": 1, "ReduceMin": 1})],
)
def test_two_linears_on_one_input_share_its_quantization(activations, per_input):
    """An activation mode quantizes each (input, smoothing) once for all of its consumers; without smoothing factors in common
    each linear divides its input by its own (a Mul by 1 / s, folded at load)."""
    bld = Builder()
    piece = KERNELS["int8"](Context(bld, W, Smoothing(RANGES.input_absmax, alpha=None), activations))
    for name in W:
        piece.linear(name, W[name], "x", f"y_{name}", fold_into=None)
    ops = Counter(n.op_type for n in bld.nodes)
    assert all(ops[op] == n for op, n in per_input.items()) and ops["Reciprocal"] == 0, ops
    smoothed = Builder()
    piece = KERNELS["int8"](Context(smoothed, W, RANGES, activations))
    for name in W:
        piece.linear(name, W[name], "x", f"y_{name}", fold_into=None)
    ops = Counter(n.op_type for n in smoothed.nodes)
    ops["QuantizeLinear"] -= ops["ConstantOfShape"]  # each smoothed weight: re-rounded by a QuantizeLinear (its zeros: ConstantOfShape)
    assert ops["ConstantOfShape"] == 2 and ops["Round"] == 0
    assert ops["Reciprocal"] == 2 and all(ops[op] == 2 * n for op, n in per_input.items()), ops


def test_the_nbits_piece_refuses_a_fused_attention():
    att = helper.make_node("Attention", ["x", "w", "b"], ["y"], name="att")
    with pytest.raises(ValueError, match="unfused Q/K/V"):
        KERNELS["nbits"](Context(Builder(), W)).attention(att, ["a", "b", "a"])


@pytest.mark.parametrize("bits,shape", [(4, (64, 32)), (4, (3, 5)), (2, (7, 9)), (2, (64, 32)), (2, (1, 3))])
@pytest.mark.parametrize("dtype", [TensorProto.INT8, TensorProto.FLOAT])
def test_codes_unpack_in_planes_by_shifts(bits, shape, dtype):
    """Builder.unpack_planes: [ceil(rows / per), cols] bytes, each holding a code of each plane; shifted out plane by plane
    and concatenated, every signed code comes back in its place, whatever the rows' remainder; no lookup (Gather) and no
    uint16 tensor (ONNX Runtime's web build cannot cast one)."""
    from compress.qweight import to_unsigned

    codes = RNG.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=shape).astype(np.int8)
    bld = Builder()
    y = bld.unpack_planes("w", to_unsigned(codes, bits), bits, "codes_t", dtype)
    (packed,) = [i for i in bld.inits if i.data_type == TensorProto.UINT8 and len(i.dims) == 2]
    assert list(packed.dims) == [-(-shape[0] * bits // 8), shape[1]]
    assert not any(i.data_type == TensorProto.UINT16 for i in bld.inits)
    graph = helper.make_graph(bld.nodes, "unpack", [], [helper.make_tensor_value_info(y, dtype, None)], initializer=bld.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    assert got.dtype == (np.int8 if dtype == TensorProto.INT8 else np.float32) and np.array_equal(got, codes)
    ops = Counter(n.op_type for n in bld.nodes)
    assert ops["Gather"] == 0 and ops["BitShift"] == 2 * (8 // bits) - 1


def test_channel_step_bounds_each_channel_within_int8():
    """channel_step: max |c * s| / 127, raised by 2^-10 to a float16, so that no re-rounded value saturates and the largest lands
    within 0.2% of 127; an all-zero channel (every weight pruned) gets 2^-14, raised."""
    from compress.exporters.builder import channel_step

    w = W["a"].masked(np.broadcast_to(np.arange(32)[:, None] != 3, (32, 64)))  # channel 3 pruned whole
    smooth = (RNG.random(64) * 4 + 0.1).astype(np.float16).astype(np.float32)
    step = channel_step(w, smooth)
    assert step.dtype == np.float16 and step.shape == (32,) and step[3] == np.float16(2.0**-14 * (1 + 2.0**-10))
    top = np.abs(w.codes.astype(np.float32) * smooth).max(axis=1) / step.astype(np.float32)
    live = np.arange(32) != 3
    assert np.all(top[live] <= 127.0) and np.all(top[live] >= 127.0 * (1 - 2.0**-9))
