"""Folding a graph's packed weights in one plain run before ONNX Runtime loads the rest (compress.runtimes.staged_fold)."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from compress.runtimes import onnx_wire, staged_fold
from compress.runtimes.bench import inputs
from compress.runtimes.session import open_session, run_logits


@pytest.fixture(autouse=True)
def no_fold_cache(monkeypatch):
    """What is tested here is the fold in memory (the fold cache: test_fold_cache.py)."""
    monkeypatch.setenv("COMPRESS_FOLD_CACHE", "0")


@pytest.fixture()
def artifact(default_artifact) -> Path:
    return default_artifact


def test_folded_first_gives_the_logits_of_onnx_runtimes_own_folding(artifact, monkeypatch):
    """The same nodes on the same kernels: identical logits, and no node of the rest unpacks a weight."""
    monkeypatch.setattr(staged_fold, "LARGE", 1024)  # the tiny BERT's weights are small: hand them over all the same
    graph = artifact / "onnx" / "model.onnx"
    feeds = inputs(3, 17, seed=5)
    feeds["attention_mask"][1, 6:] = 0
    assert np.array_equal(run_logits(open_session(graph, fold_first=True), feeds), run_logits(open_session(graph), feeds))
    folded = staged_fold.fold(graph)
    rest = onnx.load_from_string(folded.model)
    ops = Counter(n.op_type for n in rest.graph.node)
    assert ops["BitShift"] == ops["Round"] == ops["ReduceMax"] == 0 and ops["QAttention"] == 2  # 2 layers
    # the int8 linears are handed over, not stored in the graph: placeholders of their shape and type
    assert sum(v.dtype == np.int8 and v.ndim == 2 for v in folded.values.values()) == 8  # per layer: Q/K/V, out, FFN x 2
    held = {i.name: i for i in rest.graph.initializer if i.data_location == TensorProto.EXTERNAL}
    assert set(held) == set(folded.values)
    assert all(list(held[n].dims) == list(v.shape) for n, v in folded.values.items())
    assert all(v.nbytes >= staged_fold.LARGE for v in folded.values.values())


def test_a_fold_cut_into_parts_gives_what_one_run_gives(artifact, monkeypatch):
    """Cut into parts of a few nodes, each run in a session of its own and reading what earlier parts computed: the same
    graph and the same tensors, bit for bit."""
    monkeypatch.setattr(staged_fold, "LARGE", 1024)
    graph = artifact / "onnx" / "model.onnx"
    whole = staged_fold.fold(graph)
    monkeypatch.setattr(staged_fold, "PART_NODES", 7)
    m, _ = onnx_wire.read(graph, staged_fold.LARGE)
    parts = staged_fold._parts(staged_fold._split(m.graph, {}), {})
    assert len(parts) > 10 and any(p.carried for p in parts) and all(len(p.nodes) <= 7 for p in parts)
    cut = staged_fold.fold(graph)
    assert cut.model == whole.model and cut.values.keys() == whole.values.keys()
    assert all(np.array_equal(cut.values[k], v) for k, v in whole.values.items())


def _model(nodes, inits, out="y", shape=(4, 64)):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, shape[0]])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, shape[1]])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_graphs_with_nothing_to_fold_load_as_they_are(tmp_path):
    """Weights already in the form the kernels take and DequantizeLinear (left to ONNX Runtime's QDQ fusions): fold() returns
    None and open_session loads the file itself. A small folded tensor goes into the graph, none is handed over."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 128)).astype(np.float32)
    plain = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w}, shape=(256, 128))
    codes = rng.integers(-8, 8, (256, 128)).astype(np.int8)
    dq = _model(
        [helper.make_node("DequantizeLinear", ["c", "s"], ["w"], axis=1), helper.make_node("MatMul", ["x", "w"], ["y"])],
        {"c": codes, "s": np.full(128, 0.1, np.float32)},
        shape=(256, 128),
    )
    small = _model(
        [helper.make_node("Mul", ["w", "two"], ["w2"]), helper.make_node("MatMul", ["x", "w2"], ["y"])],
        {"w": w[:4, :8], "two": np.array(2.0, np.float32)},
        shape=(4, 8),
    )
    for name, m in {"plain": plain, "dq": dq, "small": small}.items():
        onnx.save(m, tmp_path / f"{name}.onnx")
        folded = staged_fold.fold(tmp_path / f"{name}.onnx")
        assert folded is None if name != "small" else folded.values == {}, name
        x = rng.standard_normal((2, m.graph.input[0].type.tensor_type.shape.dim[1].dim_value)).astype(np.float32)
        assert open_session(tmp_path / f"{name}.onnx", fold_first=True).run(None, {"x": x})[0].shape[0] == 2


