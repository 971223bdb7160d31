"""run(RunConfig): load -> quantize (or take a backbone's codes) -> learn mask -> export -> validate -> write the artifact directory."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from compress import artifact, backbone, calibration, checkpoint, distributed, hf_layout, manifest as mf, masking, metrics, models, quantize, report, resources, tasks, train
from compress.errors import ConfigError
from compress.exporters.export import ExportConfig, export
from compress.exporters.verify import AccuracyDriftError
from compress.qweight import QWeight
from compress.runtimes.evaluate import batches
from compress.runtimes.session import release_freed_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    model: str = models.EMBEDDED
    task: str = "mrpc"
    out: str = "runs/minilm-mrpc"
    data_dir: str | None = None
    overwrite: bool = False
    pooling: str | None = None  # None: what the checkpoint says (mean for sentence-transformers, else pooler)
    quant: quantize.QuantConfig = field(default_factory=quantize.QuantConfig)
    mask: masking.MaskConfig = field(default_factory=masking.MaskConfig)
    train: train.TrainConfig = field(default_factory=train.TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: bool = True
    threads: int | None = None
    init_from: str | None = None  # mode=weights: take the fine-tuned weights of this artifact, no training (PTQ at other bits)
    backbone: str | None = None  # a `compress quantize` directory: learn the mask on its codes (no quantization here)
    checkpoint: checkpoint.CheckpointConfig = field(default_factory=checkpoint.CheckpointConfig)  # training state beside --out


def settings(cfg: RunConfig, embedding: bool) -> mf.RunSettings:
    """What the artifact's manifest records as its configs."""
    return mf.RunSettings(cfg.quant, cfg.mask, cfg.train, cfg.export, quantize.embedding_bits(cfg.quant) if embedding else None)


def checkpoint_settings(cfg: RunConfig, ref: mf.BackboneRef | None, train_split: tasks.Split) -> dict:
    """What a checkpoint must share with the run that continues it: everything that shapes training, the data itself and the
    number of torchrun processes (not where outputs go, export options, threads or benchmarking)."""
    import hashlib

    d = dataclasses.asdict(cfg)
    for k in ("out", "overwrite", "bench", "threads", "export", "checkpoint", "data_dir", "backbone"):
        d.pop(k)
    h = hashlib.sha256()
    for row in zip(train_split.text_a, train_split.text_b or [""] * len(train_split), train_split.labels):
        h.update(repr(row).encode())
    return d | {"backbone_sha256": ref.sha256 if ref else None, "train_data": {"examples": len(train_split), "sha256": h.hexdigest()},
                "processes": distributed.world()}  # torchrun processes share each batch: another count, another data order


def prepare(model: torch.nn.Module, qweights: dict[str, QWeight]) -> tuple[dict[str, QWeight], tuple[str, QWeight] | None]:
    """Split the quantized tensors into masked linears and the embedding table, masks folded in."""
    masks = {k: v.numpy() for k, v in masking.masks(model).items()}
    emb = quantize.word_embeddings(model)
    emb_name = emb[0] if emb else None
    linears = {n: qw.masked(masks.get(n)) for n, qw in qweights.items() if n != emb_name}
    embedding = (emb_name, qweights[emb_name]) if emb_name in qweights else None
    return linears, embedding


def resolve_backbone(cfg: RunConfig, expect_sha256: str | None = None) -> tuple[RunConfig, mf.BackboneRef | None]:
    """With cfg.backbone: the quantization and model are the backbone's; returns the config and the reference to record."""
    if not cfg.backbone:
        return cfg, None
    if cfg.train.mode != "structure" or cfg.init_from:
        raise backbone.BackboneError("--backbone learns a task mask on the shared quantized weights: use --mode structure, without --init-from")
    bb = backbone.load(cfg.backbone, expect_sha256)
    ref = mf.BackboneRef(bb.sha256, str(Path(cfg.backbone).resolve()), bb.manifest.model.name)
    return dataclasses.replace(cfg, quant=bb.manifest.quant, model=bb.manifest.model.name), ref


