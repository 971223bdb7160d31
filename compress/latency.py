"""A latency model of the shipped graph on this machine: what removing layers, attention heads and FFN neurons buys in ONNX Runtime.

Removing structure pays unevenly: a head's share of the attention is not a head's share of the time (the layer
norms, the quantize ops and the graph's fixed cost do not shrink), and the kernels' speed per neuron bends with the
matrix sizes. So the model is measured, not assumed: the same model is built at its shapes, quantized alike
(round to nearest: the speed does not depend on the codes), and exported by the real exporter (the run's kernel and
activation scales) as graphs of one transformer layer with fewer heads, one layer with fewer FFN neurons, and one and
two whole layers; all are timed round-robin in one run at batch 1 x ``seq_len`` tokens. A layer's cost with h heads
and n neurons is the whole layer's minus what the heads saved minus what the neurons saved (each interpolated
between measured points); the rest of the graph (embeddings, pooling, head) is twice one layer's graph minus two
layers', and a graph of L layers costs that rest plus L layers. Measuring takes a minute or two; the result is cached
per machine, model shape, kernel and runtime version.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress import typed
from compress.configs import ExportConfig, MaskConfig, QuantConfig

log = logging.getLogger(__name__)
VERSION = 1  # of the cache's layout and of the measuring procedure
SEQ_LEN = 128  # the batch-1 shape `compress bench` and the manifest's latency use
FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # of the heads and of the FFN neurons measured (one head, 1/8 of the neurons added)


@dataclass(frozen=True)
class Shape:
    """What a graph's speed depends on, besides the machine."""

    model: str
    layers: int
    hidden: int
    heads: int
    neurons: int  # FFN intermediate size
    kernel: str
    activations: str
    bits: int
    seq_len: int = SEQ_LEN


@dataclass(frozen=True)
class LatencyModel:
    shape: Shape
    cpu: str
    onnxruntime: str
    heads: tuple[int, ...]  # head counts measured (ascending), every FFN neuron kept
    heads_ms: tuple[float, ...]  # one layer's graph with that many heads
    neurons: tuple[int, ...]  # FFN neuron counts measured (ascending), every head kept
    neurons_ms: tuple[float, ...]
    one_layer_ms: float  # one whole layer's graph
    two_layers_ms: float  # two whole layers' graph
    version: int = VERSION

    @property
    def layer_ms(self) -> float:
        return max(1e-6, self.two_layers_ms - self.one_layer_ms)

    @property
    def fixed_ms(self) -> float:
        return max(0.0, 2 * self.one_layer_ms - self.two_layers_ms)

    def layer(self, heads: int, neurons: int) -> float:
        """One layer's ms with `heads` heads and `neurons` FFN neurons."""
        saved_h = self.one_layer_ms - float(np.interp(heads, self.heads, self.heads_ms))
        saved_n = self.one_layer_ms - float(np.interp(neurons, self.neurons, self.neurons_ms))
        return max(1e-6, self.layer_ms - saved_h - saved_n)

    def predict(self, heads: int, neurons: int, layers: int | None = None) -> float:
        """The whole graph's batch-1 ms with `layers` layers (None: all) at `heads` heads and `neurons` neurons each."""
        return self.fixed_ms + (self.shape.layers if layers is None else layers) * self.layer(heads, neurons)

    @property
    def dense_ms(self) -> float:
        return self.predict(self.shape.heads, self.shape.neurons)

    def implausible(self) -> str | None:
        """Why these times cannot be the graphs' own (other work took the cores while they ran), or None."""
        if self.two_layers_ms > 2.3 * self.one_layer_ms:  # a second layer costs at most the first, and the rest stays
            return f"two layers took {self.two_layers_ms / self.one_layer_ms:.1f}x one layer's time"
        return None


