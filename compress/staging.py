"""Writing a directory or a file so that a reader never sees it half written.

``staging(out)`` yields a temporary sibling directory that is renamed into place only when complete (an existing
``out`` is set aside first, and removed once the new one is in place); ``recover(out)`` undoes what a writer killed
mid-publish left behind; ``atomic_write(path, write)`` writes one file beside its target and renames it. What the
directories hold is compress.files; what their manifest says, compress.manifest.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from compress.errors import ArtifactError

log = logging.getLogger(__name__)


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
        pid = stale.name[len(out.name) + 2 :].split(".", 1)[0]
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
            raise ArtifactError(
                f"no space left on the device of {out.parent.resolve()} while writing {out}: free some space and rerun "
                "(nothing was written; a training checkpoint, if any, is kept)"
            ) from None
        raise


def _readable(root: Path) -> None:
    """Give the staged tree the modes a plain mkdir/open would (mkdtemp makes it 0700, some writers 0600), so that whoever is
    meant to serve the output (a web server, another user) can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for p in (root, *root.rglob("*")):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def atomic_write(path: Path, write) -> None:
    """write(tmp) to a temporary file beside `path`, then rename it into place (never half written).
    The temporary name carries the process id: several processes (e.g. per-seed sweeps) may share a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
