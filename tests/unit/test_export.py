"""Export parity and graph validity at every bit width, on a tiny random BERT."""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from compress import backbone, masking, quantize
from compress.build import prepare
from compress.exporters import ort_format
from compress.exporters.export import ExportConfig, export
from compress.exporters.verify import GraphValidityError, ParityError, check_graph, compare
from compress.runtimes.session import open_session, run_logits

SLOW = pytest.mark.slow  # --full only


def masked_quantized(clf, bits, group_size=None, symmetric=True):
    qts = backbone.quantize_(clf, quantize.QuantConfig(bits=bits, group_size=group_size, symmetric=symmetric))
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


@pytest.mark.parametrize(
    "bits,group,symmetric",
    [
        (8, None, True),
        (4, None, True),
        pytest.param(4, 16, True, marks=SLOW),
        pytest.param(4, None, False, marks=SLOW),
        pytest.param(2, None, True, marks=SLOW),
        (2, 16, True),
        pytest.param(2, None, False, marks=SLOW),
        pytest.param(2, 32, False, marks=SLOW),
        (1, None, True),
    ],
)
def test_export_parity_every_bit_width(tiny_classifier, tmp_path, bits, group, symmetric):
    clf, _ = tiny_classifier
    qts = masked_quantized(clf, bits, group, symmetric)
    linears, embedding = prepare(clf, qts)
    feeds = sample()
    res = export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(activations="token"), feeds)
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
    assert res.sizes.weights <= n * storage / 8 + embedding[1].codes.size * max(bits, 4) / 8 + 64 * len(linears)
    # float16 scales, plus bit-packed zero points when asymmetric
    groups = sum(w.scale.size for w in linears.values())
    assert res.sizes.scales <= groups * (2 + (0 if symmetric else bits / 8)) + embedding[1].scale.size * 2 + 64 * len(linears)


def test_ort_folds_unpacking_and_runs_integer_kernels(tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(activations="tensor"), sample())
    open_session(tmp_path / "model.onnx", optimized_path=tmp_path / "opt.onnx")
    opt = onnx.load(str(tmp_path / "opt.onnx")).graph
    ops = Counter(n.op_type for n in opt.node)
    layers = clf.encoder.config.num_hidden_layers
    # Q/K/V of each layer run in one QAttention (int8 packed weight); the other projections are int8 matmuls
    assert ops["QAttention"] == layers and ops["Attention"] == 0
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == len(linears) - 3 * layers
    assert ops["MatMulInteger"] == 0
    # unpacking (a byte lookup) was constant-folded at load: of the packed codes only the word embeddings' rows are left,
    # gathered at run time
    assert [i.name for i in opt.initializer if ".codes_" in i.name] == ["encoder.embeddings.word_embeddings.codes_4bit"]
    inits = {i.name: i for i in opt.initializer}
    for n in opt.node:
        if n.op_type == "QAttention":
            assert inits[n.input[1]].data_type == onnx.TensorProto.INT8 and list(inits[n.input[1]].dims) == [64, 192]
            assert list(inits[n.input[4]].dims) == [192]  # per-column weight scales


def test_per_token_graph_runs_integer_matmuls(tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(activations="token"), sample())
    open_session(tmp_path / "model.onnx", optimized_path=tmp_path / "opt.onnx")
    opt = onnx.load(str(tmp_path / "opt.onnx")).graph
    ops = Counter(n.op_type for n in opt.node)
    layers = clf.encoder.config.num_hidden_layers
    # one integer matmul per projection with the weight scales in its epilogue, Q/K/V on one quantized input; attention
    # itself in float; no per-tensor scale anywhere, no dequantization pass, no Split of a packed Q/K/V
    assert ops["MatMulIntegerToFloat"] == len(linears) and ops["MatMulInteger"] == 0 and ops["DequantizeLinear"] == 0
    assert ops["QuantizeLinear"] == 4 * layers  # per layer: Q/K/V's input, attention output's, FFN's two
    assert ops["MultiHeadAttention"] == layers and ops["QAttention"] == 0 and ops["DynamicQuantizeLinear"] == 0
    assert ops["MatMul"] == 0 and ops["Split"] == 0 and ops["Abs"] == 0
    assert [i.name for i in opt.initializer if ".codes_" in i.name] == ["encoder.embeddings.word_embeddings.codes_4bit"]
    inits = {i.name: i for i in opt.initializer}
    assert all(inits[n.input[1]].data_type == onnx.TensorProto.INT8 for n in opt.node if n.op_type == "MatMulIntegerToFloat")


