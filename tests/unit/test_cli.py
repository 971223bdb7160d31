"""The CLI through click's CliRunner: bad input gives one clear line and a non-zero exit; a tiny run works."""

import json
import re

import pytest
from clirunner import error_line, invoke

from compress import guard
from compress import manifest as mf
from compress.configs import QuantConfig


def read(d) -> mf.ArtifactManifest:
    return mf.read(d, mf.ArtifactManifest)


@pytest.fixture()
def run_args(tiny_model_dir, mini_glue, tmp_path):
    return [
        "run",
        "--model",
        str(tiny_model_dir),
        "--task",
        "mrpc",
        "--data-dir",
        str(mini_glue),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-bench",
        "--out",
        str(tmp_path / "out"),
    ]


def test_tiny_run_writes_a_complete_artifact(run_args, mini_glue, tmp_path):
    r = invoke(*run_args, "--bits", "4")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {
        "onnx",
        "config.json",
        "mask.npz",
        "calibration.npz",
        "trainable.safetensors",
        "tokenizer.json",
        "manifest.json",
        "report.md",
    } <= names
    m = read(out)
    assert m.config.quant.bits == 4 and m.task.name == "mrpc" and m.model.pooling == "pooler"
    assert m.validation.parity_max_abs_diff < 1e-4 and set(m.files) >= {"onnx/model.onnx", "mask.npz", "config.json"}
    assert len(m.layers) == 2 * 6 + 1 and all(0.9 < layer.density <= 1 for layer in m.layers)
    assert "dev f1 (ONNX Runtime)" in r.output and m.command.startswith("compress run")
    assert list(m.stages) == ["data", "quantize + mask", "train (structure)", "export", "validate"]
    assert all(s.seconds >= 0 and s.peak_rss_gb > 0.1 for s in m.stages.values())
    assert "Where the run's time and memory went" in (out / "report.md").read_text()
    # a stage rerun on its own reads only the directory
    b = invoke("bench", str(out), "--batch", "1")
    assert b.exit_code == 0 and "batch 1 x 128" in b.output
    no_ort = invoke("bench", str(out), "--graph", "ort")
    assert no_ort.exit_code == 1 and f"compress export {out} --format ort" in error_line(no_ort)
    # an app needs only onnxruntime + tokenizers: the example app runs on the artifact as shipped
    import subprocess
    import sys
    from pathlib import Path

    app = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "examples" / "classify.py"), str(out), "a b", "c d"],
        capture_output=True,
        text=True,
    )
    assert app.returncode == 0 and app.stdout.startswith("mrpc: label ") and "equivalent" in app.stdout, app.stderr
    import shutil

    altered = shutil.copytree(out, tmp_path / "altered")
    with open(altered / "onnx" / "model.onnx", "ab") as f:
        f.write(b"\0")
    app = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "examples" / "classify.py"), str(altered), "a b", "c d"],
        capture_output=True,
        text=True,
    )
    assert app.returncode != 0 and "SHA-256 differs" in app.stderr
    # re-export without retraining: the same graph from mask.npz + trainable.safetensors
    e = invoke("export", str(out))
    assert e.exit_code == 0, e.output
    m2 = read(out)
    assert m2.metrics.onnx == m.metrics.onnx and m2.passed is True  # the same graph keeps its figures
    assert m2.files["onnx/model.onnx"].sha256 == m.files["onnx/model.onnx"].sha256
    assert m2.validation.parity_max_abs_diff < 1e-4 and m2.exported_by == f"compress export {out}"
    o = invoke("export", str(out), "--format", "ort")
    assert o.exit_code == 0, o.output
    m3 = read(out)
    assert {"onnx/model.ort", "onnx/model.required_operators.config"} <= set(m3.files)
    assert m3.validation.ort_max_abs_diff < 0.05  # the low-bit mobile kernels vs the int8 graph (int8 activations in both)
    # the 4-bit codes stay packed in the .ort (int8-folded, the 4-bit embedding table alone would double: 1.0 -> 2.0 MB)
    assert m3.sizes.ort_total <= 1.1 * m3.sizes.onnx_total
    assert m3.files["onnx/model.onnx"].sha256 == m.files["onnx/model.onnx"].sha256  # model.onnx kept, the .ort made beside it
    from compress.exporters import ort_format

    ops = ort_format.required_operators(out / "onnx" / "model.required_operators.config")
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops["com.microsoft"] and "MatMulInteger" not in ops.get("ai.onnx", set())
    b = invoke("bench", str(out), "--graph", "ort", "--batch", "1", "--data-dir", str(mini_glue))
    assert b.exit_code == 0 and "onnx/model.ort" in b.output, b.output
    dev = float(b.output.split("dev accuracy: ")[1].split()[0])
    assert abs(dev - m.metrics.onnx["accuracy"]) <= 0.01  # the usual drift bound (ExportConfig.max_metric_drop)
    t = invoke("export", str(out), "--activations", "tensor")  # ORT's fused per-tensor kernels, recorded in the manifest
    assert t.exit_code == 0, t.output
    assert read(out).config.export.activations == "tensor"
    import onnx

    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(out / "onnx" / "model.onnx")).graph.node}
    f = invoke("export", str(out), "--kernel", "float")
    assert f.exit_code == 0 and "kernel float" in f.output and "not measured" in f.output
    # another graph: the old graph's dev metric, agreement and latency are gone, not shown as if they were its own
    mf_ = read(out)
    assert mf_.metrics.onnx == {} and mf_.bench == {} and mf_.validation.agreement is None
    assert mf_.passed is None and "not measured" in (out / "report.md").read_text()
    (tmp_path / "baseline.json").write_text(json.dumps({"metrics": {f"onnx.{k}": v for k, v in m.metrics.onnx.items()}}))
    stale = invoke("check", str(out), "--baseline", str(tmp_path / "baseline.json"))
    assert stale.exit_code == 1 and "missing" in stale.output  # compress check finds no ONNX metric to pass on
    assert not (out / "onnx" / "model.ort").exists()  # a rebuilt graph drops the .ort made from the old one
    m = read(out)
    # refuses to overwrite, and leaves the artifact as it was
    again = invoke(*run_args)
    assert again.exit_code != 0 and "--overwrite" in error_line(again)
    assert read(out) == m


