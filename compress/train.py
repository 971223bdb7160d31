"""One training loop for both modes.

mode="structure": pretrained (quantized) weights frozen; learn mask scores (straight-through)
                  and the dense head (pooler if used + classifier).
mode="weights":   ordinary dense fine-tuning of everything (the comparison column).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from compress import distributed, masking, metrics, resources
from compress.errors import ConfigError
from compress.checkpoint import Checkpointer, Interrupted, rng_state, set_rng_state_
from compress.runtimes.evaluate import pad
from compress.tasks import Split, Task

log = logging.getLogger(__name__)
MODES = ("structure", "weights")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "structure"
    epochs: int = 5
    batch_size: int = 32
    max_length: int = 128
    mask_lr: float = 2e-3  # Adam on the scores, no weight decay (1e-3 peaked at F1 .853, 4e-3 at .847; see benchmarks/results)
    head_lr: float = 1e-3  # classifier (+ pooler) in structure mode
    lr: float = 5e-5  # every weight in weights mode
    weight_decay: float = 0.01  # weights mode and the head; never the scores
    warmup_ratio: float = 0.1
    head_warmup_steps: int = 0  # train the head alone for this many steps before the scores move
    select: str = "best"  # "best": keep the epoch with the best dev metric; "last": the final epoch
    bf16: bool = True  # bf16 autocast for training steps (CPU AMX/AVX-512 BF16, or a GPU that has bf16)
    device: str = "auto"  # where training runs: "auto" (a CUDA GPU when torch sees one, else CPU), "cpu", "cuda", "cuda:N"
    seed: int = 0
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode '{self.mode}' is not one of {MODES}")
        if self.select not in ("best", "last"):
            raise ConfigError(f"select '{self.select}' must be 'best' or 'last'")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ConfigError(f"epochs={self.epochs}, batch_size={self.batch_size}, max_length={self.max_length}: epochs and batch size "
                              "must be >= 1 and max_length >= 8")
        if not (self.mask_lr > 0 and self.head_lr > 0 and self.lr > 0 and 0 <= self.warmup_ratio <= 1 and self.head_warmup_steps >= 0):
            raise ConfigError(f"mask_lr={self.mask_lr}, head_lr={self.head_lr}, lr={self.lr}: learning rates must be > 0 "
                              f"(warmup_ratio={self.warmup_ratio} in [0, 1], head_warmup_steps={self.head_warmup_steps} >= 0)")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: use at least 1 example (or leave it unset for all)")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"device '{self.device}' is not one of auto, cpu, cuda, cuda:N")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # per epoch: loss, dev metrics, density, seconds
    best_epoch: int = 0
    seconds: float = 0.0
    processes: int = 1  # DistributedDataParallel processes that shared each batch


# ---------------------------------------------------------------- device
def resolve_device(name: str) -> torch.device:
    """The torch device for TrainConfig.device; asking for CUDA without one is an error that names the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': this torch build sees no CUDA GPU (torch {torch.__version__}); "
                         "pass --device cpu, or install a CUDA build of torch")
    return torch.device(name)


def _autocast(device: torch.device, bf16: bool):
    """bf16 autocast where the device has bf16 (CPU: AMX/AVX-512; CUDA: Ampere and newer), else a no-op."""
    if device.type == "cuda" and bf16 and not torch.cuda.is_bf16_supported():
        bf16 = False
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# ---------------------------------------------------------------- data
def encode(tokenizer, split: Split, max_length: int) -> dict[str, list]:
    enc = tokenizer(split.text_a, split.text_b, truncation=True, max_length=max_length)
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def collate(enc: dict[str, list], idx, pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in pad(enc, idx, pad_id).items()}


def labels_tensor(task: Task, labels) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.float32 if task.is_regression else torch.long)


@torch.no_grad()
def predict(model, enc, pad_id: int, batch_size: int = 64, bf16: bool = False) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    n = len(enc["input_ids"])
    outs = []
    for s in range(0, n, batch_size):
        b = collate(enc, range(s, min(n, s + batch_size)), pad_id, device)
        with _autocast(device, bf16):
            outs.append(model(**b).float())
    return torch.cat(outs).cpu().numpy()


