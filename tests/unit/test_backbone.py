"""A task-independent backbone (`compress quantize`) and tasks trained on its exact codes (`compress run --backbone`)."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from clirunner import error_line, invoke

from compress import backbone, calibration, masking, models, quantize
from compress import manifest as mf


@pytest.fixture(scope="module")
def rtn_backbone(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bb") / "rtn"
    r = invoke("quantize", "--model", tiny_model_dir, "--bits", "4", "--quantizer", "rtn", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_backbone_holds_the_same_weights_as_quantizing_in_place(rtn_backbone, tiny_model_dir):
    m = mf.read(rtn_backbone, mf.BackboneManifest)
    assert {p.name for p in rtn_backbone.iterdir()} >= {"weights.safetensors", "config.json", "tokenizer.json", "manifest.json"}
    assert m.quant == quantize.QuantConfig(bits=4, method="rtn", calibration="general") and m.calibration.source == "none"
    assert len(m.layers) == 2 * 6 + 1 and sum(layer.embedding for layer in m.layers) == 1
    # rebuilt from config.json + weights.safetensors alone: exactly the model quantized in place from the original
    clf, _, _, qweights = backbone.load(rtn_backbone).classifier(2, seed=0)
    ref, _, _ = models.build_classifier(str(tiny_model_dir), 2, seed=0)
    ref_q = backbone.quantize_(ref, m.quant)
    assert set(qweights) == set(ref_q)
    for name in ref_q:
        assert np.array_equal(qweights[name].codes, ref_q[name].codes) and np.array_equal(qweights[name].scale, ref_q[name].scale)
    for (n, a), (_, b) in zip(clf.state_dict().items(), ref.state_dict().items()):
        if not n.startswith("classifier"):
            assert torch.equal(a, b), n
    # every encoder tensor is in the file: codes + scales for the quantized ones, float32 for the rest (biases, LayerNorms, ...)
    assert m.sizes.codes == sum(np.prod(layer.shape) // 2 for layer in m.layers if not layer.embedding) and m.sizes.floats > 0


def test_gptq_backbone_calibrates_on_the_shipped_general_text(tiny_model_dir, tmp_path):
    sents = calibration.general_sentences()
    assert len(sents) == 2048 and all(s.strip() for s in sents)
    r = invoke("quantize", "--model", tiny_model_dir, "--bits", "2", "--calibration-examples", "16", "--out", tmp_path / "bb")
    assert r.exit_code == 0, r.output
    m = mf.read(tmp_path / "bb", mf.BackboneManifest)
    assert (m.quant.method, m.quant.calibration, m.quant.group_size, m.quant.symmetric) == ("gptq", "general", 16, False)
    assert m.calibration.examples == 16 and m.calibration.tokens > 16 * 10 and m.calibration.text == "compress/data/general_text.txt"
    with pytest.raises(backbone.BackboneError, match="no task's text may calibrate it"):
        backbone.BackboneConfig(quant=quantize.QuantConfig(bits=4, method="gptq", calibration="task"))
    bad = invoke("quantize", "--model", tiny_model_dir, "--bits", "3", "--out", tmp_path / "x")
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()


def test_run_on_a_backbone_learns_the_mask_on_its_codes(rtn_backbone, mini_glue, tmp_path):
    out = tmp_path / "task"
    r = invoke(
        "run",
        "--backbone",
        rtn_backbone,
        "--task",
        "mrpc",
        "--data-dir",
        mini_glue,
        *"--epochs 1 --batch-size 8 --no-bench".split(),
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    m = mf.read(out, mf.ArtifactManifest)
    bbm = mf.read(rtn_backbone, mf.BackboneManifest)
    assert m.backbone.sha256 == bbm.weights_sha256 and m.backbone.path == str(rtn_backbone.resolve())
    assert m.config.quant == bbm.quant and "backbone" in r.output
    # the graph's weights are the backbone's codes under the learned mask, nothing re-quantized
    from compress.build import prepare
    from compress.restore import config_from_manifest, restore

    r = restore(out, m, config_from_manifest(m))
    model, qweights = r.model, r.qweights
    stored = backbone.load(rtn_backbone).qweights()
    masks = {k: v.numpy() for k, v in masking.masks(model).items()}
    for name, qw in prepare(model, qweights)[0].items():
        assert np.array_equal(qw.codes, np.where(masks[name], stored[name].codes, 0))
    before = (out / "onnx" / "model.onnx").read_bytes()
    assert invoke("export", out).exit_code == 0 and (out / "onnx" / "model.onnx").read_bytes() == before
    # the backbone moved: a clear error, then --backbone says where it is now
    moved = tmp_path / "moved"
    shutil.copytree(rtn_backbone, moved)
    m = mf.read(out, mf.ArtifactManifest)
    mf.write(out, dataclasses.replace(m, backbone=dataclasses.replace(m.backbone, path=str(tmp_path / "gone"))))
    gone = invoke("export", out)
    assert gone.exit_code != 0 and "pass --backbone DIR" in error_line(gone)
    assert invoke("export", out, "--backbone", moved).exit_code == 0
    assert mf.read(out, mf.ArtifactManifest).backbone.path == str(moved.resolve())


def test_backbone_options_conflict_and_other_weights_are_refused(rtn_backbone, tiny_model_dir, mini_glue, tmp_path):
    args = [
        "run",
        "--backbone",
        rtn_backbone,
        "--task",
        "mrpc",
        "--data-dir",
        mini_glue,
        "--epochs",
        "1",
        "--no-bench",
        "--out",
        tmp_path / "o",
    ]
    for extra in (["--bits", "2"], ["--mode", "weights"], ["--model", "minilm"]):
        r = invoke(*args, *extra)
        assert r.exit_code != 0 and "cannot be combined with --backbone" in r.output and not (tmp_path / "o").exists()
    other = tmp_path / "other"
    assert invoke("quantize", "--model", tiny_model_dir, "--bits", "8", "--out", other).exit_code == 0
    with pytest.raises(backbone.BackboneError, match="trained on"):
        backbone.load(other, expect_sha256=mf.read(rtn_backbone, mf.BackboneManifest).weights_sha256)
    weights = other / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    r = invoke(
        "run", "--backbone", other, "--task", "mrpc", "--data-dir", mini_glue, "--epochs", "1", "--no-bench", "--out", tmp_path / "t"
    )
    assert r.exit_code != 0 and "weights.safetensors does not match its SHA-256" in error_line(r)
