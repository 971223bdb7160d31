"""`compress run`: model + data -> quantized frozen weights -> learned mask -> exported graph -> runtime report.

Each stage is its module: the data (compress.tasks), the model with its quantized frozen weights and masks
(compress.build), training (compress.train, checkpointed by compress.checkpoint), the graph
(compress.exporters.export), the runtime report (compress.validate). This module runs them in order, times
each (the manifest's ``stages``) and writes the artifact directory (compress.files) through a staging
directory that is renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from compress import (
    build,
    calibration,
    checkpoint,
    distributed,
    files,
    hf_layout,
    masking,
    metrics,
    models,
    report,
    resources,
    speedup,
    staging,
    tasks,
    train,
)
from compress import manifest as mf
from compress import teacher as teacher_mod
from compress.configs import RunConfig
from compress.errors import ArtifactError
from compress.exporters.export import ExportResult, export
from compress.runtimes.evaluate import batches
from compress.runtimes.session import release_freed_memory
from compress.validate import Checked, guard_error, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Data:
    train: tasks.Split  # the examples trained on (--max-train-examples)
    dev: tasks.Split  # the examples evaluated on (--max-eval-examples)
    all_train_labels: list  # the whole training split's labels (the majority-class baseline)
    source: str  # where the training split was read from


@dataclass(frozen=True)
class Job:
    """What a run was asked and where it reports, the same through every stage."""

    cfg: RunConfig
    ref: mf.BackboneRef | None  # the backbone it learns on (cfg.backbone), by its weights' SHA-256
    task: tasks.Task
    out: Path
    command: str
    progress: bool
    stages: resources.StageMeter
    t_start: float
    teacher: teacher_mod.Teacher | None = None  # --teacher: distil from it
    speed: mf.Speed | None = None  # --speedup: what was asked and planned (compress.speedup)


def settings(cfg: RunConfig, embedding: bool) -> mf.RunSettings:
    """What the artifact's manifest records as its configs."""
    from compress import quantize

    return mf.RunSettings(
        cfg.quant, cfg.mask, cfg.train, cfg.export, quantize.embedding_bits(cfg.quant) if embedding else None, cfg.distill
    )


def checkpoint_settings(
    cfg: RunConfig, ref: mf.BackboneRef | None, train_split: tasks.Split, teacher_sha256: str | None = None
) -> checkpoint.CheckpointSettings:
    """What a checkpoint must share with the run that continues it (compress.checkpoint.CheckpointSettings)."""
    h = hashlib.sha256()
    for row in zip(train_split.text_a, train_split.text_b or [""] * len(train_split), train_split.labels):
        h.update(repr(row).encode())
    return checkpoint.CheckpointSettings(
        cfg.model,
        cfg.task,
        cfg.pooling,
        cfg.quant,
        cfg.mask,
        cfg.train,
        cfg.init_from,
        ref.sha256 if ref else None,
        checkpoint.TrainData(len(train_split), h.hexdigest()),
        distributed.world(),
        cfg.distill,
        teacher_sha256,
    )


def run(cfg: RunConfig, command: str = "", progress: bool = False) -> tuple[Path, mf.ArtifactManifest | None]:
    """-> (the artifact directory, its manifest; None in a torchrun process other than 0, which writes nothing)."""
    t_start = time.perf_counter()
    out = Path(cfg.out)
    staging.check_target(out, cfg.overwrite)  # fail before hours of training, not after
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = tasks.get_task(cfg.task)
    cfg, ref = build.resolve_backbone(cfg)
    cfg, speed = speedup.resolve(cfg, task.num_labels)  # --speedup -> the heads and neurons to keep
    teach = teacher_mod.load(cfg.distill, task.name, cfg.model) if cfg.distill else None
    with tqdm(total=5, desc="pipeline", disable=not progress, unit="stage", leave=False) as bar:
        stages = resources.StageMeter(lambda name: (name != "data" and bar.update(), bar.set_description(name)))
        try:
            return _run(Job(cfg, ref, task, out, command, progress, stages, t_start, teach, speed))
        finally:
            stages.stop()


