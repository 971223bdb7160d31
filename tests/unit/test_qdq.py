"""The qdq kernel (compress.exporters.kernels.QDQKernel): standard ONNX only, 4-bit codes in DequantizeLinear, the mask
exact; and OpenVINO's runtime, which reads it (compress.runtimes.openvino_runtime)."""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from compress import backbone, calibration, masking, quantize
from compress.build import prepare
from compress.exporters.export import ExportConfig, export
from compress.runtimes.session import GraphLoadError, open_session, run_logits

SLOW = pytest.mark.slow  # --full only


def _masked(clf, bits, group_size=None, symmetric=True, nm=None):
    qts = backbone.quantize_(clf, quantize.QuantConfig(bits=bits, group_size=group_size, symmetric=symmetric))
    layers = masking.apply_masks_(clf, masking.MaskConfig(nm=nm))
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():  # about half of the weights pruned
            layer.scores.uniform_(-1, 1)
    return prepare(clf, qts)


def _sample(batch=4, length=12):
    torch.manual_seed(2)
    ids = torch.randint(1000, 3000, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 7:] = 0
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros((batch, length), np.int64)}


def _torch(clf, feeds):
    with torch.no_grad():
        return clf(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()


@pytest.mark.parametrize(
    "bits,group,symmetric,code_type",
    [
        (4, None, True, TensorProto.INT4),
        (4, 16, True, TensorProto.INT4),
        pytest.param(4, None, False, TensorProto.UINT4, marks=SLOW),
        pytest.param(4, 32, False, TensorProto.UINT4, marks=SLOW),
        (8, None, True, TensorProto.INT8),
        pytest.param(2, None, True, TensorProto.INT4, marks=SLOW),
    ],
)
def test_weight_only_graph_is_standard_onnx_and_exact(tiny_classifier, tmp_path, bits, group, symmetric, code_type):
    """Activations "none" (the qdq kernel's default): the logits are PyTorch's to fp32 summation order; every node is in the
    ONNX domain (opset 21); the codes are 4-bit (8-bit) initializers, a pruned weight is the code of zero."""
    clf, _ = tiny_classifier
    linears, embedding = _masked(clf, bits, group, symmetric)
    feeds = _sample()
    res = export(clf, linears, embedding, tmp_path / "m.onnx", ExportConfig(kernel="qdq"), feeds)
    assert res.parity_max_abs_diff < 1e-4 and res.deployed_max_abs_diff < 1e-4
    assert np.abs(run_logits(open_session(tmp_path / "m.onnx"), feeds) - _torch(clf, feeds)).max() < 1e-4
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} == {""} and [(o.domain, o.version) for o in model.opset_import] == [("", 21)]
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["DequantizeLinear"] == len(linears) + 1 and ops["QuantizeLinear"] == 0  # the linears and the word embeddings
    inits = {i.name: i for i in model.graph.initializer}
    for name, w in linears.items():
        codes = inits[f"{name}.weight.codes"]
        assert codes.data_type == code_type and tuple(codes.dims) == w.shape[::-1]  # W^T: MatMul's right input
        stored = numpy_helper.to_array(codes).astype(np.int16).T
        zero = 0 if symmetric else np.repeat(w.zero.astype(np.int16), w.shape[1] // w.groups, axis=1)
        pruned = ~masking.masks(clf)[name].numpy()
        assert pruned.mean() > 0.3 and np.all(stored[pruned] == (zero if symmetric else zero[pruned]))
    assert res.sizes.weights <= sum(w.codes.size for w in linears.values()) * max(bits, 4) / 8 + embedding[1].codes.size * 4 / 8 + 1024


def test_static_activations_quantize_each_input_once_with_zero_point_0(tiny_classifier, tmp_path):
    """Activations "static": QuantizeLinear -> DequantizeLinear (int8, zero point 0: TensorRT's form) once per linear input,
    scales from the calibration text; without calibration it is refused, naming the fix."""
    clf, _ = tiny_classifier
    linears, embedding = _masked(clf, 4)
    feeds = _sample(batch=8, length=24)
    calib = calibration.batches({k: v.astype(np.int32) for k, v in feeds.items()})
    res = export(clf, linears, embedding, tmp_path / "m.onnx", ExportConfig(kernel="qdq", activations="static"), feeds, calib)
    assert res.deployed_max_abs_diff < 0.1  # int8 activations; this tiny model's logits are ~0.1-1
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    layers = clf.encoder.config.num_hidden_layers
    quantizes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantizes) == 4 * layers  # Q/K/V's shared input, the attention output's, the FFN's two
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    assert all(inits[q.input[2]].dtype == np.int8 and inits[q.input[2]] == 0 for q in quantizes)
    with pytest.raises(ValueError, match="calibration"):
        export(clf, linears, embedding, tmp_path / "n.onnx", ExportConfig(kernel="qdq", activations="static"), feeds)


def test_two_four_structure_survives_in_the_integer_codes(tiny_classifier, tmp_path):
    """A 2:4 mask: in every group of 4 inputs at most 2 nonzero codes, in the tensor TensorRT's sparse kernels would read."""
    clf, _ = tiny_classifier
    linears, embedding = _masked(clf, 4, nm=(2, 4))
    export(clf, linears, embedding, tmp_path / "m.onnx", ExportConfig(kernel="qdq"), _sample())
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    for i in graph.initializer:
        if i.name.endswith(".weight.codes") and i.name in {f"{n}.weight.codes" for n in linears}:
            w_t = numpy_helper.to_array(i).astype(np.int8)  # [inputs, outputs]
            assert ((w_t.reshape(-1, 4, w_t.shape[1]) != 0).sum(1) <= 2).all(), i.name