def _rows(feeds, rows, length=None):
    """feeds restricted to `rows`, cut or padded to `length` tokens."""
    out = {k: v[rows] for k, v in feeds.items()}
    if length is not None:
        n = out["input_ids"].shape[1]
        out = {k: (v[:, :length] if length <= n else np.pad(v, ((0, 0), (0, length - n)))) for k, v in out.items()}
    return out


@pytest.mark.parametrize("activations,independent", [("token", True), ("tensor", False)])
def test_logits_do_not_depend_on_batch_or_padding(tiny_classifier, tmp_path, activations, independent):
    """Per-token activation scales: a sequence's logits are the same alone, in any batch, with any padding
    (to float summation order); per-tensor scales move them with the batch's largest activation."""
    clf, _ = tiny_classifier
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    rng = np.random.default_rng(0)
    batch, length = 6, 20
    lens = np.array([20, 7, 12, 20, 3, 15])
    feeds = {
        "input_ids": rng.integers(1000, 3000, (batch, length)),
        "attention_mask": (np.arange(length) < lens[:, None]).astype(np.int64),
        "token_type_ids": np.zeros((batch, length), np.int64),
    }
    feeds["input_ids"] = feeds["input_ids"] * feeds["attention_mask"]
    export(clf, linears, embedding, tmp_path / "m.onnx", ExportConfig(activations=activations), sample())
    sess = open_session(tmp_path / "m.onnx")
    together = run_logits(sess, feeds)
    worst = 0.0
    for i in range(batch):
        alone = run_logits(sess, _rows(feeds, [i], int(lens[i])))  # no padding at all
        padded = run_logits(sess, _rows(feeds, [i], 64))  # padded far beyond its length
        worst = max(worst, float(np.abs(alone - together[i]).max()), float(np.abs(padded - together[i]).max()))
    if independent:
        assert worst < 1e-6  # measured 0.0
    else:
        assert worst > 1e-5  # the test can tell the difference (measured 6e-5: this tiny model's logits are ~0.1)


@pytest.mark.parametrize(
    "bits,group,symmetric",
    [
        pytest.param(8, None, True, marks=SLOW),
        (4, None, True),
        pytest.param(4, 16, False, marks=SLOW),
        (2, 16, False),
        pytest.param(1, None, True, marks=SLOW),
    ],
)
def test_matmul_nbits_kernel(tiny_classifier, tmp_path, monkeypatch, bits, group, symmetric):
    """MatMulNBits and GatherBlockQuantized read the same packed codes; int8 activations (accuracy_level 4) bound the error;
    nothing unpacks a weight, so ONNX Runtime's .ort converter keeps them at their bit width. The position table (128 x 64
    here; MiniLM's is 512 x 384) goes 8-bit per row."""
    from compress.exporters import kernels

    monkeypatch.setattr(kernels, "TABLE_MIN_SIZE", 128 * 64)
    clf, _ = tiny_classifier
    linears, embedding = prepare(clf, masked_quantized(clf, bits, group, symmetric))
    res = export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(kernel="nbits"), sample())
    assert res.parity_max_abs_diff < 1e-4 and res.deployed_max_abs_diff < 0.05  # as for the int8 kernel
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["MatMulNBits"] == len(linears) and ops["Attention"] == 0 and ops["GatherBlockQuantized"] == 2  # words, positions
    assert not {"BitShift", "MatMulInteger"} & set(ops)
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    assert "encoder.embeddings.position_embeddings.weight" not in floats
    for gbq in (n for n in graph.node if n.op_type == "GatherBlockQuantized"):
        stored = onnx.helper.get_attribute_value(next(a for a in gbq.attribute if a.name == "bits"))
        assert stored == (max(bits, 4) if "word_embeddings" in gbq.input[0] else 8)
        table = next(i for i in graph.initializer if i.name == gbq.input[0])
        assert table.data_type == onnx.TensorProto.UINT8 and table.dims[1] == 64 * stored // 8  # hidden 64, packed
    files = ort_format.to_ort(tmp_path / "model.onnx", tmp_path)
    size = next(p for p in files if p.suffix == ".ort").stat().st_size
    assert size <= 1.1 * (tmp_path / "model.onnx").stat().st_size  # stayed packed (int8-folded: ~2x at 4 bits)
    got = run_logits(open_session(tmp_path / "model.ort"), sample())
    assert np.abs(got - run_logits(open_session(tmp_path / "model.onnx"), sample())).max() < 1e-4


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
    linears[name] = quantize.quantize_tensor(torch.randn(qts[name].shape), 4)
    with pytest.raises(WeightMatchError, match=name):
        export(clf, linears, embedding, tmp_path / "model.onnx", ExportConfig(activations="token"), sample())


