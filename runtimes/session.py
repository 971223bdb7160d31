"""Open an ONNX Runtime session for a graph on a provider."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.runtimes.providers import GraphLoadError, Provider, require

log = logging.getLogger(__name__)


def open_session(
    model: str | Path | bytes,
    provider: Provider | str = "cpu",
    threads: int | None = None,
    optimized_path: str | Path | None = None,
    sparse: bool = False,
    qdq: bool = False,
    initializers: dict | None = None,
    shared_arena: bool = False,
    fold_first: bool = False,
    fold_key: str | None = None,
) -> ort.InferenceSession:
    """All graph optimizations on (constant folding unpacks the low-bit weights at load).

    optimized_path: also write the graph ONNX Runtime actually runs (to check which kernels fire).
    sparse: the weights are 2:4 sparse (TensorRT: use the sparse tensor cores).
    qdq: the graph is `--kernel qdq`'s standard ONNX (TensorRT: explicit int8 from its Q/DQ nodes).
    initializers: {name: OrtValue} used in place of the graph's own (not copied; the session keeps them alive;
        compress.runtimes.shared_weights); ONNX Runtime only.
    shared_arena: allocate from the one CPU arena of ONNX Runtime's environment, shared by every session that asks for it
        (one app with several sessions), rather than from an arena of the session's own.
    fold_first: compute the graph's constant subgraphs (its packed weights) in plain runs before the session loads
        (compress.runtimes.staged_fold: no memory spike at load, the same values), kept in the fold cache for later loads
        (compress.runtimes.fold_cache); ONNX Runtime's CPU provider only.
    fold_key: what the folded weights depend on beyond the file (a pack: its manifest's hash and the task): the fold
        cache's key, which a graph given `initializers` needs to be cached.
    """
    p = require(provider) if isinstance(provider, str) else provider
    if not p.available:
        require(p.name)
    if p.name == "openvino":  # OpenVINO's own runtime behind the same calls
        from compress.runtimes.openvino_runtime import OpenVINOSession

        return OpenVINOSession(model, threads=threads)
    settings = (threads, optimized_path, initializers, shared_arena)
    providers = p.session_providers(sparse, qdq)
    sess = None
    if fold_first and p.name == "cpu" and not optimized_path and not isinstance(model, bytes):
        sess = _folded_first(Path(model), initializers, threads, _options(*settings), providers, fold_key)
    if sess is None:
        try:
            sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), _options(*settings), providers=providers)
        except Exception as e:
            if isinstance(model, bytes):
                raise  # a graph built in memory that does not load is a bug
            raise GraphLoadError(
                f"{model} is not a graph ONNX Runtime can load ({type(e).__name__}: {str(e).splitlines()[0][:160]}): "
                "rebuild it with `compress export DIR`"
            ) from None
    if initializers:
        sess._compress_initializers = dict(initializers)  # ONNX Runtime reads their buffers but does not own them: keep them alive
    release_freed_memory()
    return sess


def _options(threads: int | None, optimized_path, initializers: dict | None, shared_arena: bool) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    for name, value in (initializers or {}).items():
        so.add_initializer(name, value)
    if shared_arena and _register_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    return so


def _folded_first(model: Path, initializers: dict | None, threads: int | None, so: ort.SessionOptions, providers: list, key: str | None):
    """A session of the graph with its constant subgraphs computed first (compress.runtimes.staged_fold): read from the
    fold cache (compress.runtimes.fold_cache: written on the first load), or, for a graph given initializers without a
    key or where the cache is off or cannot serve, handed to the session from memory; None where there is nothing to
    fold or that fails (ONNX Runtime then folds at load: the same weights, a higher peak)."""
    from google.protobuf.message import DecodeError

    from compress.runtimes import fold_cache

    try:
        if fold_cache.enabled() and (key or not initializers):
            try:
                return _from_cache(model, initializers, threads, so, providers, key)
            except _CacheCannotServe:
                pass
        return _folded_in_memory(model, initializers, threads, so, providers)
    except Exception as e:  # a graph this cannot split is still a graph ONNX Runtime loads (or refuses, with its reason)
        if model.is_file() and not isinstance(e, DecodeError):
            log.warning("%s: folding its weights first failed (%s: %s); ONNX Runtime folds them at load", model, type(e).__name__, e)
        return None


class _CacheCannotServe(Exception):
    """The fold cache cannot be written here, or what it holds does not load: fold in memory."""


def _from_cache(model: Path, initializers: dict | None, threads: int | None, so: ort.SessionOptions, providers: list, key: str | None):
    """The session of the graph's folded form in the fold cache (folded and written now on its first load); None where
    there is nothing to fold."""
    from compress.runtimes import fold_cache

    def open_graph(graph: Path, folded_now: bool) -> ort.InferenceSession:
        if folded_now:  # the fold run's freed intermediates back to the system before the session's peak
            release_freed_memory()
        try:
            return ort.InferenceSession(str(graph), so, providers=providers)
        except Exception as e:
            log.warning("%s: the fold cache's %s does not load (%s): removed; folding in memory", model, graph, e)
            raise _CacheCannotServe from None

    try:
        return fold_cache.open_cached(model, open_graph, threads, initializers, key)
    except OSError as e:
        log.info("%s: the fold cache cannot be written (%s): folding in memory", model, e)
        raise _CacheCannotServe from None


def _folded_in_memory(model: Path, initializers: dict | None, threads: int | None, so: ort.SessionOptions, providers: list):
    """The session of the graph's rest, handed its folded tensors (ONNX Runtime copies them); None: nothing to fold."""
    from compress.runtimes import staged_fold

    folded = staged_fold.fold(model, initializers, threads)
    if folded is None:
        return None
    so.add_external_initializers(list(folded.values), [ort.OrtValue.ortvalue_from_numpy(v) for v in folded.values.values()])
    # the graph comes as bytes: the external data it still names (the caller's initializers replace it) is beside the file
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model.resolve().parent))
    graph, folded.model = folded.model, b""
    release_freed_memory()
    return ort.InferenceSession(graph, so, providers=providers)


_ARENA: list[bool] = []  # whether this process registered ONNX Runtime's shared CPU arena (once)


def _register_arena() -> bool:
    """Register one CPU arena with ONNX Runtime's environment (once per process); False where that fails."""
    if not _ARENA:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults: no limit, grow as needed
            _ARENA.append(True)
        except Exception as e:  # e.g. another library registered one first: sessions keep their own arenas
            log.warning("sessions keep their own memory arenas: ONNX Runtime did not register a shared one (%s)", e)
            _ARENA.append(False)
    return _ARENA[0]


def release_freed_memory(collect: bool = False) -> None:
    """Give the heap that session creation freed back to the operating system (glibc only; elsewhere nothing).

    Folding the packed codes into int8 weights at load allocates several times the model's size in
    intermediate tensors (MiniLM: a peak of ~0.5 GB); glibc keeps most of the freed memory resident
    unless asked to return it. collect: run Python's cycle collector first (after training, whose tensors can sit in
    reference cycles). Loading leaves none, and a collection walks every object of the app, the larger the app the
    longer: loads do not collect."""
    if collect:
        import gc

        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_logits(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]
