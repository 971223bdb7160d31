"""`compress bench`: time an artifact's graph, or every task of a pack, in ONNX Runtime (and with a data directory, measure
the dev metric), reading only that directory. The report is what `--json` writes and `compress check` reads."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from compress import files, metrics, tasks
from compress import manifest as mf
from compress.errors import ArtifactError, ConfigError

GRAPHS = ("onnx", "ort")  # onnx/model.onnx, or onnx/model.ort (the mobile graph of `compress export DIR --format ort`)


@dataclass(frozen=True)
class TaskBench:
    latency: list[mf.Latency]
    metrics: dict[str, dict[str, float]] | None = None  # {"onnx": {metric: value}} with a data directory
    dev_examples: int | None = None


@dataclass(frozen=True)
class ArtifactBench(TaskBench):
    artifact: str = ""
    graph: str = ""  # relative to the artifact
    model: str = ""
    task: str = ""
    provider: str = "cpu"
    load_s: float = 0.0  # session creation
    vs_cpu: mf.Validation | None = None  # another provider: its dev metric against ONNX Runtime CPU's, by the accuracy guard's rule

    def to_dict(self) -> dict:
        order = ("artifact", "graph", "model", "task", "provider", "load_s", "latency", "metrics", "dev_examples", "vs_cpu")
        d = dataclasses.asdict(self)
        return {"kind": "bench", **{k: d[k] for k in order if d[k] is not None}}


@dataclass(frozen=True)
class PackBench:
    pack: str
    model: str
    provider: str
    tasks: dict[str, TaskBench]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tasks"] = {k: {f: v for f, v in t.items() if v is not None} for k, t in d["tasks"].items()}
        return {"kind": "bench", **d}


def _dev_metrics(task_name: str, data_dir: str, logits_of, reference_of=None, max_drop: float = 0.01):
    """-> ({"onnx": dev metrics}, dev examples, the guard's verdict against `reference_of`'s logits (None: no reference))."""
    from compress import guard

    task = tasks.get_task(task_name)
    dev = tasks.load_task(task, data_dir)["dev"]
    logits = logits_of(dev)
    verdict = None
    if reference_of is not None:
        d = guard.drop(task, reference_of(dev), logits, dev.labels)
        verdict = mf.Validation(
            passed=not d.exceeds(max_drop), metric_drop=d.observed, metric_drop_low=d.low, dev_examples=d.examples, max_metric_drop=max_drop
        )
    return {"onnx": metrics.compute(task, logits, dev.labels)}, len(dev), verdict


def bench_artifact(
    directory: Path,
    provider: str = "cpu",
    batch_sizes=(1, 32),
    seq_len: int = 128,
    threads: int | None = None,
    data_dir: str | None = None,
    graph: str = "onnx",
) -> ArtifactBench:
    """Time an artifact's graph (and with data_dir, its dev metric) reading only the directory."""
    from compress.runtimes import bench as rbench
    from compress.runtimes import evaluate
    from compress.runtimes.providers import require
    from compress.runtimes.session import open_session

    directory = Path(directory)
    m = mf.read(directory, mf.ArtifactManifest)
    if graph not in GRAPHS:
        raise ConfigError(f"graph '{graph}' is not one of {', '.join(GRAPHS)}")
    path = files.graph_path(directory) if graph == "onnx" else directory / files.MOBILE_GRAPH
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {files.MOBILE_GRAPH}: write it with compress export {directory} --format ort")
    t0 = time.perf_counter()
    sparse, qdq = tuple(m.config.mask.nm or ()) == (2, 4), m.config.export.kernel == "qdq"
    fold_first = graph == "onnx" and m.config.export.folds_at_load  # packed weights folded before ONNX Runtime loads the rest
    sess = open_session(path, require(provider), threads=threads, sparse=sparse, qdq=qdq, fold_first=fold_first)
    load_s = time.perf_counter() - t0
    latency = [rbench.latency(sess, batch=b, seq_len=seq_len) for b in batch_sizes]
    scored, n, vs_cpu = None, None, None
    if data_dir is not None:

        def logits(session):
            tok, length, pad = directory / files.TOKENIZER, m.config.train.max_length, m.model.pad_token_id
            return lambda dev: evaluate.texts_logits(session, tok, length, dev.text_a, dev.text_b, pad)

        cpu = logits(open_session(path, "cpu", threads=threads, fold_first=fold_first)) if provider != "cpu" else None
        scored, n, vs_cpu = _dev_metrics(m.task.name, data_dir, logits(sess), cpu, m.config.export.max_metric_drop)
    return ArtifactBench(
        latency=latency,
        metrics=scored,
        dev_examples=n,
        artifact=str(directory),
        graph=str(path.relative_to(directory)),
        model=m.model.name,
        task=m.task.name,
        provider=provider,
        load_s=load_s,
        vs_cpu=vs_cpu,
    )


def bench_pack(
    pack_dir: str | Path,
    provider: str = "cpu",
    batch_sizes=(1, 32),
    seq_len: int = 128,
    threads: int | None = None,
    data_dir: str | None = None,
) -> PackBench:
    """Time every task of a pack (and with data_dir, its dev metric), reading only the pack."""
    from compress.runtimes import bench as rbench
    from compress.runtimes.pack_reader import Pack
    from compress.runtimes.providers import require

    require(provider)
    p = Pack(pack_dir, threads=threads, provider=provider)
    out = {}
    for name in p.tasks:
        latency = [rbench.latency(p.session(name), batch=b, seq_len=seq_len) for b in batch_sizes]
        scored, n = None, None
        if data_dir is not None:
            scored, n, _ = _dev_metrics(name, data_dir, lambda dev: p.logits(name, dev.text_a, dev.text_b))  # noqa: B023 - called at once
        out[name] = TaskBench(latency, scored, n)
    return PackBench(str(pack_dir), p.manifest.backbone.model, provider, out)
