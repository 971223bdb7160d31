"""Several tasks on one backbone: `compress pack` stores the backbone's weights once and per task a small graph.

    PACK/
      manifest.json          kind "pack": the backbone's hash, per task its graph, labels, metrics and bytes;
                             SHA-256 of every file, verified on every read
      backbone.safetensors   the backbone's weights.safetensors, byte for byte: every task graph's shared
                             tensors point into it (ONNX external data)
      tokenizer.json, ...    the backbone's tokenizer, once
      TASK.onnx              the task's graph: its coded mask, head, smoothing factors (and kept FFN neurons)
      TASK.json.gz           the task's artifact manifest as it was packed (for `materialize`), gzipped
      report.md              storage and memory

Each task's graph is exported again from its artifact (backbone + mask.npz + head) with the shared
tensors as references (compress.exporters.shared), and must give the artifact's own model.onnx
logits within 1e-5 through the same kernels, or the pack is not written. `materialize` turns one
task back into a standalone artifact (compress.materialize). compress.runtimes.pack_reader.Pack reads a pack in an app.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress import files, staging
from compress import manifest as mf
from compress.errors import CompressError

log = logging.getLogger(__name__)
PARITY_ATOL = 1e-5  # a task's logits through the pack vs through its standalone artifact (same kernels)


class PackError(CompressError, ValueError):
    """Artifacts that cannot be packed together, or a pack that cannot be used as asked."""


@dataclass(frozen=True)
class PackConfig:
    artifacts: tuple[str, ...]
    out: str
    backbone: str | None = None  # where the backbone is now, if not where the artifacts' manifests say
    overwrite: bool = False
    memory: bool = True  # measure the resident memory of the task sessions open at once (a subprocess)
    allow_failed_guard: bool = False  # pack artifacts whose int8 graph drifted from PyTorch beyond their guard (flagged)


def _check(dirs: list[Path], ms: list[mf.ArtifactManifest], allow_failed_guard: bool = False) -> None:
    """Refuse artifacts that do not share one backbone, repeat a task, use a kernel a pack cannot share, or
    (unless allowed) failed their accuracy guard."""
    if not dirs:
        raise PackError("give at least one artifact to pack")
    for d, m in zip(dirs, ms):
        if m.backbone is None:
            raise PackError(
                f"{d / mf.FILE} records no backbone: its weights were quantized for {m.task.name} alone; "
                "train it on a shared backbone (`compress quantize`, then `compress run --backbone DIR`)"
            )
        if m.passed is False and not allow_failed_guard:
            raise PackError(
                f"{d} failed its accuracy guard ({m.validation.failure}): re-export it "
                f"(`compress export {d} --kernel float`), retrain it, or pass --allow-failed-guard to pack it as it is"
            )
        if m.config.export.kernel == "nbits":
            raise PackError(
                f"{d}: kernel nbits reads its packed codes as they are, so it cannot share them: `compress export {d} --kernel int8` first"
            )
    first, m0 = dirs[0], ms[0]
    for d, m in zip(dirs[1:], ms[1:]):
        if m.backbone.sha256 != m0.backbone.sha256:
            raise PackError(
                f"{d / mf.FILE}: backbone weights SHA-256 {m.backbone.sha256[:16]}... differs from {first / mf.FILE}'s "
                f"{m0.backbone.sha256[:16]}...: pack artifacts trained on one backbone"
            )
    seen: dict[str, Path] = {}
    for d, m in zip(dirs, ms):
        if m.task.name in seen:
            raise PackError(f"{seen[m.task.name]} and {d} are both {m.task.name}: a pack holds one artifact per task")
        seen[m.task.name] = d


def pack(cfg: PackConfig, command: str = "") -> tuple[Path, mf.PackManifest]:
    from compress import backbone as bb

    t0 = time.perf_counter()
    out = Path(cfg.out)
    staging.check_target(out, cfg.overwrite)
    dirs = [Path(a) for a in cfg.artifacts]
    ms = [mf.read(d, mf.ArtifactManifest) for d in dirs]
    _check(dirs, ms, cfg.allow_failed_guard)
    ref = ms[0].backbone
    where = cfg.backbone or ref.path
    if not Path(where).is_dir():
        raise PackError(f"the backbone these artifacts were trained on ({ref.sha256[:12]}...) is not at {where}: pass --backbone DIR")
    backbone = bb.load(where, ref.sha256)
    with staging.staging(out, cfg.overwrite) as tmp:
        pm = _write(tmp, dirs, ms, backbone, command)
        if cfg.memory:  # measured on the pack as written (its manifest verifies), then recorded in it
            pm = dataclasses.replace(pm, memory=resident_memory(tmp, list(pm.tasks)))
        (tmp / files.REPORT).write_text(render(pm, time.perf_counter() - t0))
        pm = mf.write(tmp, pm)
    return out, pm


def _write(tmp: Path, dirs: list[Path], ms: list[mf.ArtifactManifest], backbone, command: str) -> mf.PackManifest:
    """The shared file, the tokenizer and every task's graph into `tmp`; its manifest written."""
    from compress.exporters.shared import SharedFile

    shutil.copy2(backbone.weights_path, tmp / files.PACK_SHARED)
    for name in files.TOKENIZER_FILES:
        if (backbone.directory / name).is_file():
            shutil.copy2(backbone.directory / name, tmp / name)
    shared = SharedFile.of(backbone, files.PACK_SHARED)
    tasks: dict[str, mf.PackTask] = {}
    for d, m in zip(dirs, ms):
        tasks[m.task.name], model = _pack_task(d, m, backbone, shared, tmp)
    pm = mf.PackManifest(
        command=command,
        backbone=ms[0].backbone,
        shared=files.PACK_SHARED,
        tokenizer=files.TOKENIZER,
        tasks=tasks,
        sizes=storage(tmp, tasks, _ort_int8_bytes(model, m)),
    )
    return mf.write(tmp, pm)


