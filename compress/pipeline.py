"""run(RunConfig): load -> quantize -> learn mask -> export -> validate -> write the artifact directory."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from compress import artifact, calibration, masking, metrics, models, quantize, report, tasks, train
from compress.exporters.export import ExportConfig, export
from compress.exporters.onnx_graph import input_names
from compress.exporters.verify import AccuracyDriftError
from compress.exporters.weights import IntWeight, int_weight
from compress.runtimes.evaluate import batches

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


def _to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def prepare(model: torch.nn.Module, qtensors: dict) -> tuple[dict[str, IntWeight], tuple[str, IntWeight] | None]:
    """Split the quantized tensors into masked linears and the embedding table, masks folded in."""
    masks = {k: v.numpy() for k, v in masking.masks(model).items()}
    emb = quantize.word_embeddings(model)
    emb_name = emb[0] if emb else None
    linears = {n: int_weight(qt, masks.get(n)) for n, qt in qtensors.items() if n != emb_name}
    embedding = (emb_name, int_weight(qtensors[emb_name])) if emb_name in qtensors else None
    return linears, embedding


def build(cfg: RunConfig, task: tasks.Task, calib: tasks.Split | dict[str, np.ndarray] | None = None):
    """Model with quantized frozen weights and (mode=structure) masks.

    calib: calibration texts (a Split: the first cfg.quant.calibration_examples are tokenized) or
    tokens (arrays from an artifact), for GPTQ and the export's activation smoothing.
    -> (model, tokenizer, source, qtensors, calibration tokens or None when nothing is quantized)
    """
    clf, tok, source = models.build_classifier(cfg.model, task.num_labels, cfg.pooling, seed=cfg.train.seed)
    if isinstance(calib, tasks.Split):
        calib = calibration.tokens(tok, calib, cfg.quant.calibration_examples, cfg.train.max_length) if cfg.quant.enabled else None
    qtensors = {}
    if cfg.train.mode == "structure":
        qtensors = quantize.quantize_(clf, cfg.quant, calibration.batches(calib))  # the mask is learned on the weights that ship
        torch.manual_seed(cfg.train.seed)
        masking.apply_masks_(clf, cfg.mask)
    return clf, tok, source, qtensors, calib


def layer_table(model, linears: dict[str, IntWeight], embedding) -> list[dict]:
    """Per quantized/masked layer: shape, bits, group size, mask density."""
    dens = masking.densities(model)[0]
    rows = []
    for name in list(linears) or list(dens) or list(quantize.target_linears(model)):
        w = linears.get(name)
        shape = w.codes.shape if w else model.get_submodule(name).weight.shape
        rows.append({"name": name, "shape": list(shape), "bits": w.bits if w else 32, "group_size": w.group_size if w else None,
                     "symmetric": w.zero is None if w else None, "masked": name in dens, "density": dens.get(name, 1.0)})
    if embedding:
        name, w = embedding
        rows.append({"name": name, "shape": list(w.codes.shape), "bits": w.bits, "group_size": None, "symmetric": True,
                     "masked": False, "density": 1.0})
    return rows


def run(cfg: RunConfig, command: str = "", progress: bool = False) -> tuple[Path, dict]:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    artifact.check_target(out, cfg.overwrite)  # fail before hours of training, not after
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = tasks.get_task(cfg.task)
    with tqdm(total=5, desc="pipeline", disable=not progress, unit="stage", leave=False) as stages:
        return _run(cfg, task, out, command, progress, stages, t_start)


def _run(cfg: RunConfig, task, out: Path, command: str, progress: bool, stages, t_start: float) -> tuple[Path, dict]:
    stages.set_description("data")
    splits = tasks.load_task(task, cfg.data_dir)
    train_split = splits["train"].subset(cfg.train.max_train_examples)
    dev = splits["dev"].subset(cfg.train.max_eval_examples)
    stages.update()

    stages.set_description("quantize + mask")
    model, tok, source, qtensors, calib = build(cfg, task, train_split)
    stages.update()
    stages.set_description(f"train ({cfg.train.mode})")
    if cfg.init_from:
        history = _load_fine_tuned(Path(cfg.init_from), model, cfg)
    else:
        history = train.fit(model, task, train_split, dev, tok, cfg.train, progress=progress)
    trained = trainable_tensors(model, cfg.train.mode)  # before post-training quantization: re-export quantizes again
    if cfg.train.mode == "weights":
        qtensors = quantize.quantize_(model, cfg.quant, calibration.batches(calib))  # post-training quantization
    linears, embedding = prepare(model, qtensors)
    stages.update()

    pad = tok.pad_token_id or 0
    dev_enc = train.encode(tok, dev, cfg.train.max_length)
    torch_logits = train.predict(model, dev_enc, pad, bf16=False)
    torch_metrics = metrics.compute(task, torch_logits, dev.labels)

    with artifact.staging(out, cfg.overwrite) as tmp:
        stages.set_description("export")
        tok.save_pretrained(tmp)
        mask_bytes = masking.save_masks(tmp / "mask.npz", model) if cfg.train.mode == "structure" else 0
        _save_tensors(trained, tmp / "trainable.safetensors")
        if calib is not None:
            np.savez_compressed(tmp / calibration.FILE, **calib)
        sample = next(iter(batches(dev_enc, 32, pad)))
        res = export(model, linears, embedding, tmp / "model.onnx", cfg.export, sample, calibration.batches(calib))
        stages.update()

        stages.set_description("validate")
        validation = validate(tmp, task, dev, torch_logits, torch_metrics, cfg, pad)
        stages.update()
        density = masking.densities(model)[1]
        manifest = {
            "command": command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"name": source.name, "location": source.location, "local": source.local, "pooling": model.pooling,
                      "architecture": model.encoder.config.model_type, "num_labels": task.num_labels,
                      "hidden_size": model.encoder.config.hidden_size, "num_heads": model.encoder.config.num_attention_heads,
                      "inputs": input_names(model), "pad_token_id": pad},
            "task": {"name": task.name, "metric": task.metric, "train_examples": len(train_split), "dev_examples": len(dev),
                     "data": splits["train"].source},
            "config": {"quant": _to_dict(cfg.quant), "mask": _to_dict(cfg.mask), "train": _to_dict(cfg.train),
                       "export": _to_dict(cfg.export), "embedding_bits": quantize.embedding_bits(cfg.quant) if embedding else None},
            "density": density,
            "layers": layer_table(model, linears, embedding),
            "training": {"history": history.history, "best_epoch": history.best_epoch, "seconds": history.seconds,
                         "init_from": cfg.init_from},
            "metrics": {"majority": metrics.majority_baseline(task, splits["train"].labels, dev.labels), **validation["metrics"]},
            "validation": validation["checks"] | {"parity_max_abs_diff": res.parity_max_abs_diff, "parity_atol": cfg.export.parity_atol,
                                                   "sample_max_abs_diff": res.deployed_max_abs_diff},
            "fusions": res.fusions,
            "ffn_neurons": res.ffn_neurons,
            "sizes": {**res.sizes, "onnx_total": (tmp / "model.onnx").stat().st_size, "masks": mask_bytes,
                      "head": (tmp / "trainable.safetensors").stat().st_size},
            "bench": validation["bench"],
            "seconds": time.perf_counter() - t_start,
            "versions": artifact.versions(),
        }
        (tmp / "report.md").write_text(report.render(manifest))
        manifest = artifact.write_manifest(tmp, manifest)
    if not manifest["validation"]["passed"]:  # kept, so that hours of training are not lost; but it fails
        raise AccuracyDriftError(f"{manifest['validation']['failure']}: the artifact is kept at {out} with validation.passed = false; "
                                 f"`compress export {out} --kernel float` ships the exact graph without retraining")
    return out, manifest


def _load_fine_tuned(source: Path, model, cfg: RunConfig) -> train.TrainResult:
    """Post-training quantization of an earlier dense fine-tuning: its weights, its training history."""
    from safetensors.torch import load_file

    m = artifact.read(source)
    if cfg.train.mode != "weights" or m["config"]["train"]["mode"] != "weights":
        raise artifact.ArtifactError(f"--init-from {source}: both it and this run must be --mode weights (it is "
                                     f"{m['config']['train']['mode']}, this run {cfg.train.mode})")
    if m["task"]["name"] != tasks.get_task(cfg.task).name:
        raise artifact.ArtifactError(f"--init-from {source} was trained on {m['task']['name']}, not {cfg.task}")
    try:
        model.load_state_dict(load_file(str(source / "trainable.safetensors")))
    except RuntimeError as e:
        raise artifact.ArtifactError(f"--init-from {source} holds another model's weights ({m['model']['name']}): "
                                     f"{str(e).splitlines()[0]}") from None
    return train.TrainResult(m["training"]["history"], m["training"]["best_epoch"], 0.0)


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

    sess = open_session(directory / "model.onnx", threads=cfg.threads)
    ort_logits = evaluate.texts_logits(sess, directory / "tokenizer.json", cfg.train.max_length, dev.text_a, dev.text_b, pad_id)
    ort_metrics = metrics.compute(task, ort_logits, dev.labels)
    p_t, p_o = metrics.predictions(task, torch_logits), metrics.predictions(task, ort_logits)
    agreement = float(np.mean(p_t == p_o)) if not task.is_regression else float(np.corrcoef(p_t, p_o)[0, 1])
    drop = torch_metrics[task.metric] - ort_metrics[task.metric]
    checks = {"agreement": agreement, "metric_drop": drop, "max_metric_drop": cfg.export.max_metric_drop,
              "dev_max_abs_diff": float(np.max(np.abs(ort_logits - torch_logits)))}
    checks["passed"] = bool(drop <= cfg.export.max_metric_drop)
    if not checks["passed"]:
        checks["failure"] = (f"ONNX Runtime dev {task.metric} {ort_metrics[task.metric]:.4f} trails PyTorch's "
                             f"{torch_metrics[task.metric]:.4f} by {drop:.4f} > {cfg.export.max_metric_drop}")
    results = {}
    if cfg.bench:
        for b in (1, 32):
            results[f"batch{b}"] = bench.latency(sess, batch=b, seq_len=128, runs=50 if b == 1 else 10)
    return {"metrics": {"torch": torch_metrics, "onnx": ort_metrics}, "checks": checks, "bench": results}


def bench(directory: Path, provider: str = "cpu", batch_sizes=(1, 32), seq_len: int = 128, threads: int | None = None,
          data_dir: str | None = None) -> dict:
    """Time an artifact's model.onnx (and with data_dir, its dev metric) reading only the directory."""
    from compress.runtimes import bench as rbench, evaluate
    from compress.runtimes.providers import require
    from compress.runtimes.session import open_session

    directory = Path(directory)
    manifest = artifact.read(directory)
    sess = open_session(directory / "model.onnx", require(provider), threads=threads)
    out = {"kind": "bench", "artifact": str(directory), "model": manifest["model"]["name"], "task": manifest["task"]["name"],
           "provider": provider, "latency": [rbench.latency(sess, batch=b, seq_len=seq_len) for b in batch_sizes]}
    if data_dir is not None:
        task = tasks.get_task(manifest["task"]["name"])
        dev = tasks.load_task(task, data_dir)["dev"]
        logits = evaluate.texts_logits(sess, directory / "tokenizer.json", manifest["config"]["train"]["max_length"], dev.text_a,
                                       dev.text_b, manifest["model"]["pad_token_id"])
        out["metrics"] = {"onnx": metrics.compute(task, logits, dev.labels)}
        out["dev_examples"] = len(dev)
    return out