def test_a_large_constant_subgraph_is_computed_before_the_session_loads(tmp_path):
    """Unpacked codes times scales (a weight folded at load), a scalar and a shape among the folded tensors: the logits of
    ONNX Runtime's own folding, the scalar kept a scalar."""
    rng = np.random.default_rng(1)
    codes = rng.integers(-8, 8, (256, 128)).astype(np.int8)  # 128 kB as float
    nodes = [
        helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["cf", "s"], ["w"]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["h", "k"], ["y"]),
    ]
    m = _model(nodes, {"c": codes, "s": np.full((1, 128), 0.01, np.float32)}, shape=(256, 128))
    onnx.save(m, tmp_path / "m.onnx")
    folded = staged_fold.fold(tmp_path / "m.onnx")
    assert list(folded.values) == ["w"] and folded.values["w"].shape == (256, 128)
    rest = onnx.load_from_string(folded.model)
    assert [n.op_type for n in rest.graph.node] == ["MatMul", "Mul"]
    assert [list(i.dims) for i in rest.graph.initializer if i.name == "k"] == [[]]
    x = rng.standard_normal((2, 256)).astype(np.float32)
    a = open_session(tmp_path / "m.onnx", fold_first=True).run(None, {"x": x})[0]
    assert np.array_equal(a, open_session(tmp_path / "m.onnx").run(None, {"x": x})[0])


def test_the_graph_is_read_without_the_onnx_package(artifact):
    """An app's install has no onnx (onnxruntime, tokenizers, numpy): the fold reads and writes the graph through protobuf
    alone (compress.runtimes.onnx_wire), and what it writes is the graph onnx reads, field for field."""
    graph = str(artifact / "onnx" / "model.onnx")
    code = (
        "import sys; sys.modules['onnx'] = None; from compress.runtimes.session import open_session, run_logits; "
        "from compress.runtimes.bench import inputs; import numpy as np; "
        "a = run_logits(open_session(sys.argv[1], fold_first=True), inputs(2, 9)); "
        "b = run_logits(open_session(sys.argv[1]), inputs(2, 9)); "
        "print(np.array_equal(a, b))"
    )
    r = subprocess.run([sys.executable, "-c", code, graph], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-800:]
    m = onnx_wire.messages().ModelProto()
    m.ParseFromString(Path(graph).read_bytes())
    m.graph.name = "renamed"
    got, want = onnx.load_from_string(m.SerializeToString()), onnx.load(graph)
    want.graph.name = "renamed"
    assert got == want  # every field onnx_wire does not declare is carried through unchanged


