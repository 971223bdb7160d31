"""The artifact directory: the contract between stages.

    onnx/model.onnx    the shipped graph (packed low-bit weights, int8 kernels), where Hugging Face-style loaders
                       look for it (``model.onnx`` at the top in artifacts written before; ``graph_path``)
    config.json        what Optimum and Transformers.js read: labels, problem type (compress.hf_layout)
    mask.npz           the learned binary masks (bit-packed or gap-coded, whichever is smaller)
    calibration.npz    the task's calibration tokens (activation smoothing; GPTQ on task text), so
                       that a re-export quantizes alike without the data
    trainable.safetensors  what the task trained (head; every weight in mode=weights)
    tokenizer files    tokenizer.json, vocab, configs
    manifest.json      compress.manifest.ArtifactManifest: schema version, model, task, resolved
                       configs, backbone hash, per-layer bits and density, metrics, sizes, SHA-256 of
                       every file, versions, command line
    report.md          the human summary

Writes go to a temporary sibling directory that is renamed into place only when complete
(``staging``); single files are written beside their target and renamed (``atomic_write``).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


GRAPH = "onnx/model.onnx"  # an artifact's shipped graph, relative to its directory
LEGACY_GRAPH = "model.onnx"  # where artifacts written before the Hugging Face layout keep it


class ArtifactError(RuntimeError):
    """The artifact directory is missing, incomplete or altered."""


def graph_path(directory: Path) -> Path:
    """The shipped graph of an artifact directory (onnx/model.onnx, or model.onnx in older artifacts)."""
    d = Path(directory)
    return d / GRAPH if (d / GRAPH).is_file() or not (d / LEGACY_GRAPH).is_file() else d / LEGACY_GRAPH


def check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ArtifactError(f"output directory {out} already exists: pass --overwrite to replace it, or choose another --out")


def recover(out: Path) -> None:
    """Undo what a process killed while publishing `out` left behind: the previous version set aside (``.NAME.old``) is put
    back when `out` is missing, and staging directories of processes that no longer run are removed."""
    out = Path(out)
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not out.exists():
        log.warning("%s was being replaced when its writer stopped: restoring the previous version", out)
        old.rename(out)
    for stale in out.parent.glob(f".{out.name}.*.tmp") if out.parent.is_dir() else ():
        pid = stale.name[len(out.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staging(out: Path, overwrite: bool = False):
    """Yield a temporary directory beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    recover(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _readable(tmp)
        check_target(out, overwrite)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArtifactError(f"no space left on the device of {out.parent.resolve()} while writing {out}: free some space and rerun "
                                "(nothing was written; a training checkpoint, if any, is kept)") from None
        raise


def _readable(root: Path) -> None:
    """Give the staged tree the modes a plain mkdir/open would (mkdtemp makes it 0700, some writers 0600), so that whoever is
    meant to serve the output (a web server, another user) can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for p in (root, *root.rglob("*")):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


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
    for pkg in ("compress-encoders", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-extensions", "optimum-onnx", "numpy",
                "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