def _run(job: Job) -> tuple[Path, mf.ArtifactManifest | None]:
    cfg = job.cfg
    job.stages.start("data")
    splits = tasks.load_task(job.task, cfg.data_dir)
    train_split = splits["train"]
    data = Data(
        train_split.subset(cfg.train.max_train_examples),
        splits["dev"].subset(cfg.train.max_eval_examples),
        train_split.labels,
        train_split.source,
    )
    job.stages.start("backbone + mask" if cfg.backbone else "quantize + mask")
    built = build.build(cfg, job.task, data.train)
    job.stages.start(f"train ({cfg.train.mode})")
    ckpt = None
    if cfg.checkpoint.enabled and not cfg.init_from:
        teacher_sha = job.teacher.ref.sha256 if job.teacher else None
        ckpt = checkpoint.Checkpointer(
            checkpoint.work_dir(job.out), checkpoint_settings(cfg, job.ref, data.train, teacher_sha), cfg.checkpoint
        )
    history = _train(job, data, built, ckpt)
    if not distributed.is_main():  # under torchrun, process 0 exports, validates and writes the artifact
        return job.out, None
    trained = build.trainable_tensors(built.model, cfg.train.mode)  # before post-training quantization: re-export quantizes again
    if cfg.train.mode == "weights":
        built.qweights = build.quantize_model(built.model, cfg, built.tokenizer, built.calibration)  # post-training quantization
    release_freed_memory(collect=True)  # training's optimizer state and activations, before the export's graphs
    with staging.staging(job.out, cfg.overwrite) as tmp:
        m = _publish(tmp, job, data, built, trained, history)
    if ckpt is not None:  # the artifact is published: the training state is no longer needed
        ckpt.remove()
    if not m.passed:  # kept, so that hours of training are not lost; but it fails
        raise guard_error(m, job.out, cfg)
    return job.out, m


def _train(job: Job, data: Data, built: build.Built, ckpt: checkpoint.Checkpointer | None) -> train.TrainResult:
    if job.cfg.init_from:
        return _load_fine_tuned(Path(job.cfg.init_from), built.model, job.cfg)
    return train.fit(
        built.model,
        job.task,
        data.train,
        data.dev,
        built.tokenizer,
        job.cfg.train,
        progress=job.progress,
        checkpoint=ckpt,
        teacher=job.teacher,
    )


def _publish(tmp: Path, job: Job, data: Data, built: build.Built, trained: dict, history: train.TrainResult) -> mf.ArtifactManifest:
    """Export the graph into the staging directory, validate it, write report.md and manifest.json."""
    cfg, model = job.cfg, built.model
    linears, embedding = build.prepare(model, built.qweights)
    pad = built.tokenizer.pad_token_id or 0
    dev_enc = train.encode(built.tokenizer, data.dev, cfg.train.max_length)
    torch_logits = train.predict(model, dev_enc, pad, bf16=False)
    torch_metrics = metrics.compute(job.task, torch_logits, data.dev.labels)
    job.stages.start("export")
    sample = next(iter(batches(dev_enc, 32, pad)))
    res, mask_bytes = _write_graph(tmp, job, built, trained, linears, embedding, sample)
    speed = job.speed
    if speed is not None:  # the speed reached: the shipped graph against the unpruned one, on this machine
        speed = speedup.reached(speed, tmp / files.GRAPH, cfg, job.task.num_labels)
    job.stages.start("validate")
    checked = validate(tmp, job.task, data.dev, torch_logits, torch_metrics, cfg, pad)
    sizes = res.sizes_in(mf.Sizes(masks=mask_bytes, head=(tmp / files.TRAINABLE).stat().st_size))
    m = _manifest(
        job, data, built, history, res, checked, build.layer_table(model, linears, embedding), embedding is not None, sizes, speed
    )
    (tmp / files.REPORT).write_text(report.render(m))
    return mf.write(tmp, m)