# ---------------------------------------------------------------- optimisation
def _param_groups(model, cfg: TrainConfig):
    if cfg.mode == "weights":
        for p in model.parameters():
            p.requires_grad_(True)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        return [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0}], []
    for p in model.parameters():
        p.requires_grad_(False)
    layers = masking.masked_layers(model)
    if not layers:
        raise ValueError("mode='structure' needs masks: call masking.apply_masks_(model, MaskConfig()) first")
    scores = masking.score_parameters(model)
    head = list(model.head_parameters().values())
    for p in scores + head:
        p.requires_grad_(True)
    return [{"params": scores, "lr": cfg.mask_lr, "weight_decay": 0.0},
            {"params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay}], scores


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def _trainable_state(model, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    if cfg.mode == "weights":
        return copy.deepcopy(model.state_dict())
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore_trainable(model, cfg: TrainConfig, tensors: dict[str, torch.Tensor]) -> None:
    if cfg.mode == "weights":
        model.load_state_dict(tensors)
    else:
        load_parameters_(model, tensors)


@torch.no_grad()
def load_parameters_(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the model's parameters of the same names (e.g. mask scores and head)."""
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        params[name].copy_(value)


def fit(model, task: Task, train: Split, dev: Split, tokenizer, cfg: TrainConfig, progress: bool = False,
        checkpoint: Checkpointer | None = None) -> TrainResult:
    """Train in place on cfg.device; on return the model holds the selected epoch's parameters, on the CPU.

    The caller passes the splits to use (``RunConfig`` applies max_train/eval_examples). With a checkpointer the
    training state is saved as it says (compress.checkpoint) and a saved state is continued.
    """
    device = distributed.device(resolve_device(cfg.device))
    distributed.init(device)
    log.info("training on %s%s", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             f" (process {distributed.rank()} of {distributed.world()})" if distributed.world() > 1 else "")
    model.to(device)
    try:
        if checkpoint is None:
            return _fit(model, task, train, dev, tokenizer, cfg, device, progress, None)
        with checkpoint.signals():
            return _fit(model, task, train, dev, tokenizer, cfg, device, progress, checkpoint)
    finally:
        model.to("cpu")  # quantized tensors, export and ONNX validation live on the CPU
        distributed.finish()  # training is the only collective work; process 0 goes on alone


def _fit(model, task: Task, train: Split, dev: Split, tokenizer, cfg: TrainConfig, device: torch.device, progress: bool,
         checkpoint: Checkpointer | None) -> TrainResult:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    pad_id = tokenizer.pad_token_id or 0
    tr_enc, dev_enc = encode(tokenizer, train, cfg.max_length), encode(tokenizer, dev, cfg.max_length)
    y = labels_tensor(task, train.labels).to(device)
    groups, scores = _param_groups(model, cfg)
    # stop now with advice rather than be killed mid-epoch (each process holds its share of the batch)
    resources.check(model, math.ceil(cfg.batch_size / distributed.world()), cfg.max_length, device)
    trained = distributed.wrap(model, device, find_unused=cfg.head_warmup_steps > 0)  # DDP under torchrun, else the model
    opt = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(cfg.warmup_ratio * total)))
    loss_fn = torch.nn.MSELoss() if task.is_regression else torch.nn.CrossEntropyLoss()
    result, best_metric, best_state = TrainResult(), -math.inf, None
    t_start, step = time.perf_counter(), 0
    keep_target = masking.keep_targets(model)  # where the neuron / head schedules end ({}: no structured pruning)
    rng = np.random.default_rng(cfg.seed)
    start_epoch, start_batch, order, losses, seconds_before = 1, 0, None, [], 0.0
    saved = checkpoint.restore() if checkpoint else None
    if saved is not None:
        _restore_trainable(model, cfg, saved["trainable"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        set_rng_state_(saved["rng"], rng)
        step, start_epoch, start_batch = saved["step"], saved["epoch"], saved["batch"]
        order = None if saved["order"] is None else saved["order"].numpy()
        losses, seconds_before = list(saved["losses"]), saved["seconds"]
        result.history, result.best_epoch, best_metric, best_state = saved["history"], saved["best_epoch"], saved["best_metric"], saved["best_state"]

    def save(epoch: int, batch: int, order_, due: bool) -> None:
        """Save if due or asked to stop (then raise Interrupted); every process reaches this at each step, so all stop together."""
        stop = distributed.any_true(checkpoint.stop_requested, device)
        if (due or stop) and distributed.is_main():
            checkpoint.save({"step": step, "epoch": epoch, "batch": batch, "order": None if order_ is None else torch.from_numpy(order_),
                             "losses": losses, "history": result.history, "best_epoch": result.best_epoch, "best_metric": best_metric,
                             "best_state": best_state, "trainable": _trainable_state(model, cfg), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "rng": rng_state(rng),
                             "seconds": seconds_before + time.perf_counter() - t_start})
        if stop:
            raise Interrupted(checkpoint.path, step)

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        if epoch != start_epoch or order is None:
            order, losses, start_batch = rng.permutation(len(train)), [], 0
        # updated by hand: a bar that is iterated closes itself before the dev metric can be shown
        bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=True,
                   unit="step")
        for b in range(start_batch, steps_per_epoch):
            idx = distributed.shard(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])  # all of it with one process
            batch = collate(tr_enc, idx, pad_id, device)
            for s in scores:  # head warm-up: scores frozen for the first steps
                s.requires_grad_(step >= cfg.head_warmup_steps)
            masking.set_keep_(model, step / total)
            with _autocast(device, cfg.bf16):
                out = trained(**batch).float()
            target = y[torch.from_numpy(idx).to(device)]
            loss = loss_fn(out.squeeze(-1), target) if task.is_regression else loss_fn(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.update()
            if b % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if checkpoint and b + 1 < steps_per_epoch:  # the epoch's last step is saved after its dev pass
                save(epoch, b + 1, order, checkpoint.due(step))
        keep = masking.set_keep_(model, step / total)  # where the neuron / head schedules stand after this epoch
        logits = predict(model, dev_enc, pad_id, bf16=cfg.bf16)
        dev_metrics = metrics.compute(task, logits, dev.labels)
        density = masking.densities(model)[1] if cfg.mode == "structure" else 1.0
        rec = {"epoch": epoch, "loss": float(np.mean(losses)), "dev": dev_metrics, "density": density,
               "seconds": time.perf_counter() - t0}
        rec.update({f"{unit}_keep": k for unit, k in keep.items() if keep_target[unit] < 1.0})
        pruning = any(k > keep_target[unit] + 1e-9 for unit, k in keep.items())  # an epoch before the schedules' end is not selectable
        result.history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", **{f"dev_{task.metric}": f"{dev_metrics[task.metric]:.4f}"}, density=f"{density:.3f}")
        bar.close()
        log.info("epoch %d: loss %.4f dev %s density %.4f (%.0f s)", epoch, rec["loss"], dev_metrics, density, rec["seconds"])
        if not pruning and (cfg.select == "last" or dev_metrics[task.metric] > best_metric):  # only epochs at the final sparsity
            best_metric, result.best_epoch = dev_metrics[task.metric], epoch
            best_state = _trainable_state(model, cfg)
        losses = []
        if checkpoint:  # every epoch's end (the last one too: an export that fails does not cost the training)
            save(epoch + 1, 0, None, True)
    if best_state is not None and result.best_epoch != cfg.epochs:
        _restore_trainable(model, cfg, best_state)
    result.seconds = seconds_before + time.perf_counter() - t_start
    result.processes = distributed.world()
    log.info("process %d: mask sha256 %s", distributed.rank(),
             masking.model_mask_sha256(model) if cfg.mode == "structure" else "-")
    return result
