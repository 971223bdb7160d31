"""Fold a graph's constant subgraphs in plain runs before ONNX Runtime loads the rest: no memory spike at load.

A default artifact stores its weights as packed 4-bit codes (a pack's task graph: the backbone's codes and the task's
mask): the int8 weights its kernels take are subgraphs of constants, which ONNX Runtime's constant folding computes
when the session loads. That pass keeps every intermediate of every folded subgraph until it ends (MiniLM: a peak of
~0.45 GB, 10x what loading ONNX Runtime's own int8 model costs; bert-base: 16x). Run as an ordinary graph instead, the
same nodes on the same CPU kernels free each intermediate once its last reader has run. ``fold`` takes the constant
nodes out into a graph of their own (its inputs: the large initializers they read, fed as they are; its outputs: the
tensors the rest reads), runs it (in parts of ~600 nodes, each its own session: _parts), and returns the rest with
those tensors in its place (and the large tensors it reads from the file), for the session to take with
``SessionOptions.add_external_initializers`` (copied into its graph), or for compress.runtimes.fold_cache to write.
The values are the ones ONNX Runtime's folding computes (the same kernels): the logits are identical.

Left to ONNX Runtime, as its own folding leaves them: DequantizeLinear (its QDQ fusions take it as it is), nodes outside
the ONNX domain, nodes with subgraphs, random generators. A graph with nothing to fold (no constant node but Constant)
loads as it is.

The graph is read and written with protobuf (which onnxruntime needs) through compress.runtimes.onnx_wire, not the onnx
package: an app that reads artifacts does not install onnx, and importing it loads its C++ extension, which alone takes
~0.5 s, longer than loading the model. Its large tensors are views of the file's mapped bytes (onnx_wire.read), neither
parsed nor copied: the fold run reads the packed codes where they lie.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.runtimes import onnx_wire
from compress.runtimes.onnx_wire import EXTERNAL, HANDED_OVER

log = logging.getLogger(__name__)

LARGE = 65536  # bytes: an initializer this large is fed to the fold run as it is, and a folded tensor handed over as a value
PART_NODES = 600  # constant nodes per fold run (a call of a model-local function: its body's count; _parts)
_NOT_FOLDED = {"DequantizeLinear", "RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial"}
# TensorProto.DataType -> numpy (the types a graph's initializers here have)
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_}
_DTYPES |= {10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
_FIELDS = {1: "float_data", 7: "int64_data", 11: "double_data", 12: "uint64_data", 13: "uint64_data"}  # others: int32_data


@dataclass
class Folded:
    """The graph without its constant subgraphs (serialized) and the values of its large folded tensors."""

    model: bytes
    values: dict[str, np.ndarray] = field(default_factory=dict)


def fold(model: str | Path, initializers: dict | None = None, threads: int | None = None) -> Folded | None:
    """-> the .onnx graph at `model` with its constant subgraphs computed, or None where there is nothing to fold (load it as it is).

    initializers: {name: OrtValue} the caller hands the session in place of the graph's own (a pack's backbone)."""
    pb = onnx_wire.messages()
    path, given = Path(model), initializers or {}
    if path.suffix != ".onnx":  # an .ort file (ONNX Runtime's own format) is not an ONNX graph
        return None
    m, raw = onnx_wire.read(path, LARGE)  # large tensors: views of the file's bytes, neither parsed nor copied
    functions = _foldable_functions(m)
    split = _split(m.graph, functions)
    types = {i.data_type for i in m.graph.initializer if i.name in set(split.inputs)}
    if not any(n.op_type != "Constant" for n in split.nodes) or not types <= set(_DTYPES):
        return None
    source = _Source(path.parent, given, raw)
    for init in m.graph.initializer:  # small tensors stored elsewhere: into the graph (both graphs are loaded from bytes)
        if init.data_location == EXTERNAL and _nbytes(init) < LARGE:
            init.CopyFrom(_tensor(pb, init.name, source.array(init)))
    values: dict[str, np.ndarray] = {}
    for part in _parts(split, functions):  # one fold run per part, each its own session: a smaller graph in memory at once
        values |= _run(_fold_graph(pb, m, part, values), part, m.graph, source, threads, values)
    values = {name: values[name] for name in split.outputs}
    handed = {k: v for k, v in values.items() if v.nbytes >= LARGE}
    return Folded(_rest(pb, m, split, values, source, handed), handed)


@dataclass
class _Source:
    """Where a graph's tensors stored outside its parsed message are: the caller's values, views of the file's bytes
    (onnx_wire.read), or external data files beside the graph."""

    base: Path
    given: dict  # {name: OrtValue}
    raw: dict  # {name: memoryview}

    def array(self, init) -> np.ndarray:
        if init.name in self.given:
            return self.given[init.name].numpy()
        if init.name in self.raw:
            return np.frombuffer(self.raw[init.name], _DTYPES[init.data_type]).reshape(tuple(init.dims))
        return _array(init, self.base)


@dataclass
class _Split:
    nodes: list  # the constant nodes, in graph order
    outputs: list[str]  # what the rest of the graph reads of theirs
    inputs: list[str]  # the initializers they read
    rest_reads: set[str]  # every name the other nodes (and their subgraphs) read, and the graph's outputs
    carried: list[str] = field(default_factory=list)  # what they read of an earlier part's outputs (_parts)

    def large_inputs(self, graph) -> list[str]:
        wanted = set(self.inputs)
        return [i.name for i in graph.initializer if i.name in wanted and _nbytes(i) >= LARGE]


def _split(graph, functions: dict[tuple[str, str], int]) -> _Split:
    """functions: (domain, name) of the model-local functions a constant call of which is folded as a whole."""
    const = ({i.name for i in graph.initializer} - {i.name for i in graph.input}) | {""}  # an initializer that is an input can change
    nodes, rest_inputs = [], {o.name for o in graph.output}
    for n in graph.node:
        if (_foldable(n) or (n.domain, n.op_type) in functions) and all(i in const for i in n.input):
            nodes.append(n)
            const.update(n.output)
        else:
            rest_inputs.update(_reads(n))
    produced = {o for n in nodes for o in n.output}
    outputs = [o for n in nodes for o in n.output if o in rest_inputs]
    inputs = sorted({i for n in nodes for i in n.input if i and i not in produced})
    return _Split(nodes, outputs, inputs, rest_inputs)


def _parts(split: _Split, functions: dict[tuple[str, str], int]) -> list[_Split]:
    """The constant nodes cut, in graph order, into parts of about PART_NODES nodes each (a call of a model-local
    function: its body's count), each run in a session of its own: a pack's MiniLM task graph folds ~4,400 nodes once
    inlined, and one session of them all peaked at 1.56x ORT int8's memory at load, in parts at 1.31x
    (benchmarks/results/first_load_pack.md). Each part's outputs are what the rest of the graph or a later part reads
    of its nodes."""
    size = [functions.get((n.domain, n.op_type), 1) for n in split.nodes]
    if sum(size) <= PART_NODES:
        return [split]
    cuts, count = [0], 0
    for k, n in enumerate(size):
        if count + n > PART_NODES and count:
            cuts.append(k)
            count = 0
        count += n
    chunks = [split.nodes[a:b] for a, b in zip(cuts, [*cuts[1:], len(size)])]
    reads = [{i for n in c for i in n.input if i} for c in chunks]
    inputs, parts, earlier = set(split.inputs), [], set()
    for k, c in enumerate(chunks):
        produced = [o for n in c for o in n.output]
        later = set().union(*reads[k + 1 :])
        outputs = [o for o in produced if o in split.rest_reads or o in later]
        parts.append(_Split(c, outputs, sorted(reads[k] & inputs), split.rest_reads, sorted(reads[k] & earlier)))
        earlier.update(produced)
    return parts


def _reads(node) -> set[str]:
    """The names a node reads: its inputs, and what the nodes of its subgraphs (If, Loop, Scan bodies) read."""
    out = set(node.input)
    for a in node.attribute:
        for g in [a.g, *a.graphs]:
            out.update(name for n in g.node for name in _reads(n))
    return out


def _has_subgraph(node) -> bool:
    return any(a.g.ByteSize() or len(a.graphs) for a in node.attribute)


def _foldable(node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type not in _NOT_FOLDED and not _has_subgraph(node)


def _foldable_functions(m) -> dict[tuple[str, str], int]:
    """The model-local functions (a pack's task graph calls them for each weight) made of foldable nodes only: a call of
    one on constants is folded whole, ONNX Runtime inlining it in the fold run as it would in the session (nothing is
    inlined here: rewriting and splitting a MiniLM task graph's ~4,400 inlined nodes in Python took longer than ONNX
    Runtime's inlining)."""
    return {(f.domain, f.name): len(f.node) for f in m.functions if all(_foldable(n) for n in f.node)}


def _fold_graph(pb, m, split: _Split, carried: dict[str, np.ndarray]) -> bytes:
    """The constant nodes as a graph: large initializers its inputs (fed as they are, not copied), small ones inside it;
    what it reads of an earlier part's outputs (`carried`), inputs too."""
    by_name = {i.name: i for i in m.graph.initializer}
    large = split.large_inputs(m.graph)
    g = pb.GraphProto(name="fold", node=split.nodes, output=[pb.ValueInfoProto(name=o) for o in split.outputs])
    g.initializer.extend(by_name[n] for n in split.inputs if n not in set(large))
    typed = [(name, by_name[name].data_type, by_name[name].dims) for name in large]
    for name, elem_type, dims in typed + [(n, _onnx_type(carried[n].dtype), carried[n].shape) for n in split.carried]:
        vi = g.input.add(name=name)
        vi.type.tensor_type.elem_type = elem_type
        for d in dims:
            vi.type.tensor_type.shape.dim.add(dim_value=d)
    return pb.ModelProto(ir_version=m.ir_version, opset_import=m.opset_import, graph=g, functions=m.functions).SerializeToString()


def _run(fold_model: bytes, split: _Split, graph, source: _Source, threads: int | None, carried: dict) -> dict[str, np.ndarray]:
    """One run of the constant nodes (ONNX Runtime's CPU kernels, no graph optimization)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # the session's arena hands each freed intermediate's block to later ones (a pack's task graph without it: +25 MB of
    # heap fragments, 1.5x ORT int8's peak at load against 2x); it goes with the session, once the run is done
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(fold_model, so, providers=["CPUExecutionProvider"])
    io = sess.io_binding()
    by_name = {i.name: i for i in graph.initializer}
    for name in split.large_inputs(graph):
        value = source.given.get(name)
        io.bind_ortvalue_input(name, value if value is not None else ort.OrtValue.ortvalue_from_numpy(source.array(by_name[name])))
    for name in split.carried:
        io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.asarray(carried[name], order="C")))
    buffers = {}  # outputs written into arrays owned here where ONNX Runtime inferred their shapes, else copied
    for out in sess.get_outputs():
        if out.shape is not None and all(isinstance(d, int) for d in out.shape):
            buffers[out.name] = np.empty(out.shape, _ort_dtype(out.type))
            io.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy(buffers[out.name]))
        else:
            io.bind_output(out.name, "cpu")
    sess.run_with_iobinding(io)
    # (the rest copied out of the session's arena, which goes with the session)
    return {name: buffers[name] if name in buffers else value.numpy().copy() for name, value in zip(split.outputs, io.get_outputs())}


def _ort_dtype(ort_type: str) -> np.dtype:
    names = {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool"}
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return np.dtype(names.get(inner, inner))


def _rest(pb, m, split: _Split, values: dict, source: _Source, handed: dict) -> bytes:
    """The graph without the constant nodes: small folded tensors as initializers, large ones as placeholders whose values
    go into `handed`, as do the large tensors it reads from the file (given ones: the caller's)."""
    g = m.graph
    folded = {n.output[0] for n in split.nodes}  # (a node's outputs are its own: no other node writes them)
    for k in reversed(range(len(g.node))):  # in place: copying the graph's messages would copy its tensors
        if g.node[k].output and g.node[k].output[0] in folded:
            del g.node[k]
    called = {(n.domain, n.op_type) for n in g.node}
    for k in reversed(range(len(m.functions))):  # the functions only folded calls called
        if (m.functions[k].domain, m.functions[k].name) not in called:
            del m.functions[k]
    for k in reversed(range(len(g.initializer))):
        if g.initializer[k].name not in split.rest_reads:
            del g.initializer[k]
    for i in g.initializer:  # other tensors stored outside the graph (not the caller's): handed over too, copied out of
        if i.data_location == EXTERNAL and i.name not in source.given:  # the file's mapped bytes (unmapped once read)
            handed[i.name] = source.array(i).copy()
            i.CopyFrom(_placeholder(pb, i.name, handed[i.name]))
    for name, value in values.items():
        g.initializer.append(_tensor(pb, name, value) if name not in handed else _placeholder(pb, name, value))
    return m.SerializeToString()


def _placeholder(pb, name: str, value: np.ndarray):
    """An initializer whose values the session is handed (external data it never reads: the value replaces it)."""
    t = pb.TensorProto(name=name, data_type=_onnx_type(value.dtype), dims=value.shape)
    t.data_location = EXTERNAL
    t.external_data.add(key="location", value=HANDED_OVER)
    return t


def _tensor(pb, name: str, array: np.ndarray):
    array = np.asarray(array, order="C")  # (np.ascontiguousarray makes a scalar 1-D)
    return pb.TensorProto(name=name, data_type=_onnx_type(array.dtype), dims=array.shape, raw_data=array.tobytes())


def _array(init, base: Path) -> np.ndarray:
    """An initializer's values: a view of its raw bytes (no copy), or read from its external data file."""
    dtype = np.dtype(_DTYPES[init.data_type])
    if init.data_location != EXTERNAL:
        if not init.raw_data:  # typed fields (small tensors written by hand; float16 as its bits in int32_data)
            values = np.array(getattr(init, _FIELDS.get(init.data_type, "int32_data")))
            values = values.astype(np.uint16).view(np.float16) if dtype == np.float16 else values.astype(dtype)
            return values.reshape(tuple(init.dims))
        return np.frombuffer(init.raw_data, dtype).reshape(tuple(init.dims))
    ext = {e.key: e.value for e in init.external_data}
    offset, length = int(ext.get("offset", 0)), int(ext.get("length", _nbytes(init)))
    with open(base / ext["location"], "rb") as f:
        f.seek(offset)
        return np.frombuffer(f.read(length), dtype).reshape(tuple(init.dims))


def _nbytes(init) -> int:
    return int(np.prod(init.dims)) * np.dtype(_DTYPES.get(init.data_type, np.uint8)).itemsize


def _onnx_type(dtype) -> int:
    return {np.dtype(v): k for k, v in _DTYPES.items()}[np.dtype(dtype)]
