"""The model-local ONNX functions of a pack's task graph decode exactly what numpy encodes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.exporters import functions
from compress.maskcodec import RiceCode, mask_decode, mask_encode, rice_decode, rice_encode
from compress.qweight import pack_bits, to_unsigned


def run(fn: onnx.FunctionProto, inputs: dict[str, np.ndarray], out_type) -> np.ndarray:
    """A one-node model calling fn on constant inputs, run by ONNX Runtime."""
    inits = [numpy_helper.from_array(v, k) for k, v in inputs.items()]
    node = helper.make_node(fn.name, list(inputs), ["y"], domain=functions.DOMAIN)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", out_type, ["rows", "cols"])], initializer=inits)
    model = helper.make_model(
        graph, functions=[fn], opset_imports=[helper.make_opsetid("", functions.OPSET), helper.make_opsetid(functions.DOMAIN, 1)]
    )
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]


@pytest.mark.parametrize("density", [0.999, 0.98, 0.9, 0.6])
@pytest.mark.parametrize("rare", [False, True])
def test_rice_mask_decodes_in_the_graph(density, rare):
    rng = np.random.default_rng(int(density * 1000) + rare)
    mask = rng.random((96, 200)) < density
    if rare:  # the kept weights are the rare value: code their positions
        mask = ~mask
    positions = np.flatnonzero(mask.reshape(-1) == rare)
    code = rice_encode(positions)
    assert np.array_equal(rice_decode(code), positions)
    assert np.array_equal(RiceCode.from_bytes(code.to_bytes()).remainders, code.remainders)
    got = run(functions.mask_rice(rare), {"code": code.to_bytes(), "shape": np.array(mask.shape, np.int64)}, TensorProto.BOOL)
    assert np.array_equal(got, mask)
    kind, c, r = mask_encode(mask, rice=True)
    assert np.array_equal(mask_decode(kind, c, r, mask.size).reshape(mask.shape), mask)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_unpack_gives_the_signed_codes(bits):
    rng = np.random.default_rng(bits)
    qmax = 2 ** (bits - 1) - 1
    codes = rng.integers(-qmax, qmax + 1, size=(24, 64)).astype(np.int8)
    packed = pack_bits(to_unsigned(codes, bits), bits)
    got = run(functions.unpack(bits), {"packed": packed, "shape": np.array(codes.shape, np.int64)}, TensorProto.INT8)
    assert np.array_equal(got, codes)


def test_prep_rounds_each_smoothed_row_to_int8():
    rng = np.random.default_rng(0)
    codes = rng.integers(-7, 8, size=(8, 32)).astype(np.int8)
    scale = (rng.random(8) + 0.5).astype(np.float16)
    smooth = (rng.random(32) + 0.5).astype(np.float32)
    fn = functions.prep()
    inits = [numpy_helper.from_array(codes, "c"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(smooth, "m")]
    graph = helper.make_graph(
        [helper.make_node(fn.name, ["c", "s", "m"], ["q", "r"], domain=functions.DOMAIN)],
        "g",
        [],
        [helper.make_tensor_value_info("q", TensorProto.INT8, ["c", "r"]), helper.make_tensor_value_info("r", TensorProto.FLOAT, ["r"])],
        initializer=inits,
    )
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(functions.DOMAIN, 1)])
    q, r = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    w = codes * scale.astype(np.float32)[:, None] * smooth
    assert q.shape == (32, 8) and np.abs(q).max() == 127 and np.allclose(q.T * r[:, None], w, atol=r.max() / 2 + 1e-6)