def _pack_task(d: Path, m: mf.ArtifactManifest, backbone, shared, out: Path):
    """Export one artifact's graph against the shared file into `out`; -> (its PackTask, its restored model)."""
    from compress import build, calibration, restore
    from compress.exporters.export import export
    from compress.runtimes.bench import sample
    from compress.runtimes.shared_weights import placements

    run_cfg = restore.config_from_manifest(m, str(backbone.directory))
    r = restore.restore(d, m, run_cfg)
    linears, embedding = build.prepare(r.model, r.qweights)
    graph = out / files.task_graph(m.task.name)
    res = export(r.model, linears, embedding, graph, run_cfg.export, sample(), calibration.batches(r.calibration), shared=shared)
    own_graph = files.graph_path(d)
    parity = logits_parity(graph, own_graph, sample())
    if parity > PARITY_ATOL:
        raise PackError(
            f"{graph.name}: logits differ from {own_graph} by {parity:.3g} > {PARITY_ATOL}: "
            "the artifact's graph was not made from its mask and head; re-export it (`compress export DIR`)"
        )
    task_json = out / files.task_manifest(m.task.name)
    task_json.write_bytes(gzip.compress(json.dumps({k: v for k, v in m.to_dict().items() if k != "files"}).encode(), mtime=0))
    masked = m.masked_weights
    source_graph = m.files[own_graph.relative_to(d).as_posix()]
    own = graph.stat().st_size + task_json.stat().st_size
    log.info("packed %s: %d bytes (%.3f bits per masked weight), parity %.2g", m.task.name, own, 8 * own / max(masked, 1), parity)
    return mf.PackTask(
        name=m.task.name,
        onnx=graph.name,
        metric=m.task.metric,
        labels=m.task.labels,
        max_length=m.config.train.max_length,
        pad_token_id=m.model.pad_token_id,
        inputs=m.model.inputs,
        metrics=m.metrics.onnx,
        masked_weights=masked,
        bytes=own,
        bits_per_masked_weight=8 * own / max(masked, 1),
        parity_max_abs_diff=parity,
        guard_passed=m.passed,
        source=mf.PackSource(str(d.resolve()), mf.manifest_sha256(d), source_graph.sha256, source_graph.bytes, res.sizes.masks),
        ffn_neurons=res.ffn_neurons,
        attention_heads=res.attention_heads,
        shared_tensors=placements(graph, files.PACK_SHARED),
    ), r.model


def logits_parity(a: Path, b: Path, feeds: dict[str, np.ndarray]) -> float:
    from compress.runtimes.session import open_session, run_logits

    return float(np.max(np.abs(run_logits(open_session(a), feeds) - run_logits(open_session(b), feeds))))


def _ort_int8_bytes(model, m: mf.ArtifactManifest) -> int:
    """The size of ONNX Runtime's own int8 model of this encoder and head: what a user would otherwise ship per task."""
    import tempfile

    from compress.exporters.anchor import ort_int8

    with tempfile.TemporaryDirectory() as tmp:
        return ort_int8(model, m.model.num_heads, m.model.hidden_size, Path(tmp))[1].stat().st_size


def storage(directory: Path, tasks: dict[str, mf.PackTask], ort_int8: int) -> mf.PackSizes:
    """Bytes of the shared part and of each task, against N standalone artifacts and N ORT int8 models."""
    shared = sum((directory / f).stat().st_size for f in (files.PACK_SHARED, *files.TOKENIZER_FILES) if (directory / f).is_file())
    per_task = {t.name: t.bytes for t in tasks.values()}
    total = shared + sum(per_task.values())
    n = len(tasks)
    standalone = sum(t.source.model_onnx_bytes for t in tasks.values())
    tok = (directory / files.TOKENIZER).stat().st_size
    return mf.PackSizes(
        shared=shared,
        tasks=per_task,
        total=total,
        standalone_model_onnx=standalone,
        ort_int8_model=ort_int8,
        ort_int8_total=n * ort_int8,
        tokenizer_json=tok,
        vs_standalone=total / (standalone + n * tok),
        vs_ort_int8=total / (n * (ort_int8 + tok)),
    )


