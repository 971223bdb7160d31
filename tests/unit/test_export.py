"""Export parity and graph validity at every bit width, on a tiny random BERT."""
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from compress import masking, quantize
from compress.exporters.export import ExportConfig, export
from compress.exporters.verify import GraphValidityError, ParityError, check_graph, compare
from compress.exporters.weights import int_weight
from compress.pipeline import prepare
from compress.runtimes.session import open_session, run_logits


def masked_quantized(clf, bits, group_size=None):
    qts = quantize.quantize_(clf, quantize.QuantConfig(bits=bits, group_size=group_size))
    layers = masking.apply_masks_(clf, masking.MaskConfig())
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():  # a real mask: about half of the weights pruned
            layer.scores.uniform_(-1, 1)
    return qts


def sample(batch=4, length=12):
    torch.manual_seed(2)
    ids = torch.randint(1000, 3000, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 7:] = 0  # padding
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros((batch, length), np.int64)}


@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (4, 16), (2, None), (2, 16), (1, None)])
def test_export_parity_every_bit_width(tiny_classifier, tmp_path, bits, group):
    clf, _ = tiny_classifier
    qts = masked_quantized(clf, bits, group)
    linears, embedding = prepare(clf, qts)
    feeds = sample()
    res = export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(), feeds)
    # float kernel: the folded weights equal PyTorch's bit for bit; only fp32 summation order differs
    assert res.parity_max_abs_diff < 1e-4
    # int8 kernel: activations are quantized to uint8 per tensor at run time, so the logits move by
    # up to ~1% of their range; on this tiny model that is < 0.05 (measured 0.002-0.02)
    assert res.deployed_max_abs_diff < 0.05
    check_graph(tmp_path / "model.onnx")
    with torch.no_grad():
        ref = clf(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    got = run_logits(open_session(tmp_path / "model.onnx"), feeds)
    assert np.abs(got - ref).max() < 0.05
    # pruned weights are exact zeros in the integer tensors; the codes occupy `bits` per weight
    n = sum(w.codes.size for w in linears.values())
    zeros = sum(int((w.codes == 0).sum()) for w in linears.values())
    assert zeros >= sum(int((~m).sum()) for m in masking.masks(clf).values())
    storage = 2 if bits == 1 else bits
    assert res.sizes["weights"] <= n * storage / 8 + embedding[1].codes.size * max(bits, 4) / 8 + 64 * len(linears)


def test_ort_folds_unpacking_and_runs_integer_kernels(tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(), sample())
    open_session(tmp_path / "model.onnx", optimized_path=tmp_path / "opt.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == len(linears)  # every projection runs int8
    assert ops["BitShift"] == 0 and ops["MatMulInteger"] == 0  # unpacking was constant-folded at load


def test_float_kernel_and_fp32_export(tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    masked_quantized(clf, 32)
    res = export(clf, {}, None, tmp_path / "fp32.onnx", ExportConfig(kernel="float"), sample())
    assert res.parity_max_abs_diff < 1e-4 and res.deployed_max_abs_diff < 1e-4


def test_verify_errors(tmp_path):
    with pytest.raises(ParityError, match="'logits' differs"):
        compare({"logits": np.zeros((2, 2))}, {"logits": np.full((2, 2), 0.1)}, 1e-4, "graph")
    with pytest.raises(ParityError, match="shape"):
        compare({"logits": np.zeros((2, 2))}, {"logits": np.zeros((2, 3))}, 1e-4, "graph")
    bad = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [], []))
    with pytest.raises(GraphValidityError):
        check_graph(bad)


def test_mismatched_weights_are_refused(tiny_classifier, tmp_path):
    from compress.exporters.weights import WeightMatchError

    clf, _ = tiny_classifier
    qts = masked_quantized(clf, 4)
    linears, embedding = prepare(clf, qts)
    name = next(iter(linears))
    linears[name] = int_weight(quantize.quantize_tensor(torch.randn_like(qts[name].q.float()), 4))
    with pytest.raises(WeightMatchError, match=name):
        export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(), sample())