def config_from_manifest(manifest: dict, **export_overrides) -> RunConfig:
    c = manifest["config"]
    mask = dict(c["mask"])
    mask["nm"] = tuple(mask["nm"]) if mask.get("nm") else None
    exp = {**c["export"], **{k: v for k, v in export_overrides.items() if v is not None}}
    m = manifest["model"]
    return RunConfig(model=m["name"] if m["name"] == models.EMBEDDED else m["location"], task=manifest["task"]["name"], pooling=m["pooling"],
                     quant=quantize.QuantConfig(**c["quant"]), mask=masking.MaskConfig(**mask), train=train.TrainConfig(**c["train"]),
                     export=ExportConfig(**exp))


def restore(directory: Path, manifest: dict, cfg: RunConfig):
    """The trained torch model from an artifact: base model + quantization + mask.npz + trainable.safetensors."""
    from safetensors.torch import load_file

    task = tasks.get_task(cfg.task)
    calib = None
    if (directory / calibration.FILE).is_file():
        with np.load(directory / calibration.FILE) as z:
            calib = {k: z[k] for k in z.files}
    elif cfg.quant.method == "gptq" and cfg.quant.enabled:
        raise artifact.ArtifactError(f"{directory / calibration.FILE} is missing: GPTQ needs its calibration tokens; rerun `compress run`")
    model, tok, source, qtensors, _ = build(cfg, task, calib)
    trained = load_file(str(directory / "trainable.safetensors"))
    if cfg.train.mode == "structure":
        masking.set_masks_(model, masking.load_masks(directory / "mask.npz"))
        missing = set(model.head_parameters()) - set(trained)
        if missing:
            raise artifact.ArtifactError(f"{directory / 'trainable.safetensors'} lacks {sorted(missing)}: rerun `compress run`")
        train.load_parameters_(model, trained)
    else:
        model.load_state_dict(trained)
        qtensors = quantize.quantize_(model, cfg.quant, calibration.batches(calib))
    return model.eval(), tok, qtensors, calib


