"""The artifact directory: the contract between stages.

    model.onnx         the shipped graph (packed low-bit weights, int8 kernels)
    mask.npz           the learned binary masks (bit-packed or gap-coded, whichever is smaller)
    calibration.npz    GPTQ only: the calibration tokens, so that a re-export quantizes alike
    trainable.safetensors  what the task trained (head; every weight in mode=weights)
    tokenizer files    tokenizer.json, vocab, configs
    manifest.json      schema version, model, task, resolved config, per-layer bits and density,
                       metrics, sizes, SHA-256 of every file, versions, command line
    report.md          the human summary

Writes go to a temporary sibling directory that is renamed into place only when complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """The artifact directory is missing, incomplete or altered."""


def check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ArtifactError(f"output directory {out} already exists: pass --overwrite to replace it, or choose another --out")


@contextlib.contextmanager
def staging(out: Path, overwrite: bool = False):
    """Yield a temporary directory beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        check_target(out, overwrite)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write) -> None:
    """write(tmp) to a temporary file beside `path`, then rename it into place (never half written).
    The temporary name carries the process id: several processes (e.g. per-seed sweeps) may share a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("compress-encoders", "torch", "transformers", "onnx", "onnxruntime", "optimum", "numpy", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_manifest(directory: Path, manifest: dict) -> dict:
    """Fill in schema_version, files (bytes + SHA-256 of every other file) and write manifest.json."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[str(p.relative_to(directory))] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read(directory: Path, verify: bool = True) -> dict:
    """Load manifest.json and check every listed file's SHA-256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}: pass a directory written by `compress run`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}): rerun `compress run` to rewrite it") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema_version {manifest.get('schema_version')}, this compress reads {SCHEMA_VERSION}: "
                            "re-create the artifact with this version")
    if verify:
        for name, meta in manifest.get("files", {}).items():
            f = directory / name
            if not f.is_file():
                raise ArtifactError(f"{f} is listed in {MANIFEST} but missing: restore it or rerun `compress run`")
            if sha256(f) != meta["sha256"]:
                raise ArtifactError(f"{f} does not match its SHA-256 in {MANIFEST}: it was altered; restore it or rerun `compress run`")
    return manifest
