"""A pack's task graph: the backbone's tensors by reference, the task's own mask and head inline.

ONNX external data lets an initializer live in another file at (location, offset, length). Every
tensor that is the same in every task (the backbone's bit-packed codes, scales and zero points, the
embedding table, biases, LayerNorms, position embeddings) points into the backbone's
weights.safetensors, whose raw little-endian bytes after its JSON header are exactly what ONNX
reads. The task's graph holds only what differs per task: the mask of each linear, coded as the gaps
between its pruned weights (compress.maskcodec.RiceCode, within ~1% of the entropy; decoded in the graph by
CumSum and ScatterElements, see compress.exporters.functions) or bit-packed, whichever is smaller; the FFN neurons and the
attention heads' channels kept (gathered out of the backbone's codes, scales and biases); the head; the activation
smoothing factors. All of it is constant, so ONNX Runtime folds it at session load into the very
int8 weights of the standalone artifact: every task runs on the same kernels at the same speed. The one
exception is the word-embedding table (the same in every task, and MiniLM's largest tensor): the graph
gathers rows of its packed codes at run time and unpacks them through a 256-entry table, so that no session
holds an int8 copy of it and an app's task sessions can share the backbone file's bytes
(compress.runtimes.shared_weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from compress.exporters import functions
from compress.exporters.builder import Builder, Inline
from compress.exporters.weights import WeightMatchError
from compress.maskcodec import mask_encode
from compress.qweight import QWeight

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SharedFile:
    """The backbone's weights.safetensors, as a pack's task graphs see it."""

    location: str  # the file, relative to the task graphs' directory
    tensors: dict[str, np.ndarray]  # by name
    offsets: dict[str, tuple[int, int]]  # name -> (offset from the start of the file, length in bytes)
    qweights: dict[str, QWeight]  # the quantized tensors (linears and the word embeddings), unmasked

    @classmethod
    def of(cls, backbone, location: str) -> SharedFile:
        """From a compress.backbone.Backbone."""
        tensors = backbone.tensors()
        offsets = {
            k: (backbone.data_start + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0]) for k, v in backbone.header.items()
        }
        return cls(location, tensors, offsets, backbone.qweights(tensors))

    def source(self, masks: dict[str, np.ndarray], removed: dict) -> SharedSource:
        return SharedSource(self, masks, removed)


class SharedSource(Inline):
    """Codes and scales from the shared file, with the task's mask (and kept FFN neurons and attention heads) applied in the graph."""

    compact = True  # the repeated unpack / mask / re-round subgraphs as function calls (exporters.functions)

    def __init__(self, shared: SharedFile, masks: dict[str, np.ndarray], removed: dict):
        self.shared, self.masks = shared, masks
        # projection -> (axis of its kept units, compress.exporters.neurons.Removed): an FFN's neurons, an attention's head channels
        self.neurons: dict[str, tuple[int, object]] = {}
        for r in removed.values():
            self.neurons.update(dict.fromkeys(r.rows, (0, r)))
            self.neurons[r.second] = (1, r)
        self.mask_bytes = 0

    def _ref(self, bld: Builder, name: str) -> str:
        return bld.const(name, self.shared.tensors[name], name=name)

    def _kept(self, name: str, a: np.ndarray) -> np.ndarray:
        """a [rows, cols] with only the kept neurons' rows (first FFN projection) or columns (second)."""
        if name not in self.neurons:
            return a
        axis, r = self.neurons[name]
        return a[r.keep] if axis == 0 else a[:, r.keep]

    def _alive(self, name: str, shape) -> np.ndarray:
        """bool [rows, cols]: False in the rows/columns of padding neurons (dead, kept for a multiple of 16)."""
        if name not in self.neurons:
            return np.ones(shape, bool)
        axis, r = self.neurons[name]
        return np.broadcast_to(r.alive[:, None] if axis == 0 else r.alive[None, :], shape)

    def expected(self, name: str) -> np.ndarray:
        """The codes this source makes for `name`, computed here: what the graph must fold to."""
        codes = self._kept(name, self.shared.qweights[name].codes)
        mask = self._kept(name, self.masks.get(name, np.ones(self.shared.qweights[name].shape, bool)))
        return np.where(mask & self._alive(name, codes.shape), codes, 0)

    def _check(self, base: str, w: QWeight) -> QWeight:
        """-> the backbone's QWeight of `base`, whose codes under the task's mask must be the task's."""
        if base not in self.shared.qweights:
            raise WeightMatchError(f"{base}: the backbone has no quantized tensor of that name; pack artifacts trained on this backbone")
        if not np.array_equal(w.codes, self.expected(base)):
            raise WeightMatchError(
                f"{base}: the task's codes are not the backbone's codes under its mask: the artifact was not trained on this backbone"
            )
        return self.shared.qweights[base]

    def rows(self, bld: Builder, base: str, w: QWeight):
        """Rows of the word-embedding table gathered from the backbone's packed codes at run time, each byte turned into its
        8 / bits signed codes by a 256-entry lookup table (exact: the float codes the table unpacked at load would give), so
        that no session unpacks the table to int8 at load: the packed codes stay the backbone file's bytes, which
        compress.Pack hands to all its sessions as one shared buffer. Asymmetric, masked or kept-row tables: as at load."""
        full = self._check(base, w)
        bits, (n, cols) = full.storage_bits, full.shape
        if full.zero is not None or base in self.masks or base in self.neurons or cols * bits % 8:
            return self.table_rows(bld, base, w)
        name = f"{base}.weight.codes"
        packed = bld.const(name, self.shared.tensors[name].reshape(n, cols * bits // 8), name=name)  # the same bytes, 2-D
        return bld.packed_rows(base, packed, cols, bits)

    def codes_t(self, bld: Builder, base: str, w: QWeight, dtype: int = TensorProto.INT8) -> str:
        """codes() transposed and cast: the backbone's codes are stored as W, for every task."""
        return bld.cast(bld.node("Transpose", [self.codes(bld, base, w)], base, perm=[1, 0])[0], base, dtype)

    def codes(self, bld: Builder, base: str, w: QWeight) -> str:
        full = self._check(base, w)
        bits = full.storage_bits
        packed_name = f"{base}.weight.codes"
        packed, size = self._ref(bld, packed_name), self.shared.tensors[packed_name].size
        shape = bld.const(base, np.array(full.shape, np.int64))
        if full.zero is None and size * 8 == bits * full.codes.size:
            x = bld.call(functions.unpack(bits), [packed, shape], base)[0]
        else:  # asymmetric grids (zero points per group), or codes that do not fill their last byte: written out
            stored = packed if bits == 8 else bld.unpacked(base, packed, size, full.shape, bits)
            x = bld.node("Cast", [bld.node("Reshape", [stored, shape], base)[0]], base, to=TensorProto.INT16)[0]
            if full.zero is None:
                x = bld.node("Sub", [x, bld.const(base, np.array(2 ** (bits - 1), np.int16))], base)[0]
            else:
                zname = f"{base}.weight.zero"
                zero = bld.unpacked(
                    base, self._ref(bld, zname), self.shared.tensors[zname].size, (full.shape[0], full.groups, 1), full.bits
                )
                zero = bld.node("Cast", [zero], base, to=TensorProto.INT16)[0]
                x = bld.grouped(base, full, lambda g: bld.node("Sub", [g, zero], base)[0], x)
            x = bld.node("Cast", [x], base, to=TensorProto.INT8)[0]
        if base in self.neurons:
            axis, r = self.neurons[base]
            x = bld.node("Gather", [x, self._indices(bld, r)], base, axis=axis)[0]
        alive = self._alive(base, w.shape)
        mask = self._kept(base, self.masks[base]) | ~alive if base in self.masks else np.ones(w.shape, bool)
        conds = [] if mask.all() else [self._mask_graph(bld, base, mask)]
        if not alive.all():
            axis, r = self.neurons[base]
            alive_vec = bld.const(base, r.alive.astype(np.uint8), name=tensor_name(r.second, f"{r.unit}_alive"))
            vec = bld.node("Cast", [alive_vec], base, to=TensorProto.BOOL)[0]
            conds.append(bld.node("Unsqueeze", [vec, bld.const(base, np.array([1 - axis], np.int64))], base)[0])
        if not conds:
            return x
        cond = conds[0] if len(conds) == 1 else bld.node("And", conds, base)[0]
        return bld.node("Where", [cond, x, bld.const(base, np.array(0, np.int8))], base)[0]

    def scale16(self, bld: Builder, base: str, w: QWeight) -> str:
        """The backbone's float16 scales (of the kept rows, for a first FFN projection or a Q/K/V projection that lost heads)."""
        full = self.shared.qweights[base]
        axis, r = self.neurons.get(base, (None, None))
        if not np.array_equal(w.scale, full.scale[r.keep] if axis == 0 else full.scale):
            raise WeightMatchError(f"{base}: the task's scales are not the backbone's: the artifact was not trained on this backbone")
        s = self._ref(bld, f"{base}.weight.scale")
        return bld.node("Gather", [s, self._indices(bld, r)], base, axis=0)[0] if axis == 0 else s

    def scale(self, bld: Builder, base: str, w: QWeight, shape: tuple[int, ...]) -> str:
        s = bld.node("Cast", [self.scale16(bld, base, w)], base, to=TensorProto.FLOAT)[0]
        return bld.node("Reshape", [s, bld.const(base, np.array(shape, np.int64))], base)[0]

    @staticmethod
    def _indices(bld: Builder, r) -> str:
        """The kept indices of an FFN's neurons or an attention's head channels (one int16 tensor, int32 beyond 32768, for all
        its projections and biases), cast to int64 in the graph."""
        small = r.keep.astype(np.int16 if r.total <= 2**15 else np.int32)
        return bld.node("Cast", [bld.const(r.second, small, name=neurons_name(r))], r.second, to=TensorProto.INT64)[0]

    def _mask_graph(self, bld: Builder, base: str, mask: np.ndarray) -> str:
        """The mask as a bool graph tensor: Rice codes of the gaps between its rarer value's positions, or 1 bit per weight."""
        kind, code, rare = mask_encode(mask, rice=True)
        if kind == "bits":
            self.mask_bytes += code.size
            x = bld.unpacked(base, bld.const(base, code, name=tensor_name(base, "mask_bits")), code.size, mask.shape, 1)
            return bld.node("Cast", [x], base, to=TensorProto.BOOL)[0]
        data = code.to_bytes()
        self.mask_bytes += data.size
        inputs = [bld.const(base, data, name=tensor_name(base, f"mask_rice{int(rare)}")), bld.const(base, np.array(mask.shape, np.int64))]
        return bld.call(functions.mask_rice(rare), inputs, base)[0]


def tensor_name(layer: str, what: str) -> str:
    """The name of a task's own tensor of a layer (its coded mask, kept neurons): read back by `compress materialize`."""
    return f"{layer.removeprefix('encoder.encoder.')}.{what}"


def neurons_name(r) -> str:
    """neurons_kept (an FFN's second projection) or channels_kept (an attention output projection)."""
    return tensor_name(r.second, f"{r.unit}_kept")


def share_floats(model: onnx.ModelProto, shared: SharedFile, qkv_bias: dict[str, tuple[str, str, str]], removed: dict) -> None:
    """Point the graph's float tensors that the backbone holds into it: those of the same name and value
    (saved as references by `save`), fused Q/K/V biases (a Concat of the backbone's three), and the biases of
    projections that kept only some rows (an FFN's first, the Q/K/V of an attention that lost heads: a Gather of
    the backbone's, padding neurons zeroed). Raises if a value differs."""
    from compress.exporters.builder import toposort

    graph = model.graph
    bld = Builder(tag="b")
    bld.named = {i.name for i in graph.initializer}  # e.g. the kept-neuron indices, already there
    drop = set()
    kept_rows = {f"{p}.bias": r for r in removed.values() for p in r.rows}  # bias -> the Removed whose rows it keeps
    for init in graph.initializer:
        name = init.name
        if name in qkv_bias and all(f"{m}.bias" in shared.tensors for m in qkv_bias[name]):
            parts = [_bias(bld, shared, f"{m}.bias", kept_rows.get(f"{m}.bias")) for m in qkv_bias[name]]
            _same(name, numpy_helper.to_array(init), np.concatenate([v for _, v in parts]))
            bld.node("Concat", [x for x, _ in parts], name, outputs=[name], axis=0)
        elif name in kept_rows and name in shared.tensors:
            _same(name, numpy_helper.to_array(init), _bias(bld, shared, name, kept_rows[name], out=name)[1])
        else:
            continue
        drop.add(name)
    kept = [i for i in graph.initializer if i.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + bld.inits)
    nodes = toposort(list(graph.node) + bld.nodes, graph)
    del graph.node[:]
    graph.node.extend(nodes)


def _bias(bld: Builder, shared: SharedFile, key: str, r, out: str | None = None) -> tuple[str, np.ndarray]:
    """A bias from the backbone -> (graph tensor, its value): whole, or its rows r.keep (r: a neurons.Removed) with the
    padding's zeroed, computed into `out`. The backbone's tensor keeps its name (`name:backbone` when only rows are kept),
    for `save`."""
    full = shared.tensors[key]
    if r is None:
        return bld.const(key, full, name=key), full
    last, padded = ({"outputs": [out]} if out else {}), not r.alive.all()
    src, idx = bld.const(key, full, name=f"{key}:backbone"), SharedSource._indices(bld, r)
    x = bld.node("Gather", [src, idx], key, axis=0, **({} if padded else last))[0]
    if padded:
        x = bld.node("Mul", [x, bld.const(key, r.alive.astype(np.float32))], key, **last)[0]
    return x, np.where(r.alive, full[r.keep], 0).astype(np.float32)


def _same(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape or not np.array_equal(got, expected):
        raise WeightMatchError(f"{name}: the graph's tensor differs from the backbone's: the artifact was not trained on this backbone")


def save(model: onnx.ModelProto, path: Path, shared: SharedFile) -> int:
    """Write the task graph with every initializer that equals a shared-file tensor of its name (or
    `name:backbone`) pointing into the shared file; returns the bytes it references there."""
    referenced = 0
    for init in model.graph.initializer:
        key = init.name.removesuffix(":backbone")
        if key not in shared.tensors:
            continue
        arr, full = numpy_helper.to_array(init), shared.tensors[key]
        if arr.dtype != full.dtype or arr.size != full.size or not np.array_equal(arr.reshape(-1), full.reshape(-1)):
            continue  # a per-task tensor that happens to share a name (the graph may see the same bytes in another shape)
        offset, length = shared.offsets[key]
        init.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data"):
            init.ClearField(f)
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", shared.location), ("offset", str(offset)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = k, v
        referenced += length
    compute_constants(model.graph)
    shorten_names(model.graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return referenced


def compute_constants(graph: onnx.GraphProto, min_bytes: int = 256) -> None:
    """Write large constants that are a range or one repeated value (the exporter's position ids and token
    types, 4 kB each) as Range / ConstantOfShape nodes: a few bytes instead, folded again at load."""
    from onnx import helper

    out = []
    for node in graph.node:
        value = numpy_helper.to_array(node.attribute[0].t) if node.op_type == "Constant" and node.attribute[0].name == "value" else None
        if value is None or value.nbytes < min_bytes or value.dtype.kind not in "iu":
            out.append(node)
            continue
        y, shape = node.output[0], numpy_helper.from_array(np.array(value.shape, np.int64), f"{node.output[0]}:shape")
        flat = value.reshape(-1)
        if np.all(flat == flat[0]):
            out += [
                helper.make_node("Constant", [], [shape.name], value=shape),
                helper.make_node("ConstantOfShape", [shape.name], [y], value=numpy_helper.from_array(flat[:1])),
            ]
        elif np.array_equal(flat, np.arange(flat.size, dtype=flat.dtype)):
            scalars = [
                numpy_helper.from_array(np.array(v, value.dtype), f"{y}:{k}") for k, v in (("start", 0), ("limit", flat.size), ("delta", 1))
            ]
            out += [helper.make_node("Constant", [], [t.name], value=t) for t in (*scalars, shape)]
            out += [
                helper.make_node("Range", [t.name for t in scalars], [f"{y}:range"]),
                helper.make_node("Reshape", [f"{y}:range", shape.name], [y]),
            ]
        else:
            out.append(node)
    del graph.node[:]
    graph.node.extend(out)


def readable(name: str) -> bool:
    """Initializers that keep their names in a task graph: what `compress materialize` reads back (mask, kept
    neurons and head channels (tensor_name), head)."""
    return ".mask_" in name or ".neurons_" in name or ".channels_" in name or name.startswith(("classifier.", "encoder.pooler."))


def shorten_names(graph: onnx.GraphProto) -> None:
    """Name every other tensor by a short counter and drop node names and value_info: in a task graph of a few
    hundred nodes and tensors the exporter's descriptive names would weigh as much as a tenth of its mask. The
    graph's inputs and outputs keep their names, and so do the initializers `readable` names; a shared tensor is
    identified by its location and offset in the shared file."""
    keep = {i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer if readable(i.name)} | {""}
    short: dict[str, str] = {}

    def name(x: str) -> str:
        if x in keep:
            return x
        if x not in short:
            n, s = len(short), ""
            while True:
                n, r = divmod(n, 36)
                s = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + s
                if n == 0:
                    break
            short[x] = f"_{s}"
        return short[x]

    for init in graph.initializer:
        init.name = name(init.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [name(x) for x in node.input]
        node.output[:] = [name(x) for x in node.output]
    del graph.value_info[:]
