import json

import pytest

from compress import artifact, manifest as mf
from compress.artifact import ArtifactError


def backbone_manifest() -> mf.BackboneManifest:
    from compress.quantize import QuantConfig

    model = mf.ModelInfo("x", "/x", True, "mean", "bert", 64, 4, ["input_ids", "attention_mask"], 0)
    return mf.BackboneManifest(model=model, quant=QuantConfig(bits=4), calibration=mf.CalibrationInfo("none"),
                               layers=[mf.QLayer("a", [2, 2], 4, None, True)], sizes={"codes": 2})


def test_staging_is_atomic(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with artifact.staging(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half written
    with artifact.staging(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"onnx")
    assert (out / "model.onnx").read_bytes() == b"onnx"
    with pytest.raises(ArtifactError, match="--overwrite"):
        with artifact.staging(out):
            pass
    with artifact.staging(out, overwrite=True) as tmp:
        (tmp / "model.onnx").write_bytes(b"new")
    assert (out / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staged_output_is_readable_by_others(tmp_path):
    """mkdtemp makes the staging directory 0700: the published one gets plain umask modes (a web server can read it)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        with artifact.staging(tmp_path / "run") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "model.onnx").write_bytes(b"onnx")
            (tmp / "model.onnx").write_bytes(b"onnx")
            (tmp / "model.onnx").chmod(0o600)  # as tempfile-based writers leave it
    finally:
        os.umask(old)
    out = tmp_path / "run"
    assert {stat.S_IMODE(p.stat().st_mode) for p in (out, out / "sub")} == {0o755}
    assert {stat.S_IMODE(p.stat().st_mode) for p in (out / "model.onnx", out / "sub" / "model.onnx")} == {0o644}


def test_manifest_is_typed_versioned_and_verified(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"onnx")
    m = mf.write(tmp_path, backbone_manifest())
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["kind"] == "backbone" and raw["schema_version"] == mf.SCHEMA_VERSION == 2 and list(raw)[-1] == "files"
    assert raw["files"]["weights.safetensors"]["bytes"] == 4
    back = mf.read(tmp_path, mf.BackboneManifest)
    assert back.quant.bits == 4 and back.layers[0].shape == [2, 2] and back.weights_sha256 == m.weights_sha256
    with pytest.raises(mf.ManifestError, match="is a backbone, not an artifact: pass an artifact directory"):
        mf.read(tmp_path, mf.ArtifactManifest)
    (tmp_path / "weights.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="weights.safetensors does not match its SHA-256"):
        mf.read(tmp_path)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        mf.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        mf.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 2, "kind": "backbone", "model": {}}))
    with pytest.raises(ArtifactError, match="not a valid backbone manifest"):
        mf.read(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not a JSON object"):
        mf.read(tmp_path)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        mf.read(tmp_path / "elsewhere")
