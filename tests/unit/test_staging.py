"""compress.staging: a directory is published whole or not at all, readable by others."""

import pytest

from compress import staging
from compress.errors import ArtifactError


def test_staging_is_atomic(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with staging.staging(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half written
    with staging.staging(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"onnx")
    assert (out / "model.onnx").read_bytes() == b"onnx"
    with pytest.raises(ArtifactError, match="--overwrite"):
        with staging.staging(out):
            pass
    with staging.staging(out, overwrite=True) as tmp:
        (tmp / "model.onnx").write_bytes(b"new")
    assert (out / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staged_output_is_readable_by_others(tmp_path):
    """mkdtemp makes the staging directory 0700: the published one gets plain umask modes (a web server can read it)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        with staging.staging(tmp_path / "run") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "model.onnx").write_bytes(b"onnx")
            (tmp / "model.onnx").write_bytes(b"onnx")
            (tmp / "model.onnx").chmod(0o600)  # as tempfile-based writers leave it
    finally:
        os.umask(old)
    out = tmp_path / "run"
    assert {stat.S_IMODE(p.stat().st_mode) for p in (out, out / "sub")} == {0o755}
    assert {stat.S_IMODE(p.stat().st_mode) for p in (out / "model.onnx", out / "sub" / "model.onnx")} == {0o644}
