"""A graph's folded weights kept on disk after its first load (compress.runtimes.fold_cache)."""

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from compress.runtimes import fold_cache, staged_fold
from compress.runtimes.bench import inputs
from compress.runtimes.session import open_session, run_logits


@pytest.fixture()
def graph(default_artifact, tmp_path, monkeypatch):
    """A copy of the default artifact's graph of its own (the cache is keyed by the file), and an empty cache."""
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COMPRESS_FOLD_CACHE", raising=False)
    shutil.copytree(default_artifact / "onnx", tmp_path / "onnx")
    return tmp_path / "onnx" / "model.onnx"


def test_the_first_load_writes_the_folded_graph_and_later_loads_read_it(graph, tmp_path, monkeypatch):
    """Logits identical to ONNX Runtime's own folding on the first load and on a later one, which does not fold; the
    written graph keeps its folded tensors in one file, each at a page-aligned offset, and no temporary directory is left."""
    monkeypatch.setattr(staged_fold, "LARGE", 1024)  # the tiny BERT's weights are small: written to the file all the same
    feeds = inputs(3, 17, seed=5)
    feeds["attention_mask"][1, 6:] = 0
    want = run_logits(open_session(graph), feeds)
    assert np.array_equal(run_logits(open_session(graph, fold_first=True), feeds), want)
    (entry,) = (tmp_path / "cache" / "folded").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == [fold_cache.WEIGHTS, "model.onnx"]
    written = onnx.load(entry / "model.onnx", load_external_data=False)
    external = [i for i in written.graph.initializer if i.data_location == TensorProto.EXTERNAL]
    offsets = [int({e.key: e.value for e in i.external_data}["offset"]) for i in external]
    assert len(external) >= 8 and all(o % fold_cache.ALIGN == 0 for o in offsets) and len(set(offsets)) == len(offsets)
    rest = onnx.load_from_string(staged_fold.fold(graph).model)  # the graph without its constant nodes
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in rest.graph.node]
    folds = []
    monkeypatch.setattr(staged_fold, "fold", lambda *args, **kwargs: folds.append(args))
    assert np.array_equal(run_logits(open_session(graph, fold_first=True), feeds), want) and folds == []  # read, not folded


def test_a_graph_rewritten_in_place_is_folded_again(graph, tmp_path):
    open_session(graph, fold_first=True)
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))  # `compress export` rewrote it
    open_session(graph, fold_first=True)
    assert len(list((tmp_path / "cache" / "folded").iterdir())) == 2


def test_a_cache_that_cannot_be_written_or_is_off_leaves_the_fold_in_memory(graph, tmp_path, monkeypatch):
    """The same logits, nothing written: a cache path that is a file (cannot be created), and COMPRESS_FOLD_CACHE=0."""
    want = run_logits(open_session(graph), inputs(2, 9))
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "file"))
    assert np.array_equal(run_logits(open_session(graph, fold_first=True), inputs(2, 9)), want)
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COMPRESS_FOLD_CACHE", "0")
    assert np.array_equal(run_logits(open_session(graph, fold_first=True), inputs(2, 9)), want)
    assert not (tmp_path / "cache").exists()


def test_the_least_recently_used_graphs_go_when_the_cache_is_full(graph, tmp_path, monkeypatch):
    """Three copies of the graph folded under a limit that holds two: the one used longest ago is deleted."""
    copies = []
    for k in range(3):
        shutil.copytree(graph.parent, tmp_path / f"copy{k}")
        copies.append(tmp_path / f"copy{k}" / "model.onnx")
    open_session(copies[0], fold_first=True)
    (entry,) = (tmp_path / "cache" / "folded").iterdir()
    size = sum(f.stat().st_size for f in entry.iterdir())
    monkeypatch.setenv("COMPRESS_FOLD_CACHE_MB", str(2.5 * size / 1e6))
    open_session(copies[1], fold_first=True)
    os.utime(entry, (1, 1))  # copy 0 used long ago
    open_session(copies[2], fold_first=True)
    assert len(list((tmp_path / "cache" / "folded").iterdir())) == 2 and not entry.exists()


def test_a_graph_given_initializers_needs_a_content_key(graph):
    """What a graph folds to depends on the tensors it is given: without a key naming them, nothing is cached."""
    with pytest.raises(ValueError, match="pass content"):
        fold_cache.open_cached(graph, lambda path, now: None, initializers={"w": None})


def test_a_damaged_cache_entry_is_removed_and_folded_again(graph, tmp_path, caplog):
    want = run_logits(open_session(graph), inputs(2, 9))
    open_session(graph, fold_first=True)
    (entry,) = (tmp_path / "cache" / "folded").iterdir()
    (entry / "model.onnx").write_bytes(b"damaged")
    with caplog.at_level("WARNING"):
        assert np.array_equal(run_logits(open_session(graph, fold_first=True), inputs(2, 9)), want)
    assert "does not load" in caplog.text and not entry.exists()
    assert np.array_equal(run_logits(open_session(graph, fold_first=True), inputs(2, 9)), want) and entry.exists()


def test_a_first_load_syncs_its_files_before_the_entry_is_renamed_into_place(graph, tmp_path, monkeypatch):
    """The session opens the graph in the temporary directory while its files are synced; the entry appears only once
    both are done, and a graph the session cannot open leaves neither an entry nor a temporary directory."""
    synced, opened = [], []
    monkeypatch.setattr(fold_cache, "_sync", lambda files, failed: synced.append([(f.parent.name, f.name, f.is_file()) for f in files]))
    root = tmp_path / "cache" / "folded"

    def open_graph(path, folded_now):
        opened.append((path.parent.name, folded_now, list(root.iterdir())))
        return "session"

    assert fold_cache.open_cached(graph, open_graph) == "session"
    ((name, folded_now, entries),) = opened
    assert name.startswith(".tmp-") and folded_now and [e.name for e in entries] == [name]  # not in place yet
    assert synced == [[(name, fold_cache.WEIGHTS, True), (name, "model.onnx", True)]]
    (entry,) = root.iterdir()
    assert not entry.name.startswith(".tmp-") and fold_cache.open_cached(graph, lambda path, now: (path.parent, now)) == (entry, False)

    def refuse(path, folded_now):
        raise RuntimeError("cannot open")

    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))  # a new key: folded again
    with pytest.raises(RuntimeError, match="cannot open"):
        fold_cache.open_cached(graph, refuse)
    assert list(root.iterdir()) == [entry]


def test_a_folded_graph_that_cannot_be_synced_is_used_but_not_kept(graph, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fold_cache, "_sync", lambda files, failed: failed.append(OSError("disk full")))
    with caplog.at_level("WARNING"):
        assert fold_cache.open_cached(graph, lambda path, now: "session") == "session"
    assert "disk full" in caplog.text and list((tmp_path / "cache" / "folded").iterdir()) == []
