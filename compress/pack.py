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
task back into a standalone artifact. compress.runtimes.pack.Pack reads a pack in an app.
"""
from __future__ import annotations

import gzip
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress import artifact, manifest as mf

log = logging.getLogger(__name__)
SHARED = "backbone.safetensors"
PARITY_ATOL = 1e-5  # a task's logits through the pack vs through its standalone artifact (same kernels)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class PackError(ValueError):
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
            raise PackError(f"{d / mf.FILE} records no backbone: its weights were quantized for {m.task.name} alone; "
                            "train it on a shared backbone (`compress quantize`, then `compress run --backbone DIR`)")
        if m.passed is False and not allow_failed_guard:
            raise PackError(f"{d} failed its accuracy guard ({m.validation.get('failure')}): re-export it "
                            f"(`compress export {d} --kernel float`), retrain it, or pass --allow-failed-guard to pack it as it is")
        if m.config.export.kernel == "nbits":
            raise PackError(f"{d}: kernel nbits reads its packed codes as they are, so it cannot share them: "
                            f"`compress export {d} --kernel int8` first")
    first, m0 = dirs[0], ms[0]
    for d, m in zip(dirs[1:], ms[1:]):
        if m.backbone.sha256 != m0.backbone.sha256:
            raise PackError(f"{d / mf.FILE}: backbone weights SHA-256 {m.backbone.sha256[:16]}... differs from {first / mf.FILE}'s "
                            f"{m0.backbone.sha256[:16]}...: pack artifacts trained on one backbone")
    seen: dict[str, Path] = {}
    for d, m in zip(dirs, ms):
        if m.task.name in seen:
            raise PackError(f"{seen[m.task.name]} and {d} are both {m.task.name}: a pack holds one artifact per task")
        seen[m.task.name] = d


def pack(cfg: PackConfig, command: str = "") -> tuple[Path, mf.PackManifest]:
    from compress import backbone as bb
    from compress.exporters.shared import SharedFile

    t0 = time.perf_counter()
    out = Path(cfg.out)
    artifact.check_target(out, cfg.overwrite)
    dirs = [Path(a) for a in cfg.artifacts]
    ms = [mf.read(d, mf.ArtifactManifest) for d in dirs]
    _check(dirs, ms, cfg.allow_failed_guard)
    ref = ms[0].backbone
    where = cfg.backbone or ref.path
    if not Path(where).is_dir():
        raise PackError(f"the backbone these artifacts were trained on ({ref.sha256[:12]}...) is not at {where}: pass --backbone DIR")
    backbone = bb.load(where, ref.sha256)
    with artifact.staging(out, cfg.overwrite) as tmp:
        shutil.copy2(backbone.weights_path, tmp / SHARED)
        for name in TOKENIZER_FILES:
            if (backbone.directory / name).is_file():
                shutil.copy2(backbone.directory / name, tmp / name)
        shared = SharedFile.of(backbone, SHARED)
        tasks: dict[str, mf.PackTask] = {}
        for d, m in zip(dirs, ms):
            tasks[m.task.name], model = _pack_task(d, m, backbone, shared, tmp)
        pm = mf.PackManifest(command=command, backbone=ref, shared=SHARED, tokenizer="tokenizer.json", tasks=tasks,
                             sizes=storage(tmp, tasks, _ort_int8_bytes(model, m)))
        mf.write(tmp, pm)
        if cfg.memory:  # measured on the pack as written (its manifest verifies), then recorded in it
            pm.memory = resident_memory(tmp, list(tasks))
        (tmp / "report.md").write_text(render(pm, time.perf_counter() - t0))
        mf.write(tmp, pm)
    return out, pm


def _pack_task(d: Path, m: mf.ArtifactManifest, backbone, shared, out: Path):
    """Export one artifact's graph against the shared file into `out`; -> (its PackTask, its restored model)."""
    from compress import calibration, pipeline
    from compress.exporters.export import export
    from compress.runtimes.bench import sample

    run_cfg = pipeline.config_from_manifest(m, str(backbone.directory))
    model, _, qweights, calib = pipeline.restore(d, m, run_cfg)
    linears, embedding = pipeline.prepare(model, qweights)
    graph = out / f"{m.task.name}.onnx"
    res = export(model, linears, embedding, graph, run_cfg.export, sample(), calibration.batches(calib), shared=shared)
    own_graph = artifact.graph_path(d)
    parity = logits_parity(graph, own_graph, sample())
    if parity > PARITY_ATOL:
        raise PackError(f"{graph.name}: logits differ from {own_graph} by {parity:.3g} > {PARITY_ATOL}: "
                        "the artifact's graph was not made from its mask and head; re-export it (`compress export DIR`)")
    task_json = out / f"{m.task.name}.json.gz"
    task_json.write_bytes(gzip.compress(json.dumps({k: v for k, v in m.to_dict().items() if k != "files"}).encode(), mtime=0))
    masked = sum(r["shape"][0] * r["shape"][1] for r in m.layers if r.get("masked"))
    source_graph = m.files[own_graph.relative_to(d).as_posix()]
    own = graph.stat().st_size + task_json.stat().st_size
    log.info("packed %s: %d bytes (%.3f bits per masked weight), parity %.2g", m.task.name, own, 8 * own / max(masked, 1), parity)
    return mf.PackTask(
        name=m.task.name, onnx=graph.name, metric=m.task.metric, labels=m.task.labels, max_length=m.config.train.max_length,
        pad_token_id=m.model.pad_token_id, inputs=m.model.inputs, metrics=m.metrics.onnx, masked_weights=masked, bytes=own,
        bits_per_masked_weight=8 * own / max(masked, 1), parity_max_abs_diff=parity, guard_passed=m.passed,
        source={"artifact": str(d.resolve()), "manifest_sha256": mf.manifest_sha256(d), "model_onnx_sha256": source_graph.sha256,
                "model_onnx_bytes": source_graph.bytes, "mask_bytes": res.sizes.get("masks", 0)},
        ffn_neurons=res.ffn_neurons), model


