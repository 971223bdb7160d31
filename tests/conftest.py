"""Shared fixtures (a tiny randomly initialised BERT with the real MiniLM tokenizer, GLUE data, the apps' own environments)
and the two tiers:

    python -m pytest          the fast tier: unit tests on the tiny BERT (tests/unit), without the ones marked slow
    python -m pytest --full   everything: also the slow unit tests and tests/integration (the real MiniLM, the accuracy
                              gate, the apps in their own environments, fault injection, the reader-only install)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from clirunner import invoke
from environments import environment

ROOT = Path(__file__).resolve().parents[1]
SHARED_GLUE = ROOT.parent / "shared" / "data" / "glue"


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="run every test: the slow unit tests and tests/integration too")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    if config.getoption("--full"):
        return
    fast = [i for i in items if not (i.get_closest_marker("integration") or i.get_closest_marker("slow"))]
    config.hook.pytest_deselected(items=[i for i in items if i not in fast])
    items[:] = fast


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = Path(os.environ.get("GLUE_DIR", SHARED_GLUE))
    if not (path / "MRPC" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found at {path}: set GLUE_DIR")
    return path


@pytest.fixture(scope="session", autouse=True)
def latency_cache(tmp_path_factory) -> Path:
    """compress.latency caches its measured models here, not in the user's ~/.cache: measured once per session."""
    d = tmp_path_factory.mktemp("cache")
    old = os.environ.get("COMPRESS_CACHE")
    os.environ["COMPRESS_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("COMPRESS_CACHE", None)
    else:
        os.environ["COMPRESS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 64, 4 heads) saved in Hugging Face format."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from compress.models import embedded_dir

    d = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128
    )
    BertModel(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(embedded_dir()).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def default_artifact(tiny_model_dir, tmp_path_factory) -> Path:
    """A default 4-bit artifact of the tiny BERT (int8 kernel: the int8 weights are folded from packed codes at load)."""
    root = tmp_path_factory.mktemp("default-artifact")
    d = root / "glue" / "MRPC"
    d.mkdir(parents=True)
    rows = [f"{i % 2}\t{i}\t{i + 100}\tThe witness number {i} spoke .\tA witness spoke , number {i} ." for i in range(24)]
    (d / "train.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n")
    (d / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows[:12]) + "\n")
    args = ["--model", tiny_model_dir, "--task", "mrpc", "--data-dir", root / "glue", "--epochs", "1", "--batch-size", "8"]
    r = invoke("run", *args, "--no-bench", "--out", root / "art")
    assert r.exit_code == 0, r.output
    return root / "art"


@pytest.fixture()
def tiny_classifier(tiny_model_dir):
    from compress.models import build_classifier

    clf, tok, _ = build_classifier(str(tiny_model_dir), 2, seed=0)
    return clf.eval(), tok


@pytest.fixture()
def mini_glue(tmp_path) -> Path:
    """A GLUE-layout directory with MRPC's quirks: byte-order mark, bare quotes, a trailing row without newline."""
    d = tmp_path / "glue" / "MRPC"
    d.mkdir(parents=True)
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = [f'{i % 2}\t{i}\t{i + 100}\tHe said " the witness " was {i} .\tThe "witness" number {i} spoke .' for i in range(24)]
    (d / "train.tsv").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    (d / "dev.tsv").write_text(header + "\n".join(rows[:12]), encoding="utf-8")
    return d.parent


@pytest.fixture(scope="session")
def apps_python() -> Path:
    """An app's environment with Optimum (which holds transformers below 4.58): no compress, no test tools."""
    return environment("apps", "optimum-onnx[onnxruntime]>=0.1")


@pytest.fixture(scope="session")
def reader_python() -> Path:
    """The reader-only install of this package (`pip install compress-encoders`): onnxruntime, tokenizers, numpy, click."""
    return environment("reader", "-e", str(ROOT))


@pytest.fixture(scope="session")
def openvino_ep_python() -> Path:
    """ONNX Runtime's OpenVINO build (onnxruntime-openvino replaces the onnxruntime module, so it has an environment of its
    own): this package without its onnxruntime, its other dependencies, and scipy / scikit-learn for `compress bench`'s
    dev metrics."""
    deps = ("numpy>=1.24", "protobuf>=4.25", "tokenizers>=0.19", "click>=8.1", "scipy>=1.10", "scikit-learn>=1.3")
    return environment("openvino_ep", "onnxruntime-openvino", *deps, no_deps=("-e", str(ROOT)))


def pytest_report_header(config):
    tier = "full (--full)" if config.getoption("--full") else "fast (unit tests; --full runs everything)"
    return f"compress tests: {tier}; python {sys.version.split()[0]}, torch {torch.__version__}"
