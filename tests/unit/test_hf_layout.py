"""The Hugging Face layout of an artifact: config.json, tokenizer limits, onnx/model.onnx (Optimum and pipeline() load it as-is:
tests/integration/test_apps.py, in an app's own environment)."""

import json

import numpy as np
import pytest
from clirunner import invoke
from transformers import AutoConfig, BertConfig

from compress import hf_layout, tasks
from compress import manifest as mf


@pytest.fixture(scope="module")
def tiny_artifact(tiny_model_dir, tmp_path_factory):
    glue = tmp_path_factory.mktemp("glue") / "MRPC"
    glue.mkdir()
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = [
        f"{i % 2}\t{i}\t{i + 100}\tThe witness number {i} said it rained .\tWitness {i * 7} spoke about rain on day {i} ."
        for i in range(40)
    ]
    (glue / "train.tsv").write_text(header + "\n".join(rows[:24]) + "\n")
    (glue / "dev.tsv").write_text(header + "\n".join(rows[24:]) + "\n")
    out = tmp_path_factory.mktemp("art") / "mrpc"
    r = invoke(
        "run",
        "--model",
        tiny_model_dir,
        "--task",
        "mrpc",
        "--data-dir",
        glue.parent,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--bits",
        "4",
        "--no-bench",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    return out, tasks.load_task(tasks.get_task("mrpc"), glue.parent)["dev"]


def test_config_names_the_labels_and_the_problem():
    enc = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    mrpc = hf_layout.config(enc, tasks.get_task("mrpc"))
    assert mrpc["id2label"] == {"0": "not_equivalent", "1": "equivalent"} and mrpc["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    assert mrpc["architectures"] == ["BertForSequenceClassification"] and mrpc["problem_type"] == "single_label_classification"
    assert mrpc["model_type"] == "bert" and mrpc["hidden_size"] == 64
    stsb = AutoConfig.for_model(**hf_layout.config(enc, tasks.get_task("stsb")))
    assert stsb.num_labels == 1 and stsb.problem_type == "regression" and stsb.id2label == {0: "similarity"}
    # a task without GLUE names keeps its own labels
    assert hf_layout.config(enc, tasks.get_task("mnli"))["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}


def test_artifact_has_the_layout_loaders_expect(tiny_artifact):
    out, _ = tiny_artifact
    m = mf.read(out, mf.ArtifactManifest)
    assert {"onnx/model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(m.files)
    assert not (out / "model.onnx").exists()  # one copy of the weights
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 128  # where compress truncates
    assert json.loads((out / "config.json").read_text())["finetuning_task"] == "mrpc"


def test_tokenizer_inside_the_graph(tiny_artifact, tmp_path):
    import shutil

    from compress.exporters import tokenizer_graph
    from compress.files import graph_path
    from compress.runtimes import evaluate
    from compress.runtimes.session import open_session

    out, dev = tiny_artifact
    art = shutil.copytree(out, tmp_path / "art")
    r = invoke("export", art, "--with-tokenizer")
    assert r.exit_code == 0, r.output
    m = mf.read(art, mf.ArtifactManifest)
    assert "onnx/model_with_tokenizer.onnx" in m.files and m.validation.with_tokenizer_max_abs_diff < 1e-4
    sess = tokenizer_graph.ort_session(art / "onnx" / tokenizer_graph.FILE)
    assert [i.name for i in sess.get_inputs()] == ["text", "text_pair"]
    got = tokenizer_graph.logits(sess, dev.text_a, dev.text_b)
    ref = evaluate.texts_logits(open_session(graph_path(art)), art / "tokenizer.json", 128, dev.text_a, dev.text_b)
    assert np.abs(got - ref).max() < 1e-5
    # longer than max_length tokens: the graph keeps the first 128 instead of failing
    long = tokenizer_graph.logits(sess, ["word " * 300], ["other " * 300])
    assert long.shape == (1, 2) and np.isfinite(long).all()
    # a rebuilt graph drops the old tokenizer graph with it
    assert invoke("export", art, "--kernel", "float").exit_code == 0 and not (art / "onnx" / tokenizer_graph.FILE).exists()
