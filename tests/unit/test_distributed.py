"""Mask learning under torchrun: 2 CPU processes on the gloo backend (compress.distributed), on the tiny BERT."""

import re
import subprocess
import sys

import pytest

from compress import manifest as mf


@pytest.mark.slow  # --full only
def test_two_gloo_processes_learn_one_mask_and_process_0_writes_it(tiny_model_dir, mini_glue, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "compress.cli",
        "-v",
        "run",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(mini_glue),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--no-bench",
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)  # ~13 s; a hang fails fast
    assert r.returncode == 0, r.stderr[-3000:]
    assert "process 0 of 2 (gloo)" in r.stderr and "process 1 of 2 (gloo)" in r.stderr
    hashes = dict(re.findall(r"process (\d): mask sha256 ([0-9a-f]{64})", r.stderr))
    assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"]  # DDP kept the two processes' scores identical
    m = mf.read(out, mf.ArtifactManifest)
    assert m.training.processes == 2 and m.mask_sha256 == hashes["0"] and m.passed
    assert len(m.training.history) == 2 and 0 < m.density < 1
    assert r.stdout.count(str(out)) == 1  # one summary: process 0's
