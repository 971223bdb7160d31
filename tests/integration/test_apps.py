"""The real MiniLM artifact in the apps' runtimes, each against compress's own predictions on the same dev pairs:
Optimum + pipeline() (whole dev sets; in an app's own environment with Optimum and no compress, .venv-apps, because
Optimum holds transformers below 4.58), the in-graph tokenizer (whole MRPC dev set), Node.js (Transformers.js on
onnxruntime-node) and the browser (Transformers.js on onnxruntime-web WASM, in headless Chromium)."""

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from environments import run_in

from compress import manifest as mf
from compress import tasks
from compress.cli import main
from compress.files import graph_path
from compress.runtimes import evaluate
from compress.runtimes.session import open_session

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
APP_PAIRS = 100  # the fixed dev pairs the Node and browser apps classify


def _run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def artifacts(glue_dir, tmp_path_factory):
    """MiniLM 4-bit artifacts for MRPC (pairs; also with the tokenizer in the graph, and re-exported as the standard-ONNX qdq
    graph) and STS-B (regression), briefly trained."""
    root = tmp_path_factory.mktemp("apps")
    for task, n in (("mrpc", 256), ("stsb", 128)):
        _run(
            "run",
            "--model",
            "minilm",
            "--task",
            task,
            "--bits",
            "4",
            "--data-dir",
            glue_dir,
            "--out",
            root / task,
            "--epochs",
            "1",
            "--max-train-examples",
            n,
            "--max-eval-examples",
            64,
            "--no-bench",
        )
    shutil.copytree(root / "mrpc", root / "mrpc-qdq")
    _run("export", root / "mrpc-qdq", "--kernel", "qdq")  # standard ONNX: what the apps' runtimes take beside ORT's contrib ops
    _run("export", root / "mrpc", "--with-tokenizer")
    return root


def _dev(glue_dir, task):
    return tasks.load_task(tasks.get_task(task), glue_dir)["dev"]


def _compress_logits(art: Path, dev, n=None):
    """compress's own evaluation: tokenizer.json, batches of 32 padded to their longest, the shipped graph."""
    m = mf.read(art, mf.ArtifactManifest)
    b = dev.text_b[:n] if dev.text_b is not None else None
    return evaluate.texts_logits(
        open_session(graph_path(art)), art / "tokenizer.json", m.config.train.max_length, dev.text_a[:n], b, m.model.pad_token_id
    )


OPTIMUM = r"""
import json, sys
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline

art, pairs = sys.argv[1], [json.loads(line) for line in open(sys.argv[2])]
model = ORTModelForSequenceClassification.from_pretrained(art)
clf = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(art))
print(json.dumps({"preds": clf(pairs, batch_size=8), "label2id": model.config.label2id}))
"""


@pytest.mark.parametrize("name", ["mrpc", "stsb", "mrpc-qdq"])
def test_optimum_pipeline_whole_dev_set(artifacts, glue_dir, name, apps_python, tmp_path):
    """The README's Optimum snippet, as an app that has Optimum (and not compress) runs it, on every dev pair."""
    task = name.split("-")[0]
    art, dev = artifacts / name, _dev(glue_dir, task)
    ref = _compress_logits(art, dev)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text": a, "text_pair": b}) + "\n" for a, b in zip(dev.text_a, dev.text_b)))
    out = json.loads(run_in(apps_python, OPTIMUM, str(art), str(pairs)).strip().splitlines()[-1])
    preds = out["preds"]
    assert len(preds) == len(dev.labels) == len(ref)
    if task == "stsb":  # regression: pipeline() reports the raw score under the head's one name
        assert {p["label"] for p in preds} == {"similarity"}
        assert np.abs(np.array([p["score"] for p in preds]) - ref[:, 0]).max() < 1e-4
    else:
        assert [out["label2id"][p["label"]] for p in preds] == ref.argmax(1).tolist()


def test_tokenizer_in_the_graph_whole_dev_set(artifacts, glue_dir):
    from compress.exporters import tokenizer_graph

    art, dev = artifacts / "mrpc", _dev(glue_dir, "mrpc")
    got = tokenizer_graph.logits(tokenizer_graph.ort_session(art / "onnx" / tokenizer_graph.FILE), dev.text_a, dev.text_b)
    ref = _compress_logits(art, dev)
    assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 1e-4


def _npm_ci(folder: Path) -> None:
    """The example's packages from its lockfile (.ci/run installs them; the registry is the only download)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed")
    if not (folder / "node_modules" / "@huggingface" / "transformers").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, check=True, env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
        )


def _pairs_file(glue_dir, tmp_path) -> tuple[Path, object]:
    dev = _dev(glue_dir, "mrpc")
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"text": a, "text_pair": b}) + "\n" for a, b in zip(dev.text_a[:APP_PAIRS], dev.text_b[:APP_PAIRS])))
    return f, dev


@pytest.mark.parametrize("name", ["mrpc", "mrpc-qdq"])
def test_node_app_predicts_like_python(artifacts, glue_dir, name, tmp_path):
    _npm_ci(EXAMPLES / "node")
    pairs, dev = _pairs_file(glue_dir, tmp_path)
    r = subprocess.run(
        ["node", "classify.mjs", str(artifacts / name), "--jsonl", str(pairs)],
        cwd=EXAMPLES / "node",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    got = np.array([row["logits"] for row in rows])
    ref = _compress_logits(artifacts / name, dev, APP_PAIRS)
    assert got.shape == ref.shape and (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 1e-4
    assert {row["label"] for row in rows} <= {"not_equivalent", "equivalent"}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium: apt-get install chromium (.ci/run does)")


def test_browser_page_predicts_like_python(artifacts, glue_dir, tmp_path):
    import sys

    chromium = _chromium()
    _npm_ci(EXAMPLES / "web")
    sys.path.insert(0, str(EXAMPLES / "web"))
    import serve

    pairs, dev = _pairs_file(glue_dir, tmp_path)
    srv = serve.server(artifacts / "mrpc", port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    shot = Path(os.environ.get("SCREENSHOT_DIR", tmp_path)) / "web-example.png"
    try:
        r = subprocess.run(
            ["node", "drive.mjs", f"http://127.0.0.1:{srv.server_address[1]}/", str(pairs), str(shot), chromium],
            cwd=EXAMPLES / "web",
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        srv.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    page = json.loads(r.stdout.strip().splitlines()[-1])
    got = np.array(page["logits"])
    ref = _compress_logits(artifacts / "mrpc", dev, APP_PAIRS)
    # the same predictions; onnxruntime-web's WASM kernels round differently from the native CPU ones (measured: logits within 0.009)
    assert got.shape == ref.shape and (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 0.03
    assert page["errors"] == [] and "ms for this input" in page["typed"]["detail"]
    label = ["not_equivalent", "equivalent"][int(ref[0].argmax())]
    assert page["typed"]["result"].startswith(label + " ")  # what the user typed (the first pair), as the page shows it
    assert shot.stat().st_size > 10_000
