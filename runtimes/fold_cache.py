"""A graph's folded weights kept on disk after its first load, so that later loads read them as ONNX Runtime reads any
model: no fold, no copy held beside the session's (the weights a default artifact's kernels take are computed from its
packed codes when it loads: compress.runtimes.staged_fold).

On the first load the graph is folded (staged_fold.fold) and written, with its folded tensors as one external data file,
into a temporary directory; the folded tensors are freed, and ONNX Runtime loads the written graph there while another
thread syncs both files to disk. The directory is then renamed to `<cache>/folded/<key>/`: an entry is never half
written.
Every later load of the same file loads the written graph directly. The key is the graph file's real path, size and
modification time, and the versions of this package and of ONNX Runtime: a graph rewritten in place (`compress
export`) is folded again. What it costs on disk: the graph with int8 weights (MiniLM: ~18 MB beside the 12.4 MB
artifact; bert-base: ~100 MB).

<cache> is $COMPRESS_CACHE, else $XDG_CACHE_HOME/compress, else ~/.cache/compress; COMPRESS_FOLD_CACHE=0 turns the cache
off (each load folds in memory). Where the cache cannot be written, the load folds in memory as it would without it. The
least recently used graphs are deleted while the cache holds more than $COMPRESS_FOLD_CACHE_MB (default 2048 MB).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from compress.runtimes import onnx_wire

log = logging.getLogger(__name__)

WEIGHTS = "folded.bin"
ALIGN = 4096  # each tensor's offset in the weights file: a page (ONNX Runtime maps external data from the file)
T = TypeVar("T")


def cache_root() -> Path:
    """Where compress keeps what it measures or computes once per machine ($COMPRESS_CACHE, else the user's cache)."""
    return Path(os.environ.get("COMPRESS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress")


def enabled() -> bool:
    return os.environ.get("COMPRESS_FOLD_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def open_cached(
    model: str | Path,
    open_graph: Callable[[Path, bool], T],
    threads: int | None = None,
    initializers: dict | None = None,
    content: str | None = None,
) -> T | None:
    """-> open_graph(the folded graph of the .onnx file at `model` in the cache, whether it was folded by this call: not
    there yet), or None where the graph has nothing to fold (load it as it is). Raises OSError where the cache cannot be
    written, and what open_graph raises (an entry it cannot open removed, to be folded again).

    A first load folds into a temporary directory and opens the graph there while another thread syncs both files to
    disk (~50 ms at bert-base, off the load's path); once both are done the directory is renamed into place.

    initializers: {name: OrtValue} the session is given in place of the graph's own (a pack's backbone tensors); the
    written graph leaves them to it. content: what the folded weights depend on, in place of the file's path, size and
    modification time (a pack: its manifest's SHA-256, which covers every file, and the task); required with initializers."""
    model = Path(model)
    if initializers and not content:
        raise ValueError(f"{model}: a graph folded with initializers of the caller's is cached under the content they hold: pass content")
    where = cache_root() / "folded" / _key(model, content, sorted(initializers or {}))
    if (where / "model.onnx").is_file():
        with contextlib.suppress(OSError):  # a cache that is read-only here is read all the same
            os.utime(where)  # its last use, for the pruning
        try:
            return open_graph(where / "model.onnx", False)
        except Exception:
            evict(where / "model.onnx")
            raise
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=".tmp-"))
    try:
        opened, sync_error = _fold_and_open(model, tmp, open_graph, threads, initializers)
        if opened is None or sync_error is not None:  # (not synced to disk: used, not kept)
            if sync_error is not None:
                log.warning("%s: the folded graph could not be synced to disk (%s): not kept in the cache", model, sync_error)
            return opened
        try:
            tmp.rename(where)
        except OSError:  # written meanwhile by another process: theirs is the same graph
            if not (where / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: folded weights written to %s", model, where)
    _prune(where.parent, keep=where)
    return opened


def _fold_and_open(model: Path, tmp: Path, open_graph, threads: int | None, initializers: dict | None):
    """-> (the graph folded into `tmp` and opened there, None where there is nothing to fold; the OSError that syncing
    its files to disk meanwhile raised, or None)."""
    from compress.runtimes import staged_fold

    folded = staged_fold.fold(model, initializers, threads)
    if folded is None:
        return None, None
    _write(folded, tmp)
    folded = None  # the folded tensors freed before ONNX Runtime reads them back
    failed: list[OSError] = []
    syncing = threading.Thread(target=_sync, args=([tmp / WEIGHTS, tmp / "model.onnx"], failed), name="fold-cache-sync")
    syncing.start()  # (fsync waits on the disk, without the GIL: it runs while the session is created)
    try:
        opened = open_graph(tmp / "model.onnx", True)
    finally:
        syncing.join()
    return opened, (failed or [None])[0]


def _sync(files: list[Path], failed: list[OSError]) -> None:
    try:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as e:
        failed.append(e)


def _prune(root: Path, keep: Path) -> None:
    """The least recently used entries deleted while the cache holds more than $COMPRESS_FOLD_CACHE_MB (default 2048)."""
    limit = float(os.environ.get("COMPRESS_FOLD_CACHE_MB") or 2048) * 1e6
    entries = []
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".tmp-"):
            entries.append((d.stat().st_mtime, sum(f.stat().st_size for f in d.iterdir()), d))
    total = sum(size for _, size, _ in entries)
    for _, size, d in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if d != keep:
            shutil.rmtree(d, ignore_errors=True)
            total -= size


def evict(graph: Path) -> None:
    """A written graph that does not load (damaged on disk) removed, to be folded again by the next load."""
    shutil.rmtree(graph.parent, ignore_errors=True)


def _key(model: Path, content: str | None, given: list[str]) -> str:
    import onnxruntime

    from compress import __version__

    st = model.stat()
    source = content or f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    what = f"{source}|{','.join(given)}|{__version__}|{onnxruntime.__version__}"
    return hashlib.sha256(what.encode()).hexdigest()[:32]


def _write(folded, where: Path) -> None:
    """The graph with each tensor it is handed (staged_fold's placeholders) stored in one external data file beside it,
    each at a page-aligned offset; the caller's initializers (the rest of its external tensors) left to the session,
    named in that file (ONNX Runtime checks that a tensor's external file exists, and reads it only for tensors it is not
    given)."""
    m = onnx_wire.messages().ModelProto()
    m.ParseFromString(folded.model)
    offset = 0
    with open(where / WEIGHTS, "wb") as f:
        for init in m.graph.initializer:
            if init.data_location != onnx_wire.EXTERNAL:
                continue
            value = folded.values.get(init.name)
            if value is None:  # the caller's
                _point(init, 0, int({e.key: e.value for e in init.external_data}.get("length", 0)))
                continue
            f.seek(offset)
            np.ascontiguousarray(value).tofile(f)
            _point(init, offset, value.nbytes)
            offset += -(-value.nbytes // ALIGN) * ALIGN
    (where / "model.onnx").write_bytes(m.SerializeToString())


def _point(init, offset: int, length: int) -> None:
    del init.external_data[:]
    for key, value in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(length))):
        init.external_data.add(key=key, value=value)