@pytest.mark.parametrize("bits", [pytest.param("32", marks=pytest.mark.slow), "4"])
def test_weights_mode(run_args, tmp_path, bits):
    out = tmp_path / "out"
    r = invoke(*run_args, "--mode", "weights", "--bits", bits)
    assert r.exit_code == 0, r.output
    m = read(out)
    assert m.density == 1.0 and "mask.npz" not in m.files
    assert (m.sizes.weights == 0) == (bits == "32")
    e = invoke("export", str(out))  # post-training quantization is redone identically from the saved weights
    assert e.exit_code == 0, e.output
    assert read(out).files["onnx/model.onnx"].sha256 == m.files["onnx/model.onnx"].sha256


def test_two_bits_default_to_gptq_asymmetric_groups(run_args, tmp_path):
    out = tmp_path / "out"
    r = invoke(*run_args, "--bits", "2")
    assert r.exit_code == 0, r.output
    m = read(out)
    assert m.config.quant == QuantConfig(bits=2, group_size=16, symmetric=False, method="gptq", calibration="task")
    assert "calibration.npz" in m.files and m.validation.parity_max_abs_diff < 1e-4
    assert m.sizes.masks == (out / "mask.npz").stat().st_size and m.sizes.head > 0
    # GPTQ is redone from the calibration tokens saved in the artifact: the same graph, without the data
    e = invoke("export", str(out))
    assert e.exit_code == 0, e.output
    assert read(out).files["onnx/model.onnx"].sha256 == m.files["onnx/model.onnx"].sha256
    n = invoke("export", str(out), "--kernel", "nbits")
    assert n.exit_code == 0 and "kernel nbits" in n.output
    (out / "calibration.npz").unlink()
    bad = invoke("export", str(out))
    assert bad.exit_code != 0 and "calibration.npz" in error_line(bad)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--bits", "8", "--asymmetric"], "asymmetric quantization is for bits"),
        (["--task", "foo"], "unknown task 'foo'"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "./missing/dir"], "does not exist"),
        (["--bits", "3"], "'3' is not one of"),
        (["--group-size", "48"], "power of two"),
        (["--data-dir", "/nonexistent/glue"], "does not exist"),
        (["--device", "gpu"], "is not one of auto, cpu, cuda, cuda:N"),
        (["--epochs", "0"], "epochs=0"),
        (["--batch-size", "-4"], "batch_size=-4"),
        (["--max-length", "4"], "max_length >= 8"),
        (["--mask-lr", "-1"], "learning rates must be > 0"),
        (["--max-train-examples", "0"], "max_train_examples=0: use at least 1"),
        (["--max-metric-drop", "-0.1"], "the drop must be >= 0"),
        (["--max-logit-diff", "0"], "tolerances > 0"),
        (["--score-init", "0.5", "0.1"], "init range (0.5, 0.1) is empty"),
        (["--threshold", "nan"], "threshold nan must be finite"),
        (["--ffn-keep", "0"], "ffn_keep=0"),
        (["--layers", "3"], "--layers 3: the model has 2 transformer layers; keep 2 or fewer"),
        (["--layers", "0"], "keep at least 1 transformer layer"),
        (["--threads", "0"], "0 is not in the range x>=1"),
        (["--checkpoint-every", "-1"], "-1 is not in the range x>=0"),
        (["--resume"], "no checkpoint at"),
    ],
)
def test_bad_input_one_line(run_args, tmp_path, extra, message):
    r = invoke(*run_args, *extra)
    assert r.exit_code != 0
    assert message in error_line(r)
    assert not (tmp_path / "out").exists()