def logits_parity(a: Path, b: Path, feeds: dict[str, np.ndarray]) -> float:
    from compress.runtimes.session import open_session, run_logits

    return float(np.max(np.abs(run_logits(open_session(a), feeds) - run_logits(open_session(b), feeds))))


def _ort_int8_bytes(model, m: mf.ArtifactManifest) -> int:
    """The size of ONNX Runtime's own int8 model of this encoder and head: what a user would otherwise ship per task."""
    import tempfile

    from compress.exporters.anchor import ort_int8

    with tempfile.TemporaryDirectory() as tmp:
        return ort_int8(model, m.model.num_heads, m.model.hidden_size, Path(tmp))[1].stat().st_size


def storage(directory: Path, tasks: dict[str, mf.PackTask], ort_int8: int) -> dict:
    """Bytes of the shared part and of each task, against N standalone artifacts and N ORT int8 models."""
    shared = sum((directory / f).stat().st_size for f in (SHARED, *TOKENIZER_FILES) if (directory / f).is_file())
    per_task = {t.name: t.bytes for t in tasks.values()}
    total = shared + sum(per_task.values())
    n = len(tasks)
    standalone = sum(t.source["model_onnx_bytes"] for t in tasks.values())
    tok = (directory / "tokenizer.json").stat().st_size
    return {"shared": shared, "tasks": per_task, "total": total, "standalone_model_onnx": standalone,
            "ort_int8_model": ort_int8, "ort_int8_total": n * ort_int8, "tokenizer_json": tok,
            "vs_standalone": total / (standalone + n * tok), "vs_ort_int8": total / (n * (ort_int8 + tok))}


