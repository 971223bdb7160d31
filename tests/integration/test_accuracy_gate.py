"""The accuracy gate of this project's CI: the example workflow's own commands on the real MiniLM and
the full MRPC training set, checked against the committed baseline. A change that costs accuracy
fails the test suite (and so CI). Takes ~5 minutes on 2 cores."""

import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import main

pytestmark = pytest.mark.integration
WORKFLOW = Path(__file__).parents[2] / "examples" / "ci" / "accuracy.yml"


def workflow_commands() -> dict[str, list[str]]:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["minilm-mrpc-4bit"]["steps"]
    runs = [shlex.split(s["run"]) for s in steps if s.get("run", "").startswith("compress ")]
    return {r[1]: r[1:] for r in runs}


def test_minilm_mrpc_4bit_meets_the_committed_baseline(glue_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[2])  # the workflow's paths are relative to the repository root
    cmds = workflow_commands()
    out = tmp_path / "artifact"
    run = [a if a != "artifact" else str(out) for a in cmds["run"]] + ["--data-dir", str(glue_dir)]
    r = CliRunner().invoke(main, run, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    check = [a if a != "artifact" else str(out) for a in cmds["check"]]
    c = CliRunner().invoke(main, check, catch_exceptions=False)
    assert c.exit_code == 0, f"accuracy regressed against {check[check.index('--baseline') + 1]}:\n{c.output}"