def build(cfg: RunConfig, task: tasks.Task, calib: tasks.Split | dict[str, np.ndarray] | None = None, token_types: bool | None = None):
    """Model with quantized frozen weights and (mode=structure) masks.

    calib: the task's calibration texts (a Split: its first cfg.quant.calibration_examples are
    tokenized) or tokens (arrays from an artifact): the export's activation smoothing, and GPTQ when
    cfg.quant.calibration is "task". With cfg.backbone the codes are the backbone's, not re-quantized.
    token_types: whether the model feeds token_type_ids to the encoder, as an artifact being rebuilt was made
    (None: whenever the encoder takes them).
    -> (model, tokenizer, source, qweights, task calibration tokens or None when nothing is quantized)
    """
    if cfg.backbone:
        clf, tok, source, qweights = backbone.load(cfg.backbone).classifier(task.num_labels, cfg.pooling, seed=cfg.train.seed)
    else:
        clf, tok, source = models.build_classifier(cfg.model, task.num_labels, cfg.pooling, seed=cfg.train.seed)
        qweights = {}
    if token_types is not None:
        clf.uses_token_types = token_types
    positions = getattr(clf.encoder.config, "max_position_embeddings", None)
    if positions is not None and cfg.train.max_length > positions:
        raise ConfigError(f"--max-length {cfg.train.max_length} exceeds the {positions} positions of {cfg.model}: use --max-length {positions} or less")
    if isinstance(calib, tasks.Split):
        calib = calibration.tokens(tok, calib, cfg.quant.calibration_examples, cfg.train.max_length) if cfg.quant.enabled else None
    if cfg.train.mode == "structure":
        if not cfg.backbone:  # the mask is learned on the weights that ship
            qweights = _quantize(clf, cfg, tok, calib)
        torch.manual_seed(cfg.train.seed)
        masking.apply_masks_(clf, cfg.mask)
    return clf, tok, source, qweights, calib


def _quantize(model, cfg: RunConfig, tok, task_tokens) -> dict[str, QWeight]:
    """Quantize in place as cfg.quant says; GPTQ calibrates on the task's tokens or on the general text."""
    calib = backbone.calibration_tokens(tok, cfg.quant, cfg.train.max_length, task_tokens)
    return backbone.quantize_(model, cfg.quant, calibration.batches(calib))


def layer_table(model, linears: dict[str, QWeight], embedding) -> list[dict]:
    """Per quantized/masked layer: shape, bits, group size, mask density."""
    dens = masking.densities(model)[0]
    rows = []
    for name in list(linears) or list(dens) or list(quantize.target_linears(model)):
        w = linears.get(name)
        shape = w.shape if w else model.get_submodule(name).weight.shape
        rows.append({"name": name, "shape": list(shape), "bits": w.bits if w else 32, "group_size": w.group_size if w else None,
                     "symmetric": w.zero is None if w else None, "masked": name in dens, "density": dens.get(name, 1.0)})
    if embedding:
        name, w = embedding
        rows.append({"name": name, "shape": list(w.shape), "bits": w.bits, "group_size": None, "symmetric": True,
                     "masked": False, "density": 1.0})
    return rows


def run(cfg: RunConfig, command: str = "", progress: bool = False) -> tuple[Path, mf.ArtifactManifest]:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    artifact.check_target(out, cfg.overwrite)  # fail before hours of training, not after
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = tasks.get_task(cfg.task)
    cfg, ref = resolve_backbone(cfg)
    with tqdm(total=5, desc="pipeline", disable=not progress, unit="stage", leave=False) as bar:
        stages = resources.StageMeter(lambda name: (name != "data" and bar.update(), bar.set_description(name)))
        try:
            return _run(cfg, ref, task, out, command, progress, stages, t_start)
        finally:
            stages.stop()