MEMORY_SCRIPT = r"""
import sys
from compress.runtimes.pack import Pack
p = Pack(sys.argv[1])
for t in sys.argv[2:]:
    p.predict(t, ["a warm-up sentence ."])
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f)
print(int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024)
"""


def resident_memory(pack_dir: Path, task_names: list[str]) -> dict:
    """Resident memory (VmRSS) and its peak (VmHWM) of a fresh process that opens the first n task sessions of
    the pack through compress.Pack and runs each once, for n = 0 .. N: what each further session costs."""
    import subprocess
    import sys

    rss, peak = [], []
    for n in range(len(task_names) + 1):
        r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(pack_dir), *task_names[:n]], capture_output=True, text=True)
        if r.returncode != 0:
            log.warning("memory measurement failed: %s", (r.stderr.strip().splitlines() or [r.returncode])[-1])
            return {}
        a, b = map(int, r.stdout.split()[-2:])
        rss.append(a)
        peak.append(b)
    return {"sessions": list(range(len(rss))), "rss": rss, "peak": peak, "per_session": [int(x) for x in np.diff(rss)],
            "shared_in_memory": False}


def render(pm: mf.PackManifest, seconds: float = 0.0) -> str:
    s = pm.sizes
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    lines = [f"# Pack: {len(pm.tasks)} tasks on one backbone ({pm.backbone.model}, weights SHA-256 {pm.backbone.sha256[:12]}...)", "",
             f"Command: `{pm.command}`", "", "## Storage", "",
             f"- shared: {mb(s['shared'])} ({pm.shared}: codes, scales, embeddings, biases and LayerNorms; plus the tokenizer)",
             "", "| task | dev metric (artifact, ONNX Runtime) | own bytes | of which the mask | bits per masked weight | FFN neurons | "
             "parity vs artifact |", "|---|---|---|---|---|---|---|"]
    for t in pm.tasks.values():
        ffn = "all" if not t.ffn_neurons else "{} of {}".format(*map(sum, zip(*t.ffn_neurons.values())))
        failed = " (failed its accuracy guard)" if t.guard_passed is False else ""
        metric = f"{t.metrics[t.metric]:.4f}" if t.metric in t.metrics else "not measured"
        lines.append(f"| {t.name} | {t.metric} {metric}{failed} | {t.bytes / 1e3:.0f} kB | {t.source['mask_bytes'] / 1e3:.0f} kB | "
                     f"{t.bits_per_masked_weight:.3f} | {ffn} | {t.parity_max_abs_diff:.1e} |")
    n = len(pm.tasks)
    lines += ["", "A task's own bytes: its coded mask, head, activation-smoothing factors, graph and manifest (TASK.json.gz).",
              "", f"- total: {mb(s['total'])} for {n} tasks",
              f"- {n} standalone artifacts (model.onnx + tokenizer.json each): {mb(s['standalone_model_onnx'] + n * s['tokenizer_json'])}: "
              f"the pack is {s['vs_standalone']:.2f}x",
              f"- {n} ONNX Runtime int8 models (quantize_dynamic per channel, {mb(s['ort_int8_model'])} each, + tokenizer.json): "
              f"{mb(n * (s['ort_int8_model'] + s['tokenizer_json']))}: the pack is {s['vs_ort_int8']:.2f}x", ""]
    mem = pm.memory
    if mem:
        per = ", ".join(mb(x) for x in mem["per_session"])
        lines += ["## Memory", "", f"Resident memory of a process with 0 .. {n} task sessions open (each run once): "
                  + ", ".join(mb(x) for x in mem["rss"]) + f"; each further session: +{per}. Peak while loading: "
                  + ", ".join(mb(x) for x in mem["peak"]) + " (folding the codes into int8 weights passes through float "
                  "intermediates; the heap they used is returned to the system after each session is created).", "",
                  "Nothing is shared in memory between the sessions: ONNX Runtime unpacks each task's 4-bit codes, applies its mask and "
                  "folds them into int8 weights at session load, and each session keeps its own folded weights (the masks differ, so "
                  "the folded linears do too). The embedding table (the same in every task) is folded per session as well. Sharing it "
                  "would need the int8 table as one user-owned buffer handed to every session (ONNX Runtime's "
                  "`SessionOptions.add_initializer`), and sharing the linears a kernel that applies the mask at run time.", ""]
    if seconds:
        lines += [f"Packed in {seconds:.0f} s.", ""]
    return "\n".join(lines)


