"""The reader-only install (`pip install compress-encoders`: onnxruntime, tokenizers, numpy, click; no torch, no
transformers) reads what the command line wrote: a pack through compress.Pack, an artifact's manifest, every file verified,
the example app; `compress check` runs there, and the commands that train say which extra they need."""

import json
import subprocess

import pytest
from clirunner import invoke, small_mrpc
from environments import ROOT, run_in

from compress import manifest as mf

pytestmark = pytest.mark.integration

READ = r"""
import importlib.util, json, sys
from compress import Pack, manifest as mf

heavy = [m for m in ("torch", "transformers", "onnx", "scipy", "sklearn", "safetensors") if importlib.util.find_spec(m)]
pack = Pack(sys.argv[1])
art = mf.read(sys.argv[2], mf.ArtifactManifest)  # every file's SHA-256 verified; the configs typed
print(json.dumps({"heavy": heavy, "tasks": pack.tasks, "predict": pack.predict("mrpc", ["He said so ."], ["So he said ."]),
                  "task": art.task.name, "bits": art.config.quant.bits, "kernel": art.config.export.kernel}))
"""


@pytest.fixture(scope="module")
def written(tiny_model_dir, tmp_path_factory):
    """An artifact trained on a backbone and a pack of it, written by this (the command line's) environment."""
    d = tmp_path_factory.mktemp("reader")
    glue = small_mrpc(d)
    for args in (
        ("quantize", "--model", tiny_model_dir, "--bits", "4", "--quantizer", "rtn", "--out", d / "bb"),
        (
            "run",
            "--backbone",
            d / "bb",
            "--task",
            "mrpc",
            "--data-dir",
            glue,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-bench",
            "--max-metric-drop",
            "1",
            "--out",
            d / "art",
        ),
        ("pack", d / "pack", d / "art", "--no-memory"),
    ):
        r = invoke(*args)
        assert r.exit_code == 0, r.output
    return d


def test_reader_install_reads_packs_and_artifacts(written, reader_python):
    got = json.loads(run_in(reader_python, READ, str(written / "pack"), str(written / "art")).strip().splitlines()[-1])
    assert got["heavy"] == []  # what `pip install compress-encoders` brings: none of the command line's packages
    m = mf.read(written / "art", mf.ArtifactManifest)
    assert got["tasks"] == ["mrpc"] and got["predict"][0] in ("0", "1")
    assert (got["task"], got["bits"], got["kernel"]) == (m.task.name, m.config.quant.bits, m.config.export.kernel)
    app = subprocess.run(
        [str(reader_python), str(ROOT / "examples" / "classify.py"), str(written / "art"), "a b", "c d"], capture_output=True, text=True
    )
    assert app.returncode == 0 and app.stdout.startswith("mrpc: label "), app.stderr


def test_reader_install_checks_and_names_the_extra_it_lacks(written, reader_python, tmp_path):
    compress = reader_python.parent / "compress"
    (tmp_path / "baseline.json").write_text(json.dumps({"metrics": {"torch.accuracy": 0.0}}))
    ok = subprocess.run(
        [str(compress), "check", str(written / "art"), "--baseline", str(tmp_path / "baseline.json")], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "ok: 1 metrics" in ok.stdout, ok.stderr
    run = subprocess.run([str(compress), "run", "--task", "mrpc"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        "Error: `compress run` needs torch, which this install lacks: pip install 'compress-encoders[cli]'"
    ]