def _run(cfg: RunConfig, ref: mf.BackboneRef | None, task, out: Path, command: str, progress: bool, stages,
         t_start: float) -> tuple[Path, mf.ArtifactManifest]:
    stages.start("data")
    splits = tasks.load_task(task, cfg.data_dir)
    train_split = splits["train"].subset(cfg.train.max_train_examples)
    dev = splits["dev"].subset(cfg.train.max_eval_examples)
    stages.start("backbone + mask" if cfg.backbone else "quantize + mask")
    model, tok, source, qweights, calib = build(cfg, task, train_split)
    stages.start(f"train ({cfg.train.mode})")
    ckpt = None
    if cfg.init_from:
        history = _load_fine_tuned(Path(cfg.init_from), model, cfg)
    else:
        if cfg.checkpoint.enabled:
            ckpt = checkpoint.Checkpointer(checkpoint.work_dir(out), checkpoint_settings(cfg, ref, train_split), cfg.checkpoint)
        history = train.fit(model, task, train_split, dev, tok, cfg.train, progress=progress, checkpoint=ckpt)
        if not distributed.is_main():  # under torchrun, process 0 exports, validates and writes the artifact
            return out, None
    trained = trainable_tensors(model, cfg.train.mode)  # before post-training quantization: re-export quantizes again
    if cfg.train.mode == "weights":
        qweights = _quantize(model, cfg, tok, calib)  # post-training quantization
    linears, embedding = prepare(model, qweights)
    release_freed_memory()  # training's optimizer state and activations, before the export's graphs

    pad = tok.pad_token_id or 0
    dev_enc = train.encode(tok, dev, cfg.train.max_length)
    torch_logits = train.predict(model, dev_enc, pad, bf16=False)
    torch_metrics = metrics.compute(task, torch_logits, dev.labels)

    with artifact.staging(out, cfg.overwrite) as tmp:
        stages.start("export")
        tok.save_pretrained(tmp)
        hf_layout.write(tmp, model.encoder.config, task, cfg.train.max_length)
        mask_bytes = masking.save_masks(tmp / "mask.npz", model) if cfg.train.mode == "structure" else 0
        _save_tensors(trained, tmp / "trainable.safetensors")
        if calib is not None:
            np.savez_compressed(tmp / calibration.FILE, **calib)
        sample = next(iter(batches(dev_enc, 32, pad)))
        res = export(model, linears, embedding, tmp / artifact.GRAPH, cfg.export, sample, calibration.batches(calib))
        stages.start("validate")
        validation = validate(tmp, task, dev, torch_logits, torch_metrics, cfg, pad)
        timings = stages.stop()
        m = mf.ArtifactManifest(
            command=command,
            model=mf.model_info(model, source, tok, task.num_labels),
            task=mf.TaskInfo(task.name, task.metric, len(train_split), len(dev), splits["train"].source, list(task.labels)),
            config=settings(cfg, embedding is not None),
            backbone=ref,
            density=masking.densities(model)[1],
            mask_sha256=masking.model_mask_sha256(model) if cfg.train.mode == "structure" else None,
            layers=layer_table(model, linears, embedding),
            training=mf.Training(history.history, history.best_epoch, history.seconds, cfg.init_from, history.processes),
            metrics=mf.Metrics(validation["metrics"]["torch"], validation["metrics"]["onnx"],
                               metrics.majority_baseline(task, splits["train"].labels, dev.labels)),
            validation=validation["checks"] | {"parity_max_abs_diff": res.parity_max_abs_diff, "parity_atol": cfg.export.parity_atol,
                                               "sample_max_abs_diff": res.deployed_max_abs_diff},
            fusions=res.fusions,
            ffn_neurons=res.ffn_neurons,
            attention_heads=res.attention_heads,
            sizes={**res.sizes, "onnx_total": (tmp / artifact.GRAPH).stat().st_size, "masks": mask_bytes,
                   "head": (tmp / "trainable.safetensors").stat().st_size},
            bench=validation["bench"],
            seconds=time.perf_counter() - t_start,
            stages=timings,
        )
        (tmp / "report.md").write_text(report.render(m))
        mf.write(tmp, m)
    if ckpt is not None:  # the artifact is published: the training state is no longer needed
        ckpt.remove()
    if not m.passed:  # kept, so that hours of training are not lost; but it fails
        raise AccuracyDriftError(f"{m.validation['failure']}: the artifact is kept at {out} with validation.passed = false; "
                                 + (f"`compress export {out} --activations token` re-exports with per-token activation scales, " if
                                    cfg.export.kernel == "int8" and cfg.export.activations == "static" else "")
                                 + f"`compress export {out} --kernel float` ships the exact graph without retraining")
    return out, m