MEMORY_SCRIPT = r"""
import sys
from compress.runtimes.pack_reader import Pack
p = Pack(sys.argv[1], share_backbone=sys.argv[2] == "1")
texts = ["a long sentence of many words , " * 40] * 32  # one batch of 32 at the task's max length: the arena an app needs
for t in sys.argv[3:]:
    p.predict(t, texts)
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f)
print(int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024)
"""


def resident_memory(pack_dir: Path, task_names: list[str], share: bool = True) -> mf.PackMemory | None:
    """Resident memory (VmRSS) and its peak (VmHWM) of a fresh process that opens the first n task sessions of the pack
    through compress.Pack (share: its default, one backbone map and one arena for all sessions) and runs each on one batch
    of 32 texts at the task's max length, for n = 0 .. N: what each further task costs an app."""
    import subprocess
    import sys

    rss, peak = [], []
    for n in range(len(task_names) + 1):
        cmd = [sys.executable, "-c", MEMORY_SCRIPT, str(pack_dir), "1" if share else "0", *task_names[:n]]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            log.warning("memory measurement failed: %s", (r.stderr.strip().splitlines() or [r.returncode])[-1])
            return None
        a, b = map(int, r.stdout.split()[-2:])
        rss.append(a)
        peak.append(b)
    return mf.PackMemory(list(range(len(rss))), rss, [int(x) for x in np.diff(rss)], peak, shared_in_memory=share)


def render(pm: mf.PackManifest, seconds: float = 0.0) -> str:
    s = pm.sizes
    mb = lambda n: f"{n / 1e6:.2f} MB"
    lines = [
        f"# Pack: {len(pm.tasks)} tasks on one backbone ({pm.backbone.model}, weights SHA-256 {pm.backbone.sha256[:12]}...)",
        "",
        f"Command: `{pm.command}`",
        "",
        "## Storage",
        "",
        f"- shared: {mb(s.shared)} ({pm.shared}: codes, scales, embeddings, biases and LayerNorms; plus the tokenizer)",
        "",
        "| task | dev metric (artifact, ONNX Runtime) | own bytes | of which the mask | bits per masked weight | FFN neurons | "
        "attention heads | parity vs artifact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kept = lambda d: "all" if not d else "{} of {}".format(*map(sum, zip(*d.values())))
    for t in pm.tasks.values():
        failed = " (failed its accuracy guard)" if t.guard_passed is False else ""
        metric = f"{t.metrics[t.metric]:.4f}" if t.metric in t.metrics else "not measured"
        lines.append(
            f"| {t.name} | {t.metric} {metric}{failed} | {t.bytes / 1e3:.0f} kB | {t.source.mask_bytes / 1e3:.0f} kB | "
            f"{t.bits_per_masked_weight:.3f} | {kept(t.ffn_neurons)} | {kept(t.attention_heads)} | {t.parity_max_abs_diff:.1e} |"
        )
    n = len(pm.tasks)
    lines += [
        "",
        "A task's own bytes: its coded mask, head, activation-smoothing factors, graph and manifest (TASK.json.gz).",
        "",
        f"- total: {mb(s.total)} for {n} tasks",
        f"- {n} standalone artifacts (model.onnx + tokenizer.json each): {mb(s.standalone_model_onnx + n * s.tokenizer_json)}: "
        f"the pack is {s.vs_standalone:.2f}x",
        f"- {n} ONNX Runtime int8 models (quantize_dynamic per channel, {mb(s.ort_int8_model)} each, + tokenizer.json): "
        f"{mb(n * (s.ort_int8_model + s.tokenizer_json))}: the pack is {s.vs_ort_int8:.2f}x",
        "",
    ]
    mem = pm.memory
    if mem:
        per = ", ".join(mb(x) for x in mem.per_session)
        lines += [
            "## Memory",
            "",
            f"Resident memory of a process with 0 .. {n} task sessions open (each run once, on a batch of 32 texts of its max "
            "length): "
            + ", ".join(mb(x) for x in mem.rss)
            + f"; each further session: +{per}. Peak while loading: "
            + ", ".join(mb(x) for x in mem.peak)
            + " (folding the codes into int8 weights passes through float "
            "intermediates; the heap they used is returned to the system after each session is created).",
            "",
            "Shared in memory between the sessions (compress.Pack's default): the backbone file, mapped once (each session's "
            "word-embedding rows are gathered from its packed codes at run time), and one memory arena. Each session's own: "
            "the int8 linears ONNX Runtime folds at load from the codes and the task's mask (the masks differ)."
            if mem.shared_in_memory
            else "Nothing is shared in memory between the sessions (measured with compress.Pack(share_backbone=False)).",
            "",
        ]
    if seconds:
        lines += [f"Packed in {seconds:.0f} s.", ""]
    return "\n".join(lines)