def _write_graph(tmp: Path, job: Job, built: build.Built, trained: dict, linears, embedding, sample) -> tuple[ExportResult, int]:
    """The tokenizer, config.json, mask.npz, trainable.safetensors, calibration.npz and the graph; -> (export result, mask bytes)."""
    from safetensors.torch import save_file

    cfg, model = job.cfg, built.model
    built.tokenizer.save_pretrained(tmp)
    hf_layout.write(tmp, model.encoder.config, job.task, cfg.train.max_length)
    mask_bytes = masking.save_masks(tmp / files.MASKS, model) if cfg.train.mode == "structure" else 0
    save_file(trained, str(tmp / files.TRAINABLE))
    if built.calibration is not None:
        np.savez_compressed(tmp / files.CALIBRATION, **built.calibration)
    res = export(model, linears, embedding, tmp / files.GRAPH, cfg.export, sample, calibration.batches(built.calibration))
    return res, mask_bytes


def _manifest(
    job: Job,
    data: Data,
    built: build.Built,
    history: train.TrainResult,
    res: ExportResult,
    checked: Checked,
    layers: list[mf.LayerInfo],
    embedding: bool,
    sizes: mf.Sizes,
    speed: mf.Speed | None,
) -> mf.ArtifactManifest:
    cfg, task, model, structure = job.cfg, job.task, built.model, job.cfg.train.mode == "structure"
    timings = job.stages.stop()  # the last stage (validate) ends here
    validation = dataclasses.replace(
        checked.validation,
        parity_max_abs_diff=res.parity_max_abs_diff,
        parity_atol=cfg.export.parity_atol,
        sample_max_abs_diff=res.deployed_max_abs_diff,
    )
    majority = metrics.majority_baseline(task, data.all_train_labels, data.dev.labels)
    return mf.ArtifactManifest(
        command=job.command,
        model=models.info(model, built.source, built.tokenizer, task.num_labels),
        task=mf.TaskInfo(task.name, task.metric, len(data.train), len(data.dev), data.source, list(task.labels)),
        config=settings(cfg, embedding),
        backbone=job.ref,
        density=masking.densities(model)[1],
        mask_sha256=masking.model_mask_sha256(model) if structure else None,
        layers=layers,
        training=mf.Training(history.history, history.best_epoch, history.seconds, cfg.init_from, history.processes),
        metrics=mf.Metrics(checked.torch_metrics, checked.onnx_metrics, majority),
        validation=validation,
        fusions=res.fusions,
        ffn_neurons=res.ffn_neurons,
        attention_heads=res.attention_heads,
        sizes=sizes,
        bench=checked.bench,
        seconds=time.perf_counter() - job.t_start,
        stages=timings,
        teacher=job.teacher.ref if job.teacher else None,
        speed=speed,
    )


def _load_fine_tuned(source: Path, model, cfg: RunConfig) -> train.TrainResult:
    """Post-training quantization of an earlier dense fine-tuning: its weights, its training history."""
    from safetensors.torch import load_file

    m = mf.read(source, mf.ArtifactManifest)
    if cfg.train.mode != "weights" or m.config.train.mode != "weights":
        raise ArtifactError(
            f"--init-from {source}: both it and this run must be --mode weights (it is {m.config.train.mode}, this run {cfg.train.mode})"
        )
    if m.task.name != tasks.get_task(cfg.task).name:
        raise ArtifactError(f"--init-from {source} was trained on {m.task.name}, not {cfg.task}")
    try:
        model.load_state_dict(load_file(str(source / files.TRAINABLE)))
    except RuntimeError as e:
        raise ArtifactError(f"--init-from {source} holds another model's weights ({m.model.name}): {str(e).splitlines()[0]}") from None
    return train.TrainResult(m.training.history, m.training.best_epoch, 0.0)