def _load_fine_tuned(source: Path, model, cfg: RunConfig) -> train.TrainResult:
    """Post-training quantization of an earlier dense fine-tuning: its weights, its training history."""
    from safetensors.torch import load_file

    m = mf.read(source, mf.ArtifactManifest)
    if cfg.train.mode != "weights" or m.config.train.mode != "weights":
        raise artifact.ArtifactError(f"--init-from {source}: both it and this run must be --mode weights (it is "
                                     f"{m.config.train.mode}, this run {cfg.train.mode})")
    if m.task.name != tasks.get_task(cfg.task).name:
        raise artifact.ArtifactError(f"--init-from {source} was trained on {m.task.name}, not {cfg.task}")
    try:
        model.load_state_dict(load_file(str(source / "trainable.safetensors")))
    except RuntimeError as e:
        raise artifact.ArtifactError(f"--init-from {source} holds another model's weights ({m.model.name}): "
                                     f"{str(e).splitlines()[0]}") from None
    return train.TrainResult(m.training.history, m.training.best_epoch, 0.0)


def trainable_tensors(model, mode: str) -> dict[str, torch.Tensor]:
    """What the task trained: the head in mode=structure, every weight in mode=weights."""
    tensors = model.state_dict() if mode == "weights" else model.head_parameters()
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def validate(directory: Path, task, dev, torch_logits, torch_metrics, cfg: RunConfig, pad_id: int) -> dict:
    """Dev metric through ONNX Runtime, agreement with PyTorch, latency; raise if the metric drifts."""
    from compress.runtimes import bench, evaluate
    from compress.runtimes.session import open_session

    sess = open_session(artifact.graph_path(directory), threads=cfg.threads)
    ort_logits = evaluate.texts_logits(sess, directory / "tokenizer.json", cfg.train.max_length, dev.text_a, dev.text_b, pad_id)
    ort_metrics = metrics.compute(task, ort_logits, dev.labels)
    p_t, p_o = metrics.predictions(task, torch_logits), metrics.predictions(task, ort_logits)
    agreement = float(np.mean(p_t == p_o)) if not task.is_regression else float(np.corrcoef(p_t, p_o)[0, 1])
    drop = torch_metrics[task.metric] - ort_metrics[task.metric]
    diff = float(np.max(np.abs(ort_logits.astype(np.float64) - torch_logits)))
    checks = {"agreement": agreement, "metric_drop": drop, "max_metric_drop": cfg.export.max_metric_drop, "dev_max_abs_diff": diff,
              "max_logit_diff": cfg.export.max_logit_diff}
    checks["passed"] = bool(drop <= cfg.export.max_metric_drop and diff <= cfg.export.max_logit_diff)
    if not drop <= cfg.export.max_metric_drop:
        checks["failure"] = (f"ONNX Runtime dev {task.metric} {ort_metrics[task.metric]:.4f} trails PyTorch's "
                             f"{torch_metrics[task.metric]:.4f} by {drop:.4f} > {cfg.export.max_metric_drop}")
    elif not diff <= cfg.export.max_logit_diff:
        checks["failure"] = f"ONNX Runtime's dev logits differ from PyTorch's by up to {diff:.3g} > max_logit_diff {cfg.export.max_logit_diff:g}"
    results = {}
    if cfg.bench:
        for b in (1, 32):
            results[f"batch{b}"] = bench.latency(sess, batch=b, seq_len=128, runs=50 if b == 1 else 10)
    return {"metrics": {"torch": torch_metrics, "onnx": ort_metrics}, "checks": checks, "bench": results}


