"""Dead FFN neurons and attention heads leave the exported graph: smaller matmuls, the same logits."""

import numpy as np
import onnx
import pytest
import torch
from test_export import sample

from compress import backbone, masking, quantize
from compress.build import prepare
from compress.exporters import neurons
from compress.exporters.export import ExportConfig, export
from compress.runtimes.session import open_session, run_logits


def pruned(clf, bits=4, group_size=None, heads_keep=None):
    qts = backbone.quantize_(clf, quantize.QuantConfig(bits=bits, group_size=group_size))
    masking.apply_masks_(clf, masking.MaskConfig(ffn_keep=0.25, heads_keep=heads_keep))
    masking.set_keep_(clf, 1.0)  # the end of the schedule: 32 of 128 neurons per FFN (and heads_keep of 4 heads)
    return prepare(clf, qts)


def test_ffn_pairs(tiny_classifier):
    clf, _ = tiny_classifier
    assert neurons.ffn_pairs(clf) == [
        (f"encoder.encoder.layer.{i}.intermediate.dense", f"encoder.encoder.layer.{i}.output.dense") for i in range(2)
    ]


def test_dead_neurons_leave_the_graph(tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    linears, embedding = pruned(clf)
    feeds = sample()
    with torch.no_grad():
        ref = clf(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()  # the unsliced masked model
    for kernel in ("float", "int8"):
        res = export(clf, linears, embedding, tmp_path / f"{kernel}.onnx", ExportConfig(kernel=kernel, activations="token"), feeds)
        assert res.ffn_neurons == {f"encoder.encoder.layer.{i}.output.dense": [32, 128] for i in range(2)}
        got = run_logits(open_session(tmp_path / f"{kernel}.onnx"), feeds)
        # float kernel: removing a neuron whose output column is all zero is exact (fp32 summation order only);
        # int8: activations rounded per token at run time, as in test_export
        assert np.abs(got - ref).max() < (1e-4 if kernel == "float" else 0.05)
    open_session(tmp_path / "int8.onnx", optimized_path=tmp_path / "opt.onnx")
    graph = onnx.load(str(tmp_path / "opt.onnx")).graph
    inits = {i.name: list(i.dims) for i in graph.initializer}
    matmul_shapes = [inits[n.input[1]] for n in graph.node if n.op_type in ("MatMulInteger", "MatMulIntegerToFloat")]
    assert [64, 32] in matmul_shapes and [32, 64] in matmul_shapes and [64, 128] not in matmul_shapes  # FFN in and out, 32 neurons


def test_grouped_second_projection_keeps_its_dead_columns(tiny_classifier, caplog):
    clf, _ = tiny_classifier
    linears, _ = pruned(clf, bits=2, group_size=16)
    model, sliced, kept = neurons.drop_dead(clf, linears)
    assert kept == {} and "kept as zeros" in caplog.text
    assert all(sliced[n].codes.shape == linears[n].codes.shape for n in linears)
    assert not masking.masked_layers(model)  # returned folded either way


def test_neurons_left_are_padded_to_a_multiple_of_16(tiny_classifier):
    clf, _ = tiny_classifier
    pruned(clf)
    name = "encoder.encoder.layer.0.output.dense"
    with torch.no_grad():  # prune 5 more of its 32 live neurons' columns: 27 live, padded with 5 dead ones to 32
        live = masking.masks(clf)[name].any(0).nonzero().flatten()
        masking.masked_layers(clf)[name].scores[:, live[:5]] = -1.0
    model, _, kept = neurons.drop_dead(clf, {})  # no integer weights: dead columns read from the folded weights
    assert [kept[name].keep.size, kept[name].total] == [32, 128] and kept[name].alive.sum() == 27
    assert kept["encoder.encoder.layer.1.output.dense"].keep.size == 32
    assert kept[name].rows == ("encoder.encoder.layer.0.intermediate.dense",)
    assert model.get_submodule(name).weight.shape == (64, 32)
    feeds = {k: torch.from_numpy(v) for k, v in sample().items()}
    with torch.no_grad():
        assert torch.allclose(model.eval()(**feeds), clf(**feeds), atol=1e-5)


@pytest.mark.parametrize("bits, group_size", [(4, None), (2, 16)])
def test_dead_heads_leave_the_graph(tiny_classifier, tmp_path, bits, group_size):
    """Heads whose output columns are all pruned are removed (Q/K/V rows, output columns); per layer its own head count.
    With groups of 16 along the inputs a head of 16 holds whole groups, so grouped weights lose their heads too."""
    clf, _ = tiny_classifier
    with torch.no_grad():  # sharp attention (random weights attend almost uniformly): a wrong split into heads changes the logits
        for layer in clf.encoder.encoder.layer:
            layer.attention.self.query.weight.mul_(20)
    qts = backbone.quantize_(clf, quantize.QuantConfig(bits=bits, group_size=group_size))
    masking.apply_masks_(clf, masking.MaskConfig(heads_keep=0.5))
    masking.set_keep_(clf, 1.0)  # 2 of 4 heads per layer
    with torch.no_grad():  # a different head count per layer: layer 1 also loses a second head
        name = "encoder.encoder.layer.1.attention.output.dense"
        live = masking.masks(clf)[name].any(0).nonzero().flatten()
        masking.masked_layers(clf)[name].scores[:, live[:16]] = -1.0
    linears, embedding = prepare(clf, qts)
    feeds = sample()
    with torch.no_grad():
        ref = clf(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    for kernel in ("float", "int8"):
        res = export(clf, linears, embedding, tmp_path / f"{kernel}.onnx", ExportConfig(kernel=kernel, activations="token"), feeds)
        assert res.attention_heads == {
            "encoder.encoder.layer.0.attention.output.dense": [2, 4],
            "encoder.encoder.layer.1.attention.output.dense": [1, 4],
        }
        got = run_logits(open_session(tmp_path / f"{kernel}.onnx"), feeds)
        assert np.abs(got - ref).max() < (1e-4 if kernel == "float" else 0.05)
    open_session(tmp_path / "int8.onnx", optimized_path=tmp_path / "opt.onnx")
    graph = onnx.load(str(tmp_path / "opt.onnx")).graph
    heads = sorted(a.i for n in graph.node if n.op_type == "MultiHeadAttention" for a in n.attribute if a.name == "num_heads")
    assert heads == [1, 2]
    inits = {i.name: list(i.dims) for i in graph.initializer}
    shapes = [inits[n.input[1]] for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert shapes.count([64, 32]) == 3 and shapes.count([64, 16]) == 3  # Q/K/V of 2 heads (layer 0) and of 1 head (layer 1)
    assert [32, 64] in shapes and [16, 64] in shapes and [64, 64] not in shapes  # the output projections take 2 and 1 heads