def materialize(pack_dir: str | Path, task: str, out: str | Path, overwrite: bool = False, command: str = "") -> tuple[Path, mf.ArtifactManifest]:
    """A standalone artifact of one task of a pack: the graph with the shared tensors written into it,
    the tokenizer, mask.npz and trainable.safetensors recovered from the graph, the task's manifest."""
    import onnx

    from compress import masking, report
    from compress.runtimes.bench import sample

    pack_dir, out = Path(pack_dir), Path(out)
    pm = mf.read(pack_dir, mf.PackManifest)
    if task not in pm.tasks:
        raise PackError(f"{pack_dir} has no task {task!r}: it holds {', '.join(pm.tasks)}")
    artifact.check_target(out, overwrite)
    t = pm.tasks[task]
    source = json.loads(gzip.decompress((pack_dir / f"{task}.json.gz").read_bytes()))
    m = mf.ArtifactManifest.from_dict(source)
    with artifact.staging(out, overwrite) as tmp:
        model = onnx.load(str(pack_dir / t.onnx), load_external_data=True)
        for init in model.graph.initializer:
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]
        graph = tmp / artifact.GRAPH
        graph.parent.mkdir()
        onnx.save(model, str(graph))
        for name in TOKENIZER_FILES:
            if (pack_dir / name).is_file():
                shutil.copy2(pack_dir / name, tmp / name)
        _hf_config(tmp, m)
        _recover(model, m, tmp)
        parity = logits_parity(graph, pack_dir / t.onnx, sample())
        m.materialized_from = {"pack": str(pack_dir.resolve()), "manifest_sha256": mf.manifest_sha256(pack_dir), "task": task}
        m.sizes = {**m.sizes, "onnx_total": graph.stat().st_size, "masks": (tmp / "mask.npz").stat().st_size}
        m.mask_sha256 = masking.mask_sha256(masking.load_masks(tmp / "mask.npz"))  # dropped FFN neurons' rows come back unpruned
        m.validation = {**m.validation, "pack_max_abs_diff": parity}
        m.command = command or m.command
        (tmp / "report.md").write_text(report.render(m))
        mf.write(tmp, m)
    return out, m


def _hf_config(out: Path, m: mf.ArtifactManifest) -> None:
    """config.json (compress.hf_layout) from the base model's config, where it can be read (the embedded model, a local
    directory, the hub when online); without it the artifact still serves compress and ONNX Runtime."""
    from transformers import AutoConfig

    from compress import hf_layout, models, tasks

    location = str(models.embedded_dir()) if m.model.name == models.EMBEDDED else m.model.location
    try:
        encoder_config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as e:
        log.warning("no config.json for Hugging Face loaders: cannot read the config of %s (%s)", location, e)
        return
    hf_layout.write(out, encoder_config, tasks.get_task(m.task.name), m.config.train.max_length)