def bench(directory: Path, provider: str = "cpu", batch_sizes=(1, 32), seq_len: int = 128, threads: int | None = None,
          data_dir: str | None = None, graph: str = "onnx") -> dict:
    """Time an artifact's graph (and with data_dir, its dev metric) reading only the directory.
    graph: "onnx" (onnx/model.onnx) or "ort" (onnx/model.ort, the mobile graph of `compress export DIR --format ort`)."""
    import time

    from compress.runtimes import bench as rbench, evaluate
    from compress.runtimes.providers import require
    from compress.runtimes.session import open_session

    directory = Path(directory)
    m = mf.read(directory, mf.ArtifactManifest)
    if graph not in ("onnx", "ort"):
        raise ConfigError(f"graph '{graph}' is not one of onnx, ort")
    path = artifact.graph_path(directory) if graph == "onnx" else directory / "onnx" / "model.ort"
    if not path.is_file():
        raise artifact.ArtifactError(f"{directory} has no onnx/model.ort: write it with compress export {directory} --format ort")
    t0 = time.perf_counter()
    sess = open_session(path, require(provider), threads=threads, sparse=tuple(m.config.mask.nm or ()) == (2, 4))
    out = {"kind": "bench", "artifact": str(directory), "graph": str(path.relative_to(directory)), "model": m.model.name,
           "task": m.task.name, "provider": provider, "load_s": time.perf_counter() - t0,
           "latency": [rbench.latency(sess, batch=b, seq_len=seq_len) for b in batch_sizes]}
    if data_dir is not None:
        task = tasks.get_task(m.task.name)
        dev = tasks.load_task(task, data_dir)["dev"]
        logits = evaluate.texts_logits(sess, directory / "tokenizer.json", m.config.train.max_length, dev.text_a, dev.text_b,
                                       m.model.pad_token_id)
        out["metrics"] = {"onnx": metrics.compute(task, logits, dev.labels)}
        out["dev_examples"] = len(dev)
    return out


def config_from_manifest(m: mf.ArtifactManifest, backbone_dir: str | None = None, **export_overrides) -> RunConfig:
    """The RunConfig that rebuilds an artifact; backbone_dir overrides where its backbone is now."""
    c = m.config
    exp = dataclasses.replace(c.export, **{k: v for k, v in export_overrides.items() if v is not None})
    model = m.model.name if m.model.name == models.EMBEDDED else m.model.location
    bb = None
    if m.backbone is not None:
        bb = backbone_dir or m.backbone.path
        if not Path(bb).is_dir():
            raise backbone.BackboneError(f"the backbone this artifact was trained on ({m.backbone.sha256[:12]}...) is not at {bb}: "
                                         "pass --backbone DIR")
    return RunConfig(model=model, task=m.task.name, pooling=m.model.pooling, quant=c.quant, mask=c.mask, train=c.train, export=exp,
                     backbone=bb)