def reexport(directory: Path, kernel: str | None = None, fmt: str = "onnx", command: str = "") -> dict:
    """Re-export an artifact without retraining; returns the new manifest.

    fmt="onnx": rebuild model.onnx from base model + mask.npz + trainable.safetensors (e.g. with another kernel).
    fmt="ort":  also write model.ort (ONNX Runtime's format for mobile builds), checked against model.onnx.
    """
    import shutil

    from compress.exporters import ort_format, verify
    from compress.runtimes.bench import inputs
    from compress.runtimes.session import open_session, run_logits

    if fmt not in ("onnx", "ort"):
        raise ValueError(f"format '{fmt}' is not one of onnx, ort")
    directory = Path(directory)
    manifest = artifact.read(directory)
    sample = inputs(4, 32, seed=1)
    sample["attention_mask"][1, 20:] = 0
    with artifact.staging(directory, overwrite=True) as tmp:
        for f in directory.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        if fmt == "onnx" or kernel is not None:
            cfg = config_from_manifest(manifest, kernel=kernel)
            model, _, qtensors, calib = restore(directory, manifest, cfg)
            linears, embedding = prepare(model, qtensors)
            res = export(model, linears, embedding, tmp / "model.onnx", cfg.export, sample, calibration.batches(calib))
            manifest["config"]["export"] = _to_dict(cfg.export)
            manifest["sizes"].update({**res.sizes, "onnx_total": (tmp / "model.onnx").stat().st_size})
            manifest["validation"].update({"parity_max_abs_diff": res.parity_max_abs_diff, "sample_max_abs_diff": res.deployed_max_abs_diff,
                                           "passed": None})  # a new graph: its dev metric is measured by `compress bench DIR --data-dir`
            manifest["fusions"] = res.fusions
            manifest["ffn_neurons"] = res.ffn_neurons
            for stale in (tmp / "model.ort", tmp / "model.required_operators.config"):  # made from the old graph
                stale.unlink(missing_ok=True)
            manifest["sizes"].pop("ort_total", None)
            manifest["validation"].pop("ort_max_abs_diff", None)
        if fmt == "ort":
            ort_file = next(p for p in ort_format.to_ort(tmp / "model.onnx", tmp) if p.suffix == ".ort")
            ref = {"logits": run_logits(open_session(tmp / "model.onnx"), sample)}
            atol = manifest["config"]["export"]["parity_atol"]
            diff = verify.compare(ref, {"logits": run_logits(open_session(ort_file), sample)}, atol, "model.ort")
            manifest["sizes"]["ort_total"] = ort_file.stat().st_size
            manifest["validation"]["ort_max_abs_diff"] = diff["logits"]
        manifest["exported_by"] = command
        manifest.pop("files", None)
        manifest.pop("schema_version", None)
        (tmp / "report.md").write_text(report.render(manifest))
        return artifact.write_manifest(tmp, manifest)