def test_smoothing_evens_out_activation_outliers(tiny_classifier, tmp_path):
    """One input channel 30x larger than the rest (as ahead of MiniLM's FFNs): smoothing cuts the int8 error
    (shown with one activation scale per tensor, where the outlier costs most)."""
    from compress import calibration

    clf, _ = tiny_classifier
    with torch.no_grad():
        for layer in clf.encoder.encoder.layer:
            layer.attention.output.LayerNorm.weight[5] *= 30.0
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    feeds = sample(batch=8, length=24)
    calib = calibration.batches({k: v.astype(np.int32) for k, v in feeds.items()})
    err = {}
    for alpha in (None, 0.75):
        res = export(
            clf, linears, embedding, tmp_path / f"{alpha}.onnx", ExportConfig(smooth_alpha=alpha, activations="tensor"), feeds, calib
        )
        assert res.parity_max_abs_diff < 1e-4  # the exact graph is not smoothed
        err[alpha] = res.deployed_max_abs_diff
    assert err[0.75] < 0.6 * err[None], err
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "0.75.onnx")).graph.node)
    assert ops["Reciprocal"] == 4 * 2  # activations times 1 / s ahead of the int8 matmuls (folded weights carry s)

    # 8-bit codes are exact int8 already: they are not re-rounded, so not smoothed
    linears8, embedding8 = prepare(clf, masked_quantized(clf, 8))
    export(clf, linears8, embedding8, tmp_path / "8bit.onnx", ExportConfig(), feeds, calib)
    assert not any(".smooth" in i.name for i in onnx.load(str(tmp_path / "8bit.onnx")).graph.initializer)
    assert any(".smooth" in i.name for i in onnx.load(str(tmp_path / "0.75.onnx")).graph.initializer)


@pytest.mark.parametrize("activations", ["static", "token"])
def test_attention_output_smoothing_folds_into_v(tiny_classifier, tmp_path, monkeypatch, activations):
    """The attention output projection's smoothing factors divide V's rows and bias instead of its input: no Mul runs
    ahead of that projection, and the logits are the unfolded graph's (V's biases made nonzero so that a bias left
    undivided would show)."""
    from compress import calibration

    clf, _ = tiny_classifier
    with torch.no_grad():
        for layer in clf.encoder.encoder.layer:
            layer.attention.self.value.weight[5] *= 30.0
            layer.attention.self.value.bias.normal_(0.0, 0.5)  # a random init's biases are zeros: they would hide a bias left undivided
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    feeds = sample(batch=8, length=24)
    calib = calibration.batches({k: v.astype(np.int32) for k, v in feeds.items()})
    export(clf, linears, embedding, tmp_path / "f.onnx", ExportConfig(activations=activations), feeds, calib)
    monkeypatch.setattr(masking, "attention_of", lambda name: None)  # the exporter no longer knows which V feeds which output
    export(clf, linears, embedding, tmp_path / "p.onnx", ExportConfig(activations=activations), feeds, calib)
    layers = clf.encoder.config.num_hidden_layers

    def smoothing_muls(path):  # activations (what depends on the graph's inputs) times 1 / s
        graph = onnx.load(str(path)).graph
        recips = {o for n in graph.node if n.op_type == "Reciprocal" for o in n.output}
        dynamic = {i.name for i in graph.input}
        for n in graph.node:  # topologically sorted
            if dynamic & set(n.input):
                dynamic |= set(n.output)
        return sum(n.op_type == "Mul" and n.input[1] in recips and n.input[0] in dynamic for n in graph.node)

    assert smoothing_muls(tmp_path / "p.onnx") == 4 * layers and smoothing_muls(tmp_path / "f.onnx") == 3 * layers
    a, b = (run_logits(open_session(tmp_path / f), feeds) for f in ("f.onnx", "p.onnx"))
    assert np.abs(a - b).max() < 1e-4  # measured 0 (static) and 6e-8 (token); with V's bias left undivided 3e-3 and 7e-3