def test_checkpoint_is_removed_when_the_artifact_is_published(run_args, tmp_path):
    from compress import checkpoint

    r = invoke(*run_args, "--checkpoint-every", "1")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "manifest.json").is_file() and not checkpoint.work_dir(tmp_path / "out").exists()


def test_a_checkpoint_from_other_settings_is_refused_by_name(run_args, tmp_path, monkeypatch):
    from compress import checkpoint, train

    real = train._fit

    def stop_after_first_save(loop):
        loop.checkpoint.stop_requested = True  # as Ctrl-C would: a checkpoint at the first step, then Interrupted
        return real(loop)

    monkeypatch.setattr(train, "_fit", stop_after_first_save)
    r = invoke(*run_args)
    assert r.exit_code == 130 and "Stopped: interrupted at step 1" in r.output and "rerun the same command" in r.output
    assert not (tmp_path / "out").exists() and (checkpoint.work_dir(tmp_path / "out") / checkpoint.FILE).is_file()
    monkeypatch.setattr(train, "_fit", real)
    other = invoke(*run_args, "--mask-lr", "0.01")
    assert other.exit_code == 1 and "train.mask_lr: checkpoint 0.002, this run 0.01" in error_line(other)
    assert "--restart" in error_line(other)
    again = invoke(*run_args, "--resume")  # the same settings continue it
    assert again.exit_code == 0, again.output
    assert not checkpoint.work_dir(tmp_path / "out").exists()


def test_not_enough_memory_stops_before_training(run_args, tmp_path, monkeypatch):
    from compress import resources

    monkeypatch.setattr(resources, "available", lambda device: 10**6)
    r = invoke(*run_args)
    assert r.exit_code == 1 and "but this machine has 0.0 GB free: lower" in error_line(r)
    assert not (tmp_path / "out").exists()