def restore(directory: Path, m: mf.ArtifactManifest, cfg: RunConfig):
    """The trained torch model from an artifact: base model (or its backbone) + quantization + mask.npz + trainable.safetensors."""
    from safetensors.torch import load_file

    if m.materialized_from is not None and not (directory / calibration.FILE).is_file() and cfg.export.kernel == "int8":
        raise artifact.ArtifactError(f"{directory} was materialized from the pack {m.materialized_from['pack']} and has no calibration "
                                     f"tokens to smooth a new int8 graph with: re-export the original artifact, or use --kernel float")
    if m.backbone is not None:
        resolve_backbone(cfg, m.backbone.sha256)  # the same weights it was trained on
    task = tasks.get_task(cfg.task)
    calib = None
    if (directory / calibration.FILE).is_file():
        with np.load(directory / calibration.FILE) as z:
            calib = {k: z[k] for k in z.files}
    elif cfg.quant.method == "gptq" and cfg.quant.enabled and cfg.quant.calibration == "task" and not cfg.backbone:
        raise artifact.ArtifactError(f"{directory / calibration.FILE} is missing: GPTQ needs its calibration tokens; rerun `compress run`")
    model, tok, source, qweights, _ = build(cfg, task, calib, token_types="token_type_ids" in m.model.inputs)
    trained = load_file(str(directory / "trainable.safetensors"))
    if cfg.train.mode == "structure":
        masking.set_masks_(model, masking.load_masks(directory / "mask.npz"))
        missing = set(model.head_parameters()) - set(trained)
        if missing:
            raise artifact.ArtifactError(f"{directory / 'trainable.safetensors'} lacks {sorted(missing)}: rerun `compress run`")
        train.load_parameters_(model, trained)
    else:
        model.load_state_dict(trained)
        qweights = _quantize(model, cfg, tok, calib)
    return model.eval(), tok, qweights, calib


def _mobile(model, linears, embedding, config: ExportConfig, sample: dict, graph: Path, directory: Path) -> tuple[int, float]:
    """onnx/model.ort (+ its required-operators config) next to `graph`: the "nbits" kernel's graph (MatMulNBits and
    GatherBlockQuantized on the packed codes: the weights stay low-bit in the .ort), checked against PyTorch (bound
    max_logit_diff), the .ort against that graph (parity_atol) and against `graph`; -> (.ort bytes, max |logit - graph's|)."""
    import tempfile

    from compress.exporters import ort_format, verify
    from compress.runtimes.session import open_session, run_logits

    with tempfile.TemporaryDirectory() as tmp:
        mobile = Path(tmp) / "model.onnx"  # the converter names its outputs after it: model.ort, model.required_operators.config
        res = export(model, linears, embedding, mobile, dataclasses.replace(config, kernel="nbits"), sample)
        if not res.deployed_max_abs_diff <= config.max_logit_diff:
            raise verify.ParityError(f"the mobile (nbits) graph's logits differ from PyTorch's by up to {res.deployed_max_abs_diff:.3g} > "
                                     f"max_logit_diff {config.max_logit_diff:g} on the parity sample: {directory} is unchanged; "
                                     "export --format onnx and convert onnx/model.onnx yourself")
        ort_file = next(p for p in ort_format.to_ort(mobile, graph.parent) if p.suffix == ".ort")
        logits = run_logits(open_session(ort_file), sample)
        verify.compare({"logits": run_logits(open_session(mobile), sample)}, {"logits": logits}, config.parity_atol, "model.ort")
    shipped = run_logits(open_session(graph), sample)
    return ort_file.stat().st_size, float(np.max(np.abs(logits.astype(np.float64) - shipped)))