def test_openvino_runs_the_qdq_graph_and_refuses_contrib_operators(tiny_classifier, tmp_path):
    """OpenVINO's own runtime behind ONNX Runtime's session calls: the qdq graph's logits as ONNX Runtime's (OpenVINO may
    compute in bf16 on CPUs that have it); the int8 graph's com.microsoft operators refused, naming the re-export."""
    clf, _ = tiny_classifier
    linears, embedding = _masked(clf, 4)
    feeds = _sample()
    export(clf, linears, embedding, tmp_path / "q.onnx", ExportConfig(kernel="qdq"), feeds)
    ov = open_session(tmp_path / "q.onnx", "openvino", threads=2)
    assert [i.name for i in ov.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    ref = run_logits(open_session(tmp_path / "q.onnx"), feeds)
    assert np.abs(run_logits(ov, feeds) - ref).max() <= 0.02 * np.abs(ref).max() + 1e-3
    calib = calibration.batches({k: v.astype(np.int32) for k, v in feeds.items()})
    export(clf, linears, embedding, tmp_path / "i.onnx", ExportConfig(), feeds, calib)  # the default graph: QAttention, ...
    with pytest.raises(GraphLoadError, match="--kernel qdq"):
        open_session(tmp_path / "i.onnx", "openvino")


def test_run_with_the_qdq_kernel_and_bench_it_on_several_providers(tiny_model_dir, mini_glue, tmp_path):
    """`compress run --kernel qdq` ships the standard-ONNX graph (validated by the same guard); `compress bench` runs it on
    ONNX Runtime's CPU and on OpenVINO, judges OpenVINO against the CPU graph by the guard's rule, lists the provider it
    could not use with the reason, and `compress check` gates each provider's metric."""
    import json

    from clirunner import invoke

    from compress import manifest as mf

    out = tmp_path / "a"
    r = invoke("run", "--model", tiny_model_dir, "--task", "mrpc", "--data-dir", mini_glue, "--epochs", "1", "--batch-size", "8",
               "--no-bench", "--kernel", "qdq", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    m = mf.read(out, mf.ArtifactManifest)
    assert (m.config.export.kernel, m.config.export.activations, m.passed) == ("qdq", "none", True)
    assert {n.domain for n in onnx.load(str(out / "onnx" / "model.onnx")).graph.node} == {""}
    b = invoke("bench", out, "--provider", "cpu", "--provider", "openvino", "--provider", "cuda", "--batch", "1", "--seq-len", "16",
               "--data-dir", mini_glue, "--json", tmp_path / "b.json")  # fmt: skip
    assert b.exit_code == 0, b.output
    assert "on openvino" in b.output and "vs ONNX Runtime cpu: dev metric drop" in b.output and "cuda skipped: provider cuda" in b.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert [x["provider"] for x in data["runs"]] == ["cpu", "openvino"] and "CUDAExecutionProvider" in data["skipped"]["cuda"]
    assert data["runs"][1]["vs_cpu"]["dev_examples"] == 12 and data["runs"][1]["vs_cpu"]["passed"] is True
    base = tmp_path / "base.json"
    base.write_text(
        json.dumps({"metrics": {f"{p}.onnx.accuracy": x["metrics"]["onnx"]["accuracy"] for p, x in zip(["cpu", "openvino"], data["runs"])}})
    )
    c = invoke("check", tmp_path / "b.json", "--baseline", base)
    assert c.exit_code == 0 and "openvino.onnx.accuracy" in c.output, c.output


def test_tensorrt_gets_the_qdq_graph_as_explicit_int8(tiny_model_dir, mini_glue, tmp_path, monkeypatch):
    """No GPU here: the provider list ONNX Runtime would get is recorded. A qdq artifact's session asks TensorRT for int8 (the
    graph's own Q/DQ scales: ONNX Runtime's TensorRT provider refuses Q/DQ layers without it), the int8 graph's does not
    (its contrib operators fall back to CUDA and the CPU; int8 without Q/DQ would ask for a calibration table)."""
    import onnxruntime
    from clirunner import invoke

    from compress.runtimes import providers, session

    seen = []

    class Recorder(onnxruntime.InferenceSession):
        def __init__(self, src, so, providers):
            seen.append(providers[0])
            super().__init__(src, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(providers, "get", lambda name: providers.Provider(name, True))
    monkeypatch.setattr(session.ort, "InferenceSession", Recorder)
    for kernel in ("qdq", "int8"):
        out = tmp_path / kernel
        r = invoke("run", "--model", tiny_model_dir, "--task", "mrpc", "--data-dir", mini_glue, "--epochs", "1", "--batch-size", "8",
                   "--no-bench", "--kernel", kernel, "--out", out)  # fmt: skip
        assert r.exit_code == 0, r.output
        seen.clear()
        b = invoke("bench", out, "--provider", "tensorrt", "--batch", "1", "--seq-len", "16")
        assert b.exit_code == 0, b.output
        assert seen[0] == (
            "TensorrtExecutionProvider",
            {"trt_fp16_enable": True, "trt_sparsity_enable": False, "trt_int8_enable": kernel == "qdq"},
        )