def cpu_name() -> str:
    """The CPU's model name (speed is a property of the machine: never compare times from two)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    from compress.runtimes.fold_cache import cache_root

    return cache_root()


def _cache_file(shape: Shape, cpu: str, ort_version: str) -> Path:
    key = json.dumps([VERSION, dataclasses.asdict(shape), cpu, ort_version, os.cpu_count()], sort_keys=True)
    return cache_dir() / "latency" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cache_path(lm: LatencyModel) -> Path:
    return _cache_file(lm.shape, lm.cpu, lm.onnxruntime)


def model_for(shape: Shape, quant: QuantConfig, export: ExportConfig, num_labels: int, pooling: str | None, threads: int | None = None):
    """The cached latency model of `shape` on this machine, measured first if there is none."""
    import onnxruntime

    cpu, path = cpu_name(), _cache_file(shape, cpu_name(), onnxruntime.__version__)
    if path.is_file():
        try:
            return typed.load(LatencyModel, json.loads(path.read_text()))
        except (TypeError, ValueError, json.JSONDecodeError):
            log.warning("%s: unreadable latency model, measuring again", path)
    log.info("measuring ONNX Runtime's latency for %s on %s (cached in %s)", shape.model, cpu, path)
    for attempt in range(2):
        lm = measure(shape, quant, export, num_labels, pooling, threads)
        if (why := lm.implausible()) is None:
            break
        log.warning(
            "the latency measurement is implausible (%s): was the machine busy? %s", why, ("measuring again", "not cached")[attempt]
        )
    else:
        return lm  # used for this run only: a later run measures again
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(lm), indent=1))
    tmp.replace(path)
    return lm


def counts(total: int, step: int) -> list[int]:
    """The measured counts of a unit: FRACTIONS of `total` on multiples of `step`, and the smallest step."""
    out = {max(step, round(f * total / step) * step) for f in FRACTIONS} | {step}
    return sorted(c for c in out if c <= total)


def measure(shape: Shape, quant: QuantConfig, export: ExportConfig, num_labels: int, pooling: str | None, threads: int | None = None):
    """Export and time the graphs the model is read from (see the module's docstring)."""
    import onnxruntime

    from compress.runtimes.session import open_session

    heads = counts(shape.heads, 1)
    neurons = counts(shape.neurons, 16)
    points = [(1, h, shape.neurons) for h in heads] + [(1, shape.heads, n) for n in neurons] + [(2, shape.heads, shape.neurons)]
    points = list(dict.fromkeys(points))
    with tempfile.TemporaryDirectory() as tmp:
        built = _quantized(shape, quant, num_labels, pooling)
        paths = {p: _export(built, p, Path(tmp) / f"{i}.onnx", export) for i, p in enumerate(points)}
        ms = time_round_robin({p: open_session(path, threads=threads) for p, path in paths.items()}, shape.seq_len)
    return LatencyModel(
        shape,
        cpu_name(),
        onnxruntime.__version__,
        tuple(heads),
        tuple(ms[(1, h, shape.neurons)] for h in heads),
        tuple(neurons),
        tuple(ms[(1, shape.heads, n)] for n in neurons),
        ms[(1, shape.heads, shape.neurons)],
        ms[(2, shape.heads, shape.neurons)],
    )


class Prober:
    """Whole graphs at the model's full depth: the unpruned one, and one per (heads, neurons) asked; `speedup` times a candidate
    round-robin against the unpruned graph. A context manager: the graphs live in a temporary directory."""

    def __init__(self, shape: Shape, quant: QuantConfig, export: ExportConfig, num_labels: int, pooling: str | None, threads: int | None):
        self.shape, self.export, self.threads = shape, export, threads
        self.built = _quantized(shape, quant, num_labels, pooling)

    def __enter__(self) -> Prober:
        from compress.runtimes.session import open_session

        self._tmp = tempfile.TemporaryDirectory()
        s = self.shape
        self.dense = open_session(
            _export(self.built, (s.layers, s.heads, s.neurons), Path(self._tmp.name) / "dense.onnx", self.export), threads=self.threads
        )
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def speedup(self, heads: int, neurons: int, layers: int | None = None) -> float:
        """The unpruned graph's batch-1 latency / that of the graph with `layers` layers (None: all) at those counts."""
        point = (self.shape.layers if layers is None else layers, heads, neurons)
        path = _export(self.built, point, Path(self._tmp.name) / "{}-{}-{}.onnx".format(*point), self.export)
        dense_ms, pruned_ms = self.against_dense(path)
        return dense_ms / pruned_ms

    def against_dense(self, graph: Path) -> tuple[float, float]:
        """(the unpruned graph's batch-1 median ms, `graph`'s), timed round-robin."""
        from compress.runtimes.session import open_session

        ms = time_round_robin({"dense": self.dense, "pruned": open_session(graph, threads=self.threads)}, self.shape.seq_len)
        return ms["dense"], ms["pruned"]


def _quantized(shape: Shape, quant: QuantConfig, num_labels: int, pooling: str | None):
    """The model at its shapes, masked, quantized by rounding to nearest: (model, quantized tensors)."""
    from compress import backbone, masking, models

    model, _, _ = models.build_classifier(shape.model, num_labels, pooling)
    qweights = backbone.quantize_(model, dataclasses.replace(quant, method="rtn"), None)
    masking.apply_masks_(model, MaskConfig())
    return model.eval(), qweights


def _export(built, point: tuple[int, int, int], path: Path, export: ExportConfig) -> Path:
    """A graph of the first `layers` layers with `heads` heads and `neurons` FFN neurons left in each."""
    from compress import build, calibration, masking
    from compress.exporters.export import export as export_graph
    from compress.runtimes import bench

    layers, heads, neurons = point
    model = copy.deepcopy(built[0])
    masking.drop_layers_(model, layers)
    masks = {}
    for name, m in masking.masked_layers(model).items():
        keep = np.ones(tuple(m.weight.shape), dtype=bool)
        if masking.attention_of(name):
            keep[:, heads * (keep.shape[1] // model.encoder.config.num_attention_heads) :] = False
        elif keep.shape[1] == model.encoder.config.intermediate_size != keep.shape[0]:
            keep[:, neurons:] = False
        masks[name] = keep
    masking.set_masks_(model, masks)
    linears, embedding = build.prepare(model, masking.present(model, built[1]))
    sample = bench.sample()
    calib = calibration.batches(bench.inputs(8, 64, seed=3))
    export_graph(model, linears, embedding, path, export, sample, calib)
    return path


def time_round_robin(sessions: dict, seq_len: int, rounds: int = 5) -> dict:
    """Batch-1 median ms of each session, timed round-robin (the machine's drifting load hits them all alike)."""
    from compress.runtimes import bench

    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, sess in sessions.items():
            times[k].append(bench.latency(sess, batch=1, seq_len=seq_len, warmup=3, runs=20, max_seconds=5).median_ms)
    return {k: statistics.median(v) for k, v in times.items()}
