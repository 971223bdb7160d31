import json

import pytest

from compress import artifact
from compress.artifact import ArtifactError


def test_staging_is_atomic(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with artifact.staging(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half written
    with artifact.staging(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"onnx")
        artifact.write_manifest(tmp, {"model": {"name": "x"}})
    assert (out / "model.onnx").read_bytes() == b"onnx"
    with pytest.raises(ArtifactError, match="--overwrite"):
        with artifact.staging(out):
            pass
    with artifact.staging(out, overwrite=True) as tmp:
        (tmp / "model.onnx").write_bytes(b"new")
        artifact.write_manifest(tmp, {})
    assert (out / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_manifest_hashes_are_verified(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    m = artifact.write_manifest(tmp_path, {"task": {"name": "mrpc"}})
    assert m["schema_version"] == artifact.SCHEMA_VERSION and m["files"]["model.onnx"]["bytes"] == 4
    assert artifact.read(tmp_path)["task"]["name"] == "mrpc"
    (tmp_path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="model.onnx does not match its SHA-256"):
        artifact.read(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        artifact.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        artifact.read(tmp_path)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        artifact.read(tmp_path / "elsewhere")