def test_a_graph_that_cannot_be_folded_first_loads_as_onnx_runtime_folds_it(artifact, monkeypatch, caplog):
    """Folding first is an optimization: where it fails, the session is ONNX Runtime's own (same logits), with a warning;
    a file that is no graph at all gets ONNX Runtime's refusal."""
    from compress.runtimes.providers import GraphLoadError

    graph = artifact / "onnx" / "model.onnx"
    want = run_logits(open_session(graph), inputs(2, 9))

    def broken(*args, **kwargs):
        raise RuntimeError("an op this cannot split")

    monkeypatch.setattr(staged_fold, "fold", broken)
    with caplog.at_level("WARNING"):
        got = run_logits(open_session(graph, fold_first=True), inputs(2, 9))
    assert np.array_equal(got, want) and "folding its weights first failed (RuntimeError: an op this cannot split)" in caplog.text
    monkeypatch.undo()
    (artifact.parent / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(GraphLoadError, match="rebuild it with `compress export DIR`"):
        open_session(artifact.parent / "junk.onnx", fold_first=True)


def test_what_subgraphs_read_is_kept(tmp_path):
    """An If whose branches read a folded tensor and an initializer nothing else reads: both stay in the graph."""
    rng = np.random.default_rng(2)
    w, w2 = (rng.standard_normal((256, 128)).astype(np.float32) for _ in range(2))
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [256, 128])
    then = helper.make_graph([helper.make_node("Add", ["x", "wk"], ["b"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Add", ["x", "w2"], ["b"])], "else", [], [out])
    g = helper.make_graph(
        [helper.make_node("Mul", ["w", "k"], ["wk"]), helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 128]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 128])],
        [numpy_helper.from_array(v, k) for k, v in {"w": w, "w2": w2, "k": np.array(0.5, np.float32)}.items()],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "if.onnx")
    folded = staged_fold.fold(tmp_path / "if.onnx")
    # wk folded, w2 read from the file: both handed over, both kept in the graph (as placeholders of their values)
    assert set(folded.values) == {"wk", "w2"} and np.array_equal(folded.values["w2"], w2)
    assert {"wk", "w2"} <= {i.name for i in onnx.load_from_string(folded.model).graph.initializer}
    x = rng.standard_normal((256, 128)).astype(np.float32)
    a, b = open_session(tmp_path / "if.onnx", fold_first=True), open_session(tmp_path / "if.onnx")
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        assert np.array_equal(a.run(None, feeds)[0], b.run(None, feeds)[0])


def test_large_tensors_are_read_as_views_of_the_file(tmp_path):
    """onnx_wire.read: the raw data of large top-level initializers left out of the parsed graph and returned as the file's
    bytes; everything else (small tensors, typed fields, a subgraph's initializers, nodes, functions) parsed as it is."""
    rng = np.random.default_rng(3)
    big, small = rng.standard_normal((300, 100)).astype(np.float32), np.arange(6, dtype=np.int64)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [200, 100], rng.standard_normal(20000).astype(np.float32).tolist())
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [300, 100])
    inner = numpy_helper.from_array(big * 2, "inner")
    then = helper.make_graph([helper.make_node("Add", ["x", "inner"], ["b"])], "then", [], [out], [inner])
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=then)],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [300, 100])],
        [numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small"), typed],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    m, raw = onnx_wire.read(tmp_path / "m.onnx", large=1024)
    assert set(raw) == {"big"} and np.array_equal(np.frombuffer(raw["big"], np.float32).reshape(300, 100), big)
    parsed = onnx.load_from_string(m.SerializeToString())
    by_name = {i.name: i for i in parsed.graph.initializer}
    assert by_name["big"].data_location == TensorProto.EXTERNAL and not by_name["big"].raw_data and list(by_name["big"].dims) == [300, 100]
    assert np.array_equal(numpy_helper.to_array(by_name["small"]), small)
    assert np.array_equal(numpy_helper.to_array(by_name["typed"]), numpy_helper.to_array(typed))
    assert np.array_equal(numpy_helper.to_array(parsed.graph.node[0].attribute[0].g.initializer[0]), big * 2)
    model.graph.initializer[0].ClearField("raw_data")  # all but the left-out bytes: as they were
    parsed.graph.initializer[0].CopyFrom(model.graph.initializer[0])
    assert parsed == model
    (tmp_path / "bad.onnx").write_bytes(b"\x0f\x01\x02")
    with pytest.raises(DecodeError, match="not an ONNX model"):
        onnx_wire.read(tmp_path / "bad.onnx", large=1024)
