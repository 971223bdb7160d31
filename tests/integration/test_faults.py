"""Fault injection: real `compress` processes killed with SIGKILL at random moments.

- `compress run` (the real MiniLM, 96 MRPC pairs, 24 steps) is killed three times at random steps and rerun each time; the
  final mask has the hash of an uninterrupted run, and no artifact directory exists until the finished one is renamed in.
- `compress export` is killed mid-write three times: the artifact it was rewriting stays whole (every SHA-256 verifies).
- `compress sweep` is killed inside its second cell: the first cell and the partial sweep.json stay intact, and a rerun
  continues with the second cell only.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress import checkpoint, files, staging
from compress import manifest as mf

pytestmark = pytest.mark.integration
RNG = random.Random(11)
SAVED = re.compile(r"checkpoint: step (\d+) saved")


def _compress(*args, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "compress.cli", "-v", *map(str, args)], stderr=stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def _run_args(glue_dir, out):
    common = "run --model minilm --task mrpc --bits 4 --epochs 2 --batch-size 8 --max-train-examples 96 --max-eval-examples 48"
    # 48 dev pairs: one prediction that int8 flips moves F1 by ~0.01, which the guard's bound knows to be chance
    return [
        *common.split(),
        "--data-dir",
        glue_dir,
        "--out",
        out,
        *"--no-bench --checkpoint-every 2 --threads 2".split(),
    ]


def _kill_after_step(p: subprocess.Popen, step: int) -> int:
    """SIGKILL `p` at a random moment (0-1.5 s) after it saved the checkpoint of `step` or a later one; the last step it saved."""
    last = 0
    for line in p.stderr:
        if m := SAVED.search(line):
            last = int(m.group(1))
            if last >= step:
                time.sleep(RNG.uniform(0, 1.5))
                p.send_signal(signal.SIGKILL)
                p.wait()
                return last
    raise AssertionError(f"the run ended (rc {p.wait()}) before step {step}")


@pytest.fixture(scope="module")
def uninterrupted(glue_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "ref"
    ref = _compress(*_run_args(glue_dir, out))
    _, err = ref.communicate()
    assert ref.returncode == 0, err[-2000:]
    return out


def test_run_killed_three_times_ends_at_the_uninterrupted_mask(glue_dir, uninterrupted, tmp_path):
    want = mf.read(uninterrupted, mf.ArtifactManifest).mask_sha256

    out = tmp_path / "run"
    ckpt = checkpoint.work_dir(out) / checkpoint.FILE
    steps, targets = [], []  # 24 steps: 12 per epoch, checkpoints every 2 steps and at epoch ends
    for _ in range(3):
        resumed = torch.load(ckpt, weights_only=True)["step"] if ckpt.is_file() else 0
        targets.append(resumed + RNG.randint(1, 6))  # a random number of steps after where this run starts
        target = targets[-1]
        p = _compress(*_run_args(glue_dir, out))
        steps.append(_kill_after_step(p, target))
        assert not out.exists()  # nothing half-written where the artifact goes
        assert torch.load(ckpt, weights_only=True)["step"] >= steps[-1]  # the checkpoint on disk is whole
    p = _compress(*_run_args(glue_dir, out))
    _, err = p.communicate()
    assert p.returncode == 0, err[-2000:]
    assert "resuming from" in err
    m = mf.read(out, mf.ArtifactManifest)
    assert m.mask_sha256 == want, f"killed after steps {steps}"
    assert not checkpoint.work_dir(out).exists()  # a finished run removes its checkpoint
    ref_history = mf.read(uninterrupted, mf.ArtifactManifest).training.history
    assert [h.loss for h in m.training.history] == [h.loss for h in ref_history]
    print(f"killed after checkpointed steps {steps} (targets {targets}); final mask {m.mask_sha256[:16]} == uninterrupted")
    assert not list(tmp_path.glob(".run.*.tmp"))


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): files.sha256(p) for p in sorted(d.rglob("*")) if p.is_file()}


def test_export_killed_mid_write_leaves_the_artifact_whole(uninterrupted, tmp_path):
    import shutil

    out = shutil.copytree(uninterrupted, tmp_path / "art")
    before = _files(out)
    for delay in sorted(RNG.uniform(3, 12) for _ in range(3)):  # imports and model build take ~5 s; the export ~15 s
        p = _compress("export", out, "--activations", "tensor", "--format", "ort", stderr=subprocess.DEVNULL)
        time.sleep(delay)
        assert p.poll() is None, "the export finished before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait()
        staging.recover(out)  # what the next reader does (manifest.read calls it when the directory is missing)
        assert _files(out) == before, f"killed after {delay:.1f} s"
        mf.read(out, mf.ArtifactManifest)
    p = _compress("export", out, "--activations", "tensor")
    p.communicate()
    assert p.returncode == 0 and mf.read(out, mf.ArtifactManifest).config.export.activations == "tensor"
    assert not list(tmp_path.glob(".art.*.tmp"))  # the killed exports' staging directories were cleaned up


def test_sweep_killed_in_its_second_cell_keeps_the_first(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--model",
        tiny_model_dir,
        "--task",
        "mrpc",
        "--data-dir",
        glue_dir,
        "--bits",
        "4",
        "--modes",
        "structure",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-train-examples",
        "128",
        "--max-eval-examples",
        "64",
        "--out",
        out,
    ]
    log = open(tmp_path / "sweep.log", "w")
    p = _compress(*args, stderr=log)
    while not (out / "sweep.json").is_file():  # written when the first cell is done
        assert p.poll() is None, (tmp_path / "sweep.log").read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(RNG.uniform(0, 2))
    assert p.poll() is None, "the second cell finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = mf.read(out / "cells" / "structure-4bit-seed0", mf.ArtifactManifest)
    partial = json.loads((out / "sweep.json").read_text())
    assert [c["seed"] for c in partial["cells"]] == [0]
    assert not (out / "cells" / "structure-4bit-seed1" / "manifest.json").exists()
    again = _compress(*args)
    _, err = again.communicate()
    assert again.returncode == 0, err[-2000:]
    data = json.loads((out / "sweep.json").read_text())
    assert [c["seed"] for c in data["cells"]] == [0, 1]
    assert mf.read(out / "cells" / "structure-4bit-seed0", mf.ArtifactManifest).mask_sha256 == first.mask_sha256