def test_a_bug_keeps_its_traceback(run_args, monkeypatch):
    """A ValueError that is not a user mistake (a bug) is not turned into a one-line message."""
    from compress import run

    def bug(*a, **kw):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(run, "run", bug)
    with pytest.raises(ValueError, match="internal invariant"):
        invoke(*run_args)


def test_malformed_row_and_missing_task_files(run_args, mini_glue, tmp_path):
    (mini_glue / "MRPC" / "train.tsv").write_text("header\n1\tbroken row\n")
    r = invoke(*run_args)
    assert r.exit_code != 0 and "train.tsv:2: expected at least 5" in error_line(r)
    r = invoke(*run_args, "--task", "sst2")
    assert r.exit_code != 0 and "no SST-2/train.tsv" in error_line(r)
    assert not (tmp_path / "out").exists()


def test_hub_name_offline_says_what_to_pass(run_args, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke(*run_args, "--model", "bert-base")
    assert r.exit_code != 0
    line = error_line(r)
    assert "google-bert/bert-base-uncased" in line and "--model minilm" in line


def test_hub_name_without_network_fails_in_seconds(run_args, monkeypatch):
    """No network (the host cannot be reached) and nothing cached: a clear line at once, not a minute of retries."""
    import socket
    import time

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HOME", str(run_args[-1]) + "-empty-cache")  # nothing cached
    t0 = time.perf_counter()
    r = invoke(*run_args, "--model", "google-bert/bert-base-uncased")
    assert time.perf_counter() - t0 < 10
    assert r.exit_code != 0 and "cannot download 'google-bert/bert-base-uncased'" in error_line(r)
    from compress.models import hub_reachable

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_reachable()  # behind a proxy a refused direct connection proves nothing: the hub client decides


def test_two_four_sparsity(run_args, tmp_path, monkeypatch):
    r = invoke(*run_args, "--sparsity", "2:4", "--kernel", "float")
    assert r.exit_code == 0, r.output
    m = read(tmp_path / "out")
    assert m.config.mask.nm == (2, 4)
    assert all(layer.density == 0.5 for layer in m.layers[:-1]) and m.density == 0.5
    e = invoke("export", str(tmp_path / "out"))  # the manifest's nm round-trips into MaskConfig
    assert e.exit_code == 0, e.output
    # on TensorRT, a 2:4 artifact's session enables the sparse tensor cores (no GPU here: the provider and session are recorded)
    import onnxruntime

    from compress.runtimes import providers, session

    seen = []

    class Recorder(onnxruntime.InferenceSession):
        def __init__(self, src, so, providers):
            seen.append(providers)
            super().__init__(src, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(providers, "get", lambda name: providers.Provider(name, True))
    monkeypatch.setattr(session.ort, "InferenceSession", Recorder)
    b = invoke("bench", str(tmp_path / "out"), "--provider", "tensorrt", "--batch", "1")
    assert b.exit_code == 0, b.output
    assert seen[0][0] == ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_sparsity_enable": True, "trt_int8_enable": False})


@pytest.mark.parametrize(
    "flag, unit, key, kept, report",
    [
        (
            "--ffn-keep",
            "ffn",
            "ffn_neurons",
            {f"encoder.encoder.layer.{i}.output.dense": [64, 128] for i in range(2)},
            r"FFN neurons kept +128 of 256",
        ),
        (
            "--heads-keep",
            "heads",
            "attention_heads",
            {f"encoder.encoder.layer.{i}.attention.output.dense": [2, 4] for i in range(2)},
            r"attention heads kept +4 of 8",
        ),
    ],
)
def test_structured_pruning_removes_units_from_the_graph(run_args, tmp_path, flag, unit, key, kept, report):
    r = invoke(*run_args, flag, "0.5", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert re.search(report + r" \(the rest removed from the graph\)", r.output)
    out = tmp_path / "out"
    m = read(out)
    assert getattr(m, key) == kept
    assert getattr(m.training.history[-1], f"{unit}_keep") == 0.5 and getattr(m.config.mask, f"{unit}_keep") == 0.5
    before = (out / "onnx" / "model.onnx").read_bytes()
    e = invoke("export", str(out))  # restored from mask.npz alone: the same units leave the same graph
    assert e.exit_code == 0, e.output
    assert getattr(read(out), key) == getattr(m, key)
    assert (out / "onnx" / "model.onnx").read_bytes() == before
    assert f"{unit}_keep=1.5" in error_line(invoke(*run_args, flag, "1.5"))


def test_bench_needs_an_artifact(tmp_path):
    r = invoke("bench", str(tmp_path))
    assert r.exit_code != 0 and "no manifest.json" in error_line(r)


@pytest.mark.slow  # --full only
@pytest.mark.parametrize("task,metric", [("stsb", "pearson"), ("cola", "mcc"), ("sst2", "accuracy"), ("wnli", "accuracy")])
def test_other_glue_tasks(tiny_model_dir, glue_dir, tmp_path, task, metric):
    out = tmp_path / task
    r = invoke(
        "run",
        "--model",
        str(tiny_model_dir),
        "--task",
        task,
        "--data-dir",
        str(glue_dir),
        "--epochs",
        "1",
        "--max-train-examples",
        "32",
        "--max-eval-examples",
        "32",
        "--no-bench",
        "--out",
        str(out),
        "--kernel",
        "float",
    )  # exact kernel: an untrained tiny model's metric is noise that int8 rounding can flip
    assert r.exit_code == 0, r.output
    m = read(out)
    # fp32 summation order moves the logits by ~1e-6; an untrained regressor's outputs barely vary, so its
    # Pearson r moves by up to ~1e-4
    assert abs(m.validation.metric_drop) < 1e-3
    assert m.task.metric == metric and metric in m.metrics.onnx
    assert m.model.num_labels == (1 if task == "stsb" else 2)


def test_bench_json_and_check_against_a_baseline(run_args, mini_glue, tmp_path):
    out = tmp_path / "out"
    assert invoke(*run_args).exit_code == 0
    b = invoke("bench", str(out), "--batch", "1", "--data-dir", str(mini_glue), "--json", str(tmp_path / "bench.json"))
    assert b.exit_code == 0, b.output
    bench = json.loads((tmp_path / "bench.json").read_text())
    m = read(out)
    assert bench["kind"] == "bench" and bench["latency"][0]["batch"] == 1
    assert bench["metrics"]["onnx"]["f1"] == pytest.approx(m.metrics.onnx["f1"])  # the same graph on the same dev set
    f1 = m.metrics.onnx["f1"]
    base = tmp_path / "baseline.json"
    for report in (out, tmp_path / "bench.json"):
        base.write_text(json.dumps({"metrics": {"onnx.f1": f1 + 0.005}}))
        ok = invoke("check", str(report), "--baseline", str(base))  # within the default 0.01
        assert ok.exit_code == 0 and "onnx.f1" in ok.output and "-0.0050" in ok.output, ok.output
        base.write_text(json.dumps({"metrics": {"onnx.f1": f1 + 0.02}}))
        bad = invoke("check", str(report), "--baseline", str(base))
        assert bad.exit_code == 1 and "REGRESSED" in bad.output
        assert invoke("check", str(report), "--baseline", str(base), "--max-drop", "0.03").exit_code == 0
    base.write_text(json.dumps({"metrics": {"onnx.mcc": 0.5}}))
    missing = invoke("check", str(out), "--baseline", str(base))
    assert missing.exit_code == 1 and "MISSING" in missing.output
    base.write_text("{not json")
    broken = invoke("check", str(out), "--baseline", str(base))
    assert broken.exit_code == 1 and "not valid JSON" in error_line(broken)


def test_sweep_command_and_check_on_its_json(tiny_model_dir, mini_glue, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(mini_glue),
        "--bits",
        "32,4",
        "--modes",
        "structure",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
    ]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "| fine-tune structure" in r.output and (out / "table.md").read_text() in r.output
    data = json.loads((out / "sweep.json").read_text())
    (tmp_path / "base.json").write_text(json.dumps({"metrics": {"structure.4bit.f1": data["summary"][1]["metrics"]["f1"]["mean"]}}))
    c = invoke("check", str(out / "sweep.json"), "--baseline", str(tmp_path / "base.json"))
    assert c.exit_code == 0 and "structure.4bit.f1" in c.output, c.output
    bad = invoke(*args[:-2], "--bits", "32,x", "--out", str(tmp_path / "x"))
    assert bad.exit_code != 0 and "comma-separated list of integers" in bad.output


def test_accuracy_drift_fails_but_keeps_the_trained_artifact(run_args, tmp_path, monkeypatch):
    from compress.runtimes import evaluate

    out = tmp_path / "out"
    real = evaluate.texts_logits
    monkeypatch.setattr(evaluate, "texts_logits", lambda *a, **kw: real(*a, **kw) + 10)  # ONNX Runtime's dev logits off by 10
    r = invoke(*run_args)
    assert (
        r.exit_code == 1 and "differ from PyTorch's by up to 10 > max_logit_diff 2" in error_line(r) and "--kernel float" in error_line(r)
    )
    m = read(out)
    assert m.passed is False and "max_logit_diff" in m.validation.failure
    monkeypatch.setattr(evaluate, "texts_logits", real)
    monkeypatch.setattr(guard, "drop", lambda *a, **kw: guard.Drop(0.2, 0.15, 12, 0.95))  # the rule: tests/unit/test_guard.py
    r = invoke(*run_args[:-2], "--out", tmp_path / "drop")
    assert r.exit_code == 1 and "by 0.2000 (95% lower bound 0.1500 over 12 dev examples) > max_metric_drop 0.01" in error_line(r)
    v = read(tmp_path / "drop").validation
    assert (v.passed, v.metric_drop, v.metric_drop_low, v.dev_examples) == (False, 0.2, 0.15, 12)
    monkeypatch.undo()
    strict = tmp_path / "strict"
    r = invoke(*run_args[:-2], "--out", strict, "--max-logit-diff", "1e-9")  # int8 rounding alone exceeds this bound
    assert r.exit_code == 1 and "max_logit_diff 1e-09" in error_line(r)
    before = (strict / "manifest.json").read_bytes()
    again = invoke("export", strict)  # a re-export bounds the new graph on the parity sample and leaves the artifact as it was
    assert "max_logit_diff 1e-09 on the parity sample" in error_line(again) and (strict / "manifest.json").read_bytes() == before
    e = invoke("export", str(out), "--kernel", "float")  # no retraining needed
    assert e.exit_code == 0, e.output
    assert read(out).passed is None


@pytest.mark.slow  # --full only
def test_init_from_quantizes_a_fine_tuned_artifact_without_training(run_args, tmp_path):
    dense = tmp_path / "out"
    assert invoke(*run_args, "--mode", "weights", "--bits", "32").exit_code == 0
    ptq = tmp_path / "ptq"
    r = invoke(*run_args[:-2], "--out", str(ptq), "--mode", "weights", "--bits", "4", "--init-from", str(dense))
    assert r.exit_code == 0, r.output
    m = read(ptq)
    assert m.training.seconds == 0 and m.training.init_from == str(dense) and m.sizes.weights > 0
    bad = invoke(*run_args[:-2], "--out", str(tmp_path / "x"), "--init-from", str(dense))  # structure mode
    assert bad.exit_code != 0 and "--mode weights" in error_line(bad)


def test_same_command_and_seed_give_the_same_mask_hash(run_args, tmp_path):
    """Determinism on CPU: the same run twice learns the same mask, bit for bit (the manifest's mask_sha256)."""
    from compress import maskcodec

    hashes = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = invoke(*run_args[:-1], str(out), "--bits", "4", "--epochs", "2", "--mask-lr", "0.5", "--seed", "3")
        assert r.exit_code == 0, r.output
        m = read(out)
        assert m.mask_sha256 == maskcodec.mask_sha256(maskcodec.load_masks(out / "mask.npz"))  # the hash is of the file's mask
        assert m.density < 1.0  # something was learned, so the hash says something
        hashes.append(m.mask_sha256)
    assert hashes[0] == hashes[1]
    other = maskcodec.load_masks(tmp_path / "a" / "mask.npz")
    name = sorted(other)[0]
    other[name] = other[name].copy()
    other[name].flat[0] = not other[name].flat[0]
    assert maskcodec.mask_sha256(other) != hashes[0]  # one weight's bit changes it


@pytest.mark.slow  # --full only
def test_hostile_files_and_a_full_disk(run_args, tiny_model_dir, tmp_path, monkeypatch):
    """Each case of the README's troubleshooting table ends in one Error line, exit 1, and nothing half written."""
    import errno
    import shutil

    from transformers import AutoTokenizer, BertConfig, BertModel

    from compress.models import embedded_dir

    assert invoke(*run_args).exit_code == 0
    out = tmp_path / "out"
    # a graph file that is not ONNX: altered (SHA-256 refused), and altered with its manifest rewritten (ONNX Runtime refuses it)
    bad = shutil.copytree(out, tmp_path / "not-onnx")
    (bad / "onnx" / "model.onnx").write_bytes(b"PK\x03\x04 this is a zip file, not ONNX")
    assert "does not match its SHA-256" in error_line(invoke("bench", bad, "--batch", "1"))
    mf.write(bad, mf.read(bad, verify=False))
    assert "is not a graph ONNX Runtime can load" in error_line(invoke("bench", bad, "--batch", "1"))
    # a model directory without its weights; a tokenizer that belongs to another model
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    args = [a if a != str(tiny_model_dir) else str(no_weights) for a in run_args]
    assert "has a config.json but no weights" in error_line(invoke(*args, "--out", tmp_path / "o1"))
    small = tmp_path / "small-vocab"
    BertModel(
        BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128)
    ).save_pretrained(small)
    AutoTokenizer.from_pretrained(embedded_dir()).save_pretrained(small)
    args = [a if a != str(tiny_model_dir) else str(small) for a in run_args]
    assert "30522 tokens but the model's embedding table has 1000" in error_line(invoke(*args, "--out", tmp_path / "o2"))
    assert "exceeds the 128 positions" in error_line(invoke(*run_args, "--max-length", "256", "--out", tmp_path / "o3"))
    # the disk fills up while the graph is written: nothing published, no staging directory left, the old artifact intact
    import onnx

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    r = invoke(*run_args, "--out", tmp_path / "o4")
    assert "no space left on the device" in error_line(r) and not (tmp_path / "o4").exists()
    before = (out / "manifest.json").read_bytes()
    assert "no space left on the device" in error_line(invoke("export", out, "--kernel", "float"))
    assert (out / "manifest.json").read_bytes() == before and mf.read(out, mf.ArtifactManifest)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_prefold_and_back(run_args, tmp_path):
    """`compress export DIR --prefold` stores the int8 weights as ONNX Runtime runs them (8 bits on disk); another kernel drops it; a
    kernel without int8 weights refuses it, naming the fix."""
    out = tmp_path / "out"
    assert invoke(*run_args).exit_code == 0
    packed = (out / "onnx" / "model.onnx").stat().st_size
    r = invoke("export", out, "--prefold")
    assert r.exit_code == 0, r.output
    assert read(out).config.export.prefold is True and (out / "onnx" / "model.onnx").stat().st_size > packed
    assert invoke("export", out, "--kernel", "float").exit_code == 0 and read(out).config.export.prefold is False
    bad = invoke("export", out, "--kernel", "qdq", "--prefold")
    assert bad.exit_code != 0 and "drop --prefold" in error_line(bad)
