"""ONNX Runtime's OpenVINO execution provider, verified on every CI run: onnxruntime-openvino installed from PyPI in an
environment of its own (it replaces the onnxruntime module), with this package beside it. The qdq graph runs there whole,
every node on OpenVINO (CPU fallback refused); today's int8 graph cannot (its contrib operators stay on ONNX Runtime's CPU
provider); `compress bench --provider openvino-ep --data-dir` reports its metric and latency and judges it against the
CPU provider by the accuracy guard's rule."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from clirunner import invoke
from environments import run_in

pytestmark = pytest.mark.integration

PLACED = r"""
import json, sys
import onnxruntime as ort
from compress.runtimes.bench import inputs
from compress.runtimes.session import open_session, run_logits
out = {"providers": ort.get_available_providers()}
for graph in sys.argv[1:]:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # every node on OpenVINO, or no session
    try:
        ort.InferenceSession(graph, so, providers=["OpenVINOExecutionProvider"])
        whole = True
    except Exception:
        whole = False
    sess = open_session(graph, "openvino-ep")
    out[graph] = {"whole": whole, "session": sess.get_providers(), "logits": run_logits(sess, inputs(2, 16)).tolist()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def graphs(default_artifact, tmp_path_factory):
    """The default artifact (int8 kernel) and its qdq re-export (standard ONNX, weight-only)."""
    qdq = tmp_path_factory.mktemp("ovep") / "qdq"
    shutil.copytree(default_artifact, qdq)
    r = invoke("export", qdq, "--kernel", "qdq")
    assert r.exit_code == 0, r.output
    return {"int8": default_artifact, "qdq": qdq}


def test_the_qdq_graph_runs_whole_on_onnx_runtimes_openvino_provider(graphs, openvino_ep_python):
    from compress.runtimes.bench import inputs
    from compress.runtimes.session import open_session, run_logits

    paths = {k: str(d / "onnx" / "model.onnx") for k, d in graphs.items()}
    got = json.loads(run_in(openvino_ep_python, PLACED, *paths.values()).strip().splitlines()[-1])
    assert "OpenVINOExecutionProvider" in got["providers"]
    assert got[paths["qdq"]]["whole"] and not got[paths["int8"]]["whole"]  # contrib operators: not OpenVINO's
    for form, path in paths.items():
        assert got[path]["session"][0] == "OpenVINOExecutionProvider"
        ref = run_logits(open_session(path, fold_first=True), inputs(2, 16))  # ONNX Runtime's CPU provider, this environment
        # fp32 on both for qdq (weight-only); the int8 graph's activations quantized by OpenVINO's kernels, not ORT's
        assert np.abs(np.array(got[path]["logits"]) - ref).max() <= (1e-3 if form == "qdq" else 0.05) * max(1.0, np.abs(ref).max())


def test_bench_reports_and_judges_the_openvino_provider(graphs, openvino_ep_python, tmp_path):
    glue = graphs["int8"].parent / "glue"
    out = tmp_path / "bench.json"
    cmd = [str(openvino_ep_python.parent / "compress"), "bench", str(graphs["qdq"]), "--provider", "cpu", "--provider", "openvino-ep"]
    r = subprocess.run([*cmd, "--data-dir", str(glue), "--batch", "1", "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    runs = {run["provider"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"cpu", "openvino-ep"} and runs["openvino-ep"]["latency"][0]["median_ms"] > 0
    assert runs["openvino-ep"]["metrics"] == runs["cpu"]["metrics"]  # the same dev predictions
    assert "vs ONNX Runtime cpu: dev metric drop" in r.stdout and "within max_metric_drop" in r.stdout
