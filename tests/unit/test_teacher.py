"""Distillation: the losses, the teacher's checks, and a distilled run on the tiny BERT."""

import json

import numpy as np
import pytest
import torch
from clirunner import error_line, invoke, small_mrpc

from compress import files, tasks, train
from compress import manifest as mf
from compress.configs import DistillConfig, MaskConfig, TrainConfig
from compress.errors import ConfigError

MRPC, STSB = tasks.get_task("mrpc"), tasks.get_task("stsb")


def test_soft_loss_is_zero_at_the_teacher_and_keeps_its_scale_across_temperatures():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 2, generator=g)
    assert train.soft_loss(MRPC, t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    s = t + 0.01 * torch.randn(8, 2, generator=g)
    # for small differences KL(T) ~ |ds|^2 / (2 T^2) * var(softmax(t / T)): times T^2 it stays of one size (without: 1/16)
    t1, t4 = train.soft_loss(MRPC, s, t, 1.0).item(), train.soft_loss(MRPC, s, t, 4.0).item()
    assert t1 > 0 and 0.25 < t4 / t1 < 4
    assert train.soft_loss(STSB, torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [3.0]]), 2.0).item() == pytest.approx(0.5)


def test_hidden_loss_ignores_padding():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a = [torch.randn(2, 3, 4) for _ in range(2)]
    b = [x.clone() for x in a]
    assert train.hidden_loss(a, b, mask).item() == 0
    b[0][0, 2] += 5.0  # a padded position
    assert train.hidden_loss(a, b, mask).item() == 0
    b[1][1, 0] += 2.0  # one real token of one layer: (2^2 * 4 dims) / (3 tokens * 4 dims) / 2 layers
    assert train.hidden_loss(a, b, mask).item() == pytest.approx(4 * 4 / (3 * 4) / 2)


def test_layer_outputs_are_the_encoders_hidden_states(tiny_classifier):
    model, tok = tiny_classifier
    batch = {k: torch.as_tensor(v) for k, v in tok(["a b c", "d"], padding=True, return_tensors="np").items()}
    with torch.no_grad(), train.layer_outputs(model) as got:
        model(**batch)
    with torch.no_grad():
        want = model.encoder(**batch, output_hidden_states=True).hidden_states[1:]
    assert len(got) == len(want) == 2 and all(torch.equal(g, w) for g, w in zip(got, want))


def test_distill_config_is_checked():
    with pytest.raises(ConfigError, match="alpha must be in"):
        DistillConfig("t", alpha=1.5)
    with pytest.raises(ConfigError, match="temperature > 0"):
        DistillConfig("t", temperature=0)


@pytest.fixture(scope="module")
def teacher_and_data(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    glue = small_mrpc(root, 32)
    t = root / "teacher"
    dense = "--mode weights --bits 32 --epochs 2 --no-bench".split()
    r = invoke("run", "--model", tiny_model_dir, "--task", "mrpc", "--data-dir", glue, *dense, "--out", t)
    assert r.exit_code == 0, r.output
    return t, glue


def test_a_distilled_run_records_its_teacher_and_moves_towards_it(teacher_and_data, tiny_model_dir, tmp_path):
    """alpha=1: the mask and head learn the teacher's outputs only, so the student ends nearer the teacher than a run
    without one (the same seed, data and steps)."""
    teacher, glue = teacher_and_data
    common = ["run", "--model", tiny_model_dir, "--task", "mrpc", "--data-dir", glue, "--epochs", 3, "--batch-size", 8, "--no-bench"]
    common += ["--mask-lr", 0.05, "--head-lr", 0.01, "--select", "last"]
    assert invoke(*common, "--out", tmp_path / "plain").exit_code == 0
    r = invoke(*common, "--teacher", teacher, "--distill-alpha", 1.0, "--distill-hidden", 0.5, "--out", tmp_path / "kd")
    assert r.exit_code == 0, r.output
    m = mf.read(tmp_path / "kd", mf.ArtifactManifest)
    tm = mf.read(teacher, mf.ArtifactManifest)
    assert m.teacher.sha256 == tm.files[files.TRAINABLE].sha256 and m.teacher.path == str(teacher.resolve())
    assert (
        m.config.distill == DistillConfig(str(teacher), alpha=1.0, hidden=0.5) and "teacher" in (tmp_path / "kd" / files.REPORT).read_text()
    )
    assert json.loads((tmp_path / "kd" / files.MANIFEST).read_text())["schema_version"] == mf.SCHEMA_VERSION
    gap = {name: _gap_to_teacher(tmp_path / name, teacher, glue) for name in ("plain", "kd")}
    assert gap["kd"] < 0.7 * gap["plain"], gap


def _gap_to_teacher(artifact, teacher, glue) -> float:
    """Mean |student logit difference - teacher logit difference| on the dev pairs, in PyTorch."""
    from compress.restore import config_from_manifest, restore

    out = []
    for d in (artifact, teacher):
        m = mf.read(d, mf.ArtifactManifest)
        r = restore(d, m, config_from_manifest(m))
        dev = tasks.load_task(MRPC, glue)["dev"]
        logits = train.predict(r.model, train.encode(r.tokenizer, dev, 128), r.tokenizer.pad_token_id or 0)
        out.append(logits[:, 1] - logits[:, 0])
    return float(np.abs(out[0] - out[1]).mean())


def test_a_teacher_that_cannot_teach_is_refused(teacher_and_data, tiny_model_dir, tmp_path):
    teacher, glue = teacher_and_data
    base = ["run", "--model", tiny_model_dir, "--data-dir", glue, "--epochs", 1, "--no-bench"]
    masked = tmp_path / "masked"
    assert invoke(*base, "--task", "mrpc", "--out", masked).exit_code == 0
    for bad, why in ((masked, "a teacher is a `compress run --mode weights` artifact"), (tmp_path / "none", "manifest")):
        r = invoke(*base, "--task", "mrpc", "--teacher", bad, "--out", tmp_path / "o")
        assert r.exit_code != 0 and why in error_line(r) and not (tmp_path / "o").exists()
    r = invoke(*base, "--task", "mrpc", "--teacher", teacher, "--model", "minilm", "--out", tmp_path / "o")
    assert r.exit_code != 0 and "they must share the tokenizer" in error_line(r)
    r = invoke(*base, "--task", "mrpc", "--distill-alpha", 0.5, "--out", tmp_path / "o")
    assert r.exit_code != 0 and "--distill-alpha needs --teacher DIR" in r.output
    r = invoke(*base, "--task", "mrpc", "--teacher", teacher, "--mode", "weights", "--out", tmp_path / "o")
    assert r.exit_code != 0 and "use --mode structure" in error_line(r)


def test_a_checkpoint_is_not_continued_with_another_teacher(teacher_and_data, tiny_model_dir):
    from compress import checkpoint, typed
    from compress.configs import RunConfig
    from compress.run import checkpoint_settings

    teacher, glue = teacher_and_data
    split = tasks.load_task(MRPC, glue)["train"]
    cfg = RunConfig(model=str(tiny_model_dir), mask=MaskConfig(), train=TrainConfig(), distill=DistillConfig(str(teacher)))
    a, b = checkpoint_settings(cfg, None, split, "a" * 64), checkpoint_settings(cfg, None, split, "b" * 64)
    assert [d[0] for d in typed.differences(a, b)] == ["teacher_sha256"]
    assert isinstance(a, checkpoint.CheckpointSettings)
