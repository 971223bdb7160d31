"""The real MiniLM (the embedded default) through the CLI on a small MRPC subset."""
import json

import onnx
import pytest
from click.testing import CliRunner

from compress.cli import main

pytestmark = pytest.mark.integration


def test_minilm_mrpc_4bit_end_to_end(glue_dir, tmp_path):
    out = tmp_path / "minilm-mrpc-4bit"
    r = CliRunner().invoke(main, ["run", "--model", "minilm", "--task", "mrpc", "--bits", "4", "--data-dir", str(glue_dir),
                                  "--out", str(out), "--epochs", "1", "--max-train-examples", "256",
                                  "--max-eval-examples", "128"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["pooling"] == "mean"  # all-MiniLM-L6-v2 was trained with mean pooling
    assert m["task"]["train_examples"] == 256 and m["task"]["dev_examples"] == 128
    assert m["validation"]["parity_max_abs_diff"] < 1e-4
    assert m["validation"]["agreement"] >= 0.95 and m["validation"]["metric_drop"] <= 0.01
    assert len(m["layers"]) == 6 * 6 + 1 and {l["bits"] for l in m["layers"]} == {4}
    # 4-bit codes + per-channel scales: the whole graph is far below the 91 MB fp32 model
    assert m["sizes"]["onnx_total"] < 16e6 and m["sizes"]["embeddings"] < 6.5e6
    assert m["bench"]["batch1"]["median_ms"] > 0 and m["bench"]["batch32"]["throughput_seq_s"] > 0
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "QAttention", "BitShift", "SkipLayerNormalization"} <= ops
    assert "f1" in (out / "report.md").read_text()


def test_minilm_ffn_keep_removes_half_the_neurons(glue_dir, tmp_path):
    """Structured FFN pruning on the real model: ONNX Runtime's fusions still fire on the smaller FFNs, and the
    exported graph stays exact (float kernel) and within the int8 guard."""
    out = tmp_path / "minilm-ffn"
    r = CliRunner().invoke(main, ["run", "--model", "minilm", "--task", "mrpc", "--bits", "4", "--data-dir", str(glue_dir),
                                  "--out", str(out), "--epochs", "1", "--max-train-examples", "128", "--max-eval-examples", "128",
                                  "--ffn-keep", "0.5", "--no-bench"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["ffn_neurons"] == {f"encoder.encoder.layer.{i}.output.dense": [768, 1536] for i in range(6)}
    assert m["validation"]["parity_max_abs_diff"] < 1e-4 and m["validation"]["metric_drop"] <= 0.01
    assert m["fusions"]["BiasGelu"] == 6 and m["fusions"]["Attention"] == 6
    assert m["sizes"]["onnx_total"] < 11e6  # 12.4 MB without neuron pruning