def _recover(model, m: mf.ArtifactManifest, out: Path) -> None:
    """mask.npz and trainable.safetensors from a pack's task graph (its coded masks and head, by name).

    Dropped FFN neurons: their columns of the second projection are pruned, as in the original; their
    rows of the first projection are left unpruned (the original's are not in the pack; either way the
    neuron is dead and leaves the exported graph)."""
    from onnx import numpy_helper
    from safetensors.numpy import save_file

    from compress import masking
    from compress.exporters.neurons import pairs
    from compress.exporters.shared import tensor_name

    inits = {i.name: i for i in model.graph.initializer}
    arr = lambda n: numpy_helper.to_array(inits[n])  # noqa: E731
    shapes = {r["name"]: tuple(r["shape"]) for r in m.layers if r.get("masked")}
    role = {}  # FFN projection -> (axis of its neurons, the second projection, which names the kept neurons)
    for second in m.ffn_neurons:
        for first, sec in pairs(shapes, shapes[second][1]):
            if sec == second:
                role[first], role[second] = (0, second), (1, second)
    masks = {}
    for name, shape in shapes.items():
        axis, second = role.get(name, (None, None))
        kept = arr(tensor_name(second, "neurons_kept")).astype(np.int64) if axis is not None else None
        sub = shape if axis is None else (kept.size, shape[1]) if axis == 0 else (shape[0], kept.size)
        part = _mask(inits, name, int(np.prod(sub))).reshape(sub)
        if axis is None:
            masks[name] = part
        elif axis == 1:  # the second projection: the columns of dropped and padding neurons are pruned
            alive_name = tensor_name(second, "neurons_alive")
            alive = arr(alive_name).astype(bool) if alive_name in inits else np.ones(kept.size, bool)
            masks[name] = np.zeros(shape, bool)
            masks[name][:, kept] = part & alive[None, :]
        else:
            masks[name] = np.ones(shape, bool)
            masks[name][kept] = part
    masking.write_masks(out / "mask.npz", masks)
    head = {}
    for key in _head_names(m):
        if key not in inits:
            raise PackError(f"the pack's graph of {m.task.name} has no tensor {key}: it was not written by `compress pack`")
        head[key] = np.ascontiguousarray(arr(key))
    save_file(head, str(out / "trainable.safetensors"))


def _mask(inits: dict, name: str, size: int) -> np.ndarray:
    """A linear's flat mask from its coded initializers in a task graph (all kept if it has none)."""
    from onnx import numpy_helper

    from compress.exporters.shared import tensor_name
    from compress.qweight import RiceCode, mask_decode

    bits = tensor_name(name, "mask_bits")
    if bits in inits:
        return mask_decode("bits", numpy_helper.to_array(inits[bits]), False, size)
    for rare in (0, 1):
        if (rice := tensor_name(name, f"mask_rice{rare}")) in inits:
            return mask_decode("rice", RiceCode.from_bytes(numpy_helper.to_array(inits[rice])), bool(rare), size)
    return np.ones(size, bool)


def _head_names(m: mf.ArtifactManifest) -> list[str]:
    names = ["classifier.weight", "classifier.bias"]
    if m.model.pooling == "pooler":
        names += ["encoder.pooler.dense.weight", "encoder.pooler.dense.bias"]
    return names


def bench(pack_dir: str | Path, provider: str = "cpu", batch_sizes=(1, 32), seq_len: int = 128, threads: int | None = None,
          data_dir: str | None = None) -> dict:
    """Time every task of a pack (and with data_dir, its dev metric), reading only the pack."""
    from compress import metrics, tasks as glue
    from compress.runtimes import bench as rbench
    from compress.runtimes.pack import Pack
    from compress.runtimes.providers import require

    require(provider)
    p = Pack(pack_dir, threads=threads, provider=provider)
    out = {"kind": "bench", "pack": str(pack_dir), "model": p.manifest.backbone.model, "provider": provider, "tasks": {}}
    for name in p.tasks:
        r = {"latency": [rbench.latency(p.session(name), batch=b, seq_len=seq_len) for b in batch_sizes]}
        if data_dir is not None:
            task = glue.get_task(name)
            dev = glue.load_task(task, data_dir)["dev"]
            r["metrics"] = {"onnx": metrics.compute(task, p.logits(name, dev.text_a, dev.text_b), dev.labels)}
            r["dev_examples"] = len(dev)
        out["tasks"][name] = r
    return out