def reexport(directory: Path, kernel: str | None = None, fmt: str = "onnx", command: str = "",
             backbone_dir: str | None = None, activations: str | None = None, with_tokenizer: bool = False) -> mf.ArtifactManifest:
    """Re-export an artifact without retraining; returns the new manifest.

    fmt="onnx": rebuild onnx/model.onnx (and config.json) from base model (or backbone) + mask.npz + trainable.safetensors
                (e.g. with another kernel); an artifact written before the Hugging Face layout gets it.
    fmt="ort":  also write onnx/model.ort for ONNX Runtime's mobile packages and minimal builds: the low-bit graph
                (MatMulNBits, GatherBlockQuantized; weights stay packed), whatever kernel onnx/model.onnx uses (_mobile).
    with_tokenizer: also write onnx/model_with_tokenizer.onnx (raw strings in; compress.exporters.tokenizer_graph),
                checked against the two-step path on the shipped general text.
    """
    import shutil

    from compress.exporters import tokenizer_graph, verify
    from compress.runtimes.bench import sample as padded_sample

    if fmt not in ("onnx", "ort"):
        raise ConfigError(f"format '{fmt}' is not one of onnx, ort")
    directory = Path(directory)
    m = mf.read(directory, mf.ArtifactManifest)
    sample = padded_sample()
    with artifact.staging(directory, overwrite=True) as tmp:
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
        graph = artifact.graph_path(tmp)
        rebuild = fmt == "onnx" or kernel is not None or activations is not None
        if rebuild or fmt == "ort":  # the mobile graph alone needs no calibration ranges (nbits: float activations)
            cfg = config_from_manifest(m, backbone_dir, kernel=kernel if rebuild else "nbits", activations=activations)
            model, _, qweights, calib = restore(directory, m, cfg)
            linears, embedding = prepare(model, qweights)
        if rebuild:
            for stale in (tmp / artifact.LEGACY_GRAPH, tmp / "model.ort", tmp / "model.required_operators.config",
                          tmp / "onnx" / "model.ort", tmp / "onnx" / "model.required_operators.config",
                          tmp / "onnx" / tokenizer_graph.FILE):  # the old graph's
                stale.unlink(missing_ok=True)
            graph = tmp / artifact.GRAPH
            res = export(model, linears, embedding, graph, cfg.export, sample, calibration.batches(calib))
            if not res.deployed_max_abs_diff <= cfg.export.max_logit_diff:  # NaN fails too; the old artifact stays as it was
                raise verify.ParityError(f"the new {cfg.export.kernel}-kernel graph's logits differ from PyTorch's by up to "
                                         f"{res.deployed_max_abs_diff:.3g} > max_logit_diff {cfg.export.max_logit_diff:g} on the parity "
                                         f"sample: {directory} is unchanged; export with --kernel float (exact)")
            hf_layout.write(tmp, model.encoder.config, tasks.get_task(m.task.name), m.config.train.max_length)
            m.config = dataclasses.replace(m.config, export=cfg.export)
            if m.backbone is not None:
                m.backbone = dataclasses.replace(m.backbone, path=str(Path(cfg.backbone).resolve()))
            m.sizes.update({**res.sizes, "onnx_total": graph.stat().st_size})
            m.validation.update({"parity_max_abs_diff": res.parity_max_abs_diff, "sample_max_abs_diff": res.deployed_max_abs_diff})
            old = m.files.get(artifact.GRAPH)
            if old is None or artifact.sha256(graph) != old.sha256:  # another graph: the old one's figures are void, not kept
                for key in ("agreement", "metric_drop", "dev_max_abs_diff", "failure"):
                    m.validation.pop(key, None)
                m.validation["passed"] = None  # its dev metric is measured by `compress bench DIR --data-dir D`
                m.metrics = dataclasses.replace(m.metrics, onnx={})
                m.bench = {}
            m.fusions = res.fusions
            m.ffn_neurons = res.ffn_neurons
            m.attention_heads = res.attention_heads
            for key in ("ort_total", "with_tokenizer_total"):
                m.sizes.pop(key, None)
            for key in ("ort_max_abs_diff", "with_tokenizer_max_abs_diff"):
                m.validation.pop(key, None)
        if fmt == "ort":
            m.sizes["ort_total"], m.validation["ort_max_abs_diff"] = _mobile(model, linears, embedding, cfg.export, sample, graph, directory)
        if with_tokenizer:
            text = calibration.general_sentences()[:64]
            pair = tasks.get_task(m.task.name).text_cols[1:] != ()
            res = tokenizer_graph.write(graph, tmp, graph.parent / tokenizer_graph.FILE, pair, m.config.train.max_length,
                                        (text[0::2], text[1::2]) if pair else (text, None), m.config.export.parity_atol)
            m.sizes["with_tokenizer_total"] = res["bytes"]
            m.validation["with_tokenizer_max_abs_diff"] = res["max_abs_diff"]
        m.exported_by = command
        (tmp / "report.md").write_text(report.render(m))
        return mf.write(tmp, m)