def test_static_activation_scales(tiny_classifier, tmp_path):
    """activations="static": one scale per activation fixed from the calibration ranges; the integer matmuls take both
    scales in their epilogue (Q/K/V in QAttention), nothing is reduced at run time, logits do not depend on batch-mates
    or padding, and they stay close to PyTorch's; without calibration ranges it is refused, naming the fix."""
    from compress import calibration

    clf, _ = tiny_classifier
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    feeds = sample(batch=8, length=24)
    calib = calibration.batches({k: v.astype(np.int32) for k, v in feeds.items()})
    res = export(clf, linears, embedding, tmp_path / "m.onnx", ExportConfig(activations="static"), feeds, calib)
    assert res.deployed_max_abs_diff < 0.1  # this tiny model's logits are ~0.1-1; the calibration text is the parity text here
    open_session(tmp_path / "m.onnx", optimized_path=tmp_path / "opt.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    layers = clf.encoder.config.num_hidden_layers
    assert ops["QAttention"] == layers and ops["MatMulIntegerToFloat"] == len(linears) - 3 * layers
    assert ops["QuantizeLinear"] == 4 * layers  # per layer: Q/K/V's input, the attention output's, the FFN's two
    assert ops["ReduceMax"] == ops["ReduceMin"] == ops["DynamicQuantizeLinear"] == ops["DynamicQuantizeMatMul"] == 0
    sess = open_session(tmp_path / "m.onnx")
    together = run_logits(sess, feeds)
    for i in range(3):
        assert np.abs(run_logits(sess, _rows(feeds, [i], 40)) - together[i]).max() < 1e-6
    with pytest.raises(ValueError, match="calibration"):
        export(clf, linears, embedding, tmp_path / "n.onnx", ExportConfig(activations="static"), feeds)


def test_prefolded_weights_give_the_same_graph_with_nothing_to_fold(tiny_classifier, tmp_path):
    """prefold: the int8 weights (smoothed ones re-rounded at export by the very float32 operations the graph would run at
    load) stored as they are, the word embeddings as GatherBlockQuantized on the packed codes: the same logits bit for bit,
    and no unpacking or re-rounding left for ONNX Runtime to fold at session load; the linears take 8 bits on disk."""
    from compress import calibration
    from compress.configs import ConfigError

    clf, _ = tiny_classifier
    linears, embedding = prepare(clf, masked_quantized(clf, 4))
    feeds = sample(batch=8, length=24)
    calib = calibration.batches({k: v.astype(np.int32) for k, v in feeds.items()})
    export(clf, linears, embedding, tmp_path / "a.onnx", ExportConfig(), feeds, calib)
    res = export(clf, linears, embedding, tmp_path / "p.onnx", ExportConfig(prefold=True), feeds, calib)
    got, ref = (run_logits(open_session(tmp_path / f), sample(batch=3, length=17)) for f in ("p.onnx", "a.onnx"))
    assert np.array_equal(got, ref)
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "p.onnx")).graph.node)
    assert not {"BitShift", "Round", "ReduceMax", "Abs"} & set(ops) and ops["GatherBlockQuantized"] == 1
    # the default graph's fold: codes stored as W^T (no Transpose), unpacked by three whole-tensor shifts into floats (no
    # lookup), re-rounded with the stored per-channel steps (no reduction over a weight): one QuantizeLinear per linear
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "a.onnx")).graph.node)
    assert not {"Transpose", "ReduceMax", "Abs"} & set(ops) and ops["Gather"] < len(linears)
    assert ops["QuantizeLinear"] >= len(linears) and ops["BitShift"] == 3 * len(linears)
    assert sum(w.codes.size for w in linears.values()) <= res.sizes.weights <= 1.1 * sum(w.codes.size for w in linears.values())
    with pytest.raises(ConfigError, match="prefold"):
        ExportConfig(kernel="float", prefold=True)
