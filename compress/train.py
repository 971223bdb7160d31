"""One training loop for both modes.

mode="structure": pretrained (quantized) weights frozen; learn mask scores (straight-through)
                  and the dense head (pooler if used + classifier).
mode="weights":   ordinary dense fine-tuning of everything (the comparison column).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from compress import distributed, masking, metrics, resources
from compress.checkpoint import Checkpointer, Interrupted, Progress, TrainingState, rng_state, set_rng_state_
from compress.configs import TrainConfig
from compress.errors import ConfigError
from compress.manifest import Epoch
from compress.runtimes.evaluate import pad
from compress.tasks import Split, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    history: list[Epoch]  # per epoch: loss, dev metrics, density, seconds
    best_epoch: int
    seconds: float
    processes: int = 1  # DistributedDataParallel processes that shared each batch


# ---------------------------------------------------------------- device
def resolve_device(name: str) -> torch.device:
    """The torch device for TrainConfig.device; asking for CUDA without one is an error that names the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{name}': this torch build sees no CUDA GPU (torch {torch.__version__}); "
            "pass --device cpu, or install a CUDA build of torch"
        )
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
        return [
            {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
        ], []
    for p in model.parameters():
        p.requires_grad_(False)
    layers = masking.masked_layers(model)
    if not layers:
        raise ValueError("mode='structure' needs masks: call masking.apply_masks_(model, MaskConfig()) first")
    scores = masking.score_parameters(model)
    head = list(model.head_parameters().values())
    for p in scores + head:
        p.requires_grad_(True)
    return [
        {"params": scores, "lr": cfg.mask_lr, "weight_decay": 0.0},
        {"params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
    ], scores


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


def fit(
    model,
    task: Task,
    train: Split,
    dev: Split,
    tokenizer,
    cfg: TrainConfig,
    progress: bool = False,
    checkpoint: Checkpointer | None = None,
    teacher: Any = None,  # compress.teacher.Teacher (which imports this module)
) -> TrainResult:
    """Train in place on cfg.device; on return the model holds the selected epoch's parameters, on the CPU.

    The caller passes the splits to use (``RunConfig`` applies max_train/eval_examples). With a checkpointer the
    training state is saved as it says (compress.checkpoint) and a saved state is continued. With a teacher the loss
    is distilled from it (compress.teacher).
    """
    device = distributed.device(resolve_device(cfg.device))
    distributed.init(device)
    log.info(
        "training on %s%s",
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        f" (process {distributed.rank()} of {distributed.world()})" if distributed.world() > 1 else "",
    )
    model.to(device)
    loop, done = None, False
    try:
        with checkpoint.signals() if checkpoint is not None else contextlib.nullcontext():
            loop = _setup(model, task, train, dev, tokenizer, cfg, device, progress, checkpoint)
            if teacher is not None:
                t0 = time.perf_counter()
                loop.teacher, loop.soft = teacher, teacher.soft_targets(loop.tr_enc, loop.pad_id, device)
                log.info("teacher's soft targets for %d examples: %.1f s", len(loop.soft), time.perf_counter() - t0)
            result = _fit(loop)
            done = True
            return result
    finally:
        if teacher is not None:
            teacher.model.to("cpu")
        model.to("cpu")  # quantized tensors, export and ONNX validation live on the CPU
        del loop  # the DDP wrapper goes before its process group: a reducer freed after the group can hang the process
        distributed.finish(synchronize=done)  # training is the only collective work; process 0 goes on alone


@dataclass
class _Loop:
    """What one fit works with: the model (``trained``: wrapped for DDP), its optimizer and schedule, the encoded data, and
    where training stands (``state``: what a checkpoint saves)."""

    model: torch.nn.Module
    trained: torch.nn.Module
    task: Task
    cfg: TrainConfig
    device: torch.device
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scores: list[torch.nn.Parameter]
    tr_enc: dict
    dev_enc: dict
    dev: Split
    y: torch.Tensor
    pad_id: int
    steps_per_epoch: int
    total: int
    keep_target: dict[str, float]  # where the neuron / head schedules end ({}: no structured pruning)
    rng: np.random.Generator  # the data order
    state: Progress
    checkpoint: Checkpointer | None
    show: bool  # progress bars
    teacher: Any = None  # compress.teacher.Teacher: distillation
    soft: torch.Tensor | None = None  # the teacher's logits for every training example (computed once)
    t_start: float = field(default_factory=time.perf_counter)
    epoch_t0: float = 0.0  # when the current epoch started
    bar: Any = None  # the current epoch's progress bar


def _fit(loop: _Loop) -> TrainResult:
    """The epochs from where the loop stands; the selected epoch's tensors back in the model."""
    model, cfg = loop.model, loop.cfg
    for epoch in range(loop.state.epoch, cfg.epochs + 1):
        _train_epoch(loop, epoch)
        _end_epoch(loop, epoch)
    st = loop.state
    if st.best_state is not None and st.best_epoch != cfg.epochs:
        _restore_trainable(model, cfg, st.best_state)
    result = TrainResult(st.history, st.best_epoch, st.seconds + time.perf_counter() - loop.t_start, distributed.world())
    log.info("process %d: mask sha256 %s", distributed.rank(), masking.model_mask_sha256(model) if cfg.mode == "structure" else "-")
    return result


def _setup(
    model,
    task: Task,
    train: Split,
    dev: Split,
    tokenizer,
    cfg: TrainConfig,
    device: torch.device,
    progress: bool,
    checkpoint: Checkpointer | None,
) -> _Loop:
    """Seeds, encoded data, optimizer and schedule; a saved state continued where there is one."""
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
    loop = _Loop(
        model,
        trained,
        task,
        cfg,
        device,
        opt,
        sched,
        scores,
        tr_enc,
        dev_enc,
        dev,
        y,
        pad_id,
        steps_per_epoch,
        total,
        masking.keep_targets(model),
        np.random.default_rng(cfg.seed),
        Progress(),
        checkpoint,
        progress,
    )
    saved = checkpoint.restore() if checkpoint else None
    if saved is not None:
        _restore_trainable(model, cfg, saved.trainable)
        opt.load_state_dict(saved.optimizer)
        sched.load_state_dict(saved.scheduler)
        set_rng_state_(saved.rng, loop.rng)
        loop.state = saved.progress
    return loop


def _train_epoch(loop: _Loop, epoch: int) -> None:
    """The epoch's steps from where it stands (a continued epoch: from its saved batch, in its saved order)."""
    st, cfg = loop.state, loop.cfg
    loop.model.train()
    loop.epoch_t0 = time.perf_counter()
    if st.order is None:  # a new epoch
        st.order, st.losses, st.batch = loop.rng.permutation(len(loop.y)), [], 0
    # updated by hand: a bar that is iterated closes itself before the dev metric can be shown
    loop.bar = tqdm(
        total=loop.steps_per_epoch, initial=st.batch, desc=f"epoch {epoch}/{cfg.epochs}", disable=not loop.show, leave=True, unit="step"
    )
    for b in range(st.batch, loop.steps_per_epoch):
        idx = distributed.shard(st.order[b * cfg.batch_size : (b + 1) * cfg.batch_size])  # all of it with one process
        for s in loop.scores:  # head warm-up: scores frozen for the first steps
            s.requires_grad_(st.step >= cfg.head_warmup_steps)
        masking.set_keep_(loop.model, st.step / loop.total)
        loss = _loss(loop, idx)
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.opt.step()
        loop.sched.step()
        st.step += 1
        st.losses.append(loss.item())
        loop.bar.update()
        if b % 10 == 0:
            loop.bar.set_postfix(loss=f"{np.mean(st.losses[-50:]):.4f}")
        if loop.checkpoint and b + 1 < loop.steps_per_epoch:  # the epoch's last step is saved after its dev pass
            st.epoch, st.batch = epoch, b + 1
            _save(loop, loop.checkpoint.due(st.step))


def _loss(loop: _Loop, idx: np.ndarray) -> torch.Tensor:
    """The batch's loss: the task's, or with a teacher (1 - alpha) * the task's + alpha * the soft targets' (+ hidden states')."""
    batch = collate(loop.tr_enc, idx, loop.pad_id, loop.device)
    rows = torch.from_numpy(idx).to(loop.device)
    d = loop.teacher.config if loop.teacher else None
    with _autocast(loop.device, loop.cfg.bf16), layer_outputs(loop.model, bool(d and d.hidden)) as hidden:
        logits = loop.trained(**batch).float()
    loss = task_loss(loop.task, logits, loop.y[rows])
    if d is None:
        return loss
    loss = (1 - d.alpha) * loss + d.alpha * soft_loss(loop.task, logits, loop.soft[rows], d.temperature)
    if d.hidden:
        with _autocast(loop.device, loop.cfg.bf16):
            want = loop.teacher.hidden_states(batch)
        loss = loss + d.hidden * hidden_loss(hidden, want, batch["attention_mask"])
    return loss


@contextlib.contextmanager
def layer_outputs(model, enabled: bool = True):
    """Collect each transformer layer's output (its hidden states) while the model runs forward, by hooks: the model's forward
    and its exported graph stay as they are. Yields the list the outputs are appended to, in layer order."""
    out: list[torch.Tensor] = []
    if not enabled:
        yield out
        return
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: out.append(o[0] if isinstance(o, tuple) else o))
        for m in masking.transformer_layers(model)
    ]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


def task_loss(task: Task, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task.is_regression:
        return F.mse_loss(logits.squeeze(-1), target)
    return F.cross_entropy(logits, target)


def soft_loss(task: Task, logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: KL(teacher || student) at the temperature, times its square (so that its gradients keep
    their scale as the temperature changes); regression: the MSE to the teacher's prediction."""
    if task.is_regression:
        return F.mse_loss(logits.squeeze(-1), teacher_logits.squeeze(-1))
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True, reduction="batchmean") * t * t


def hidden_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean over layers of the MSE between the student's and the teacher's layer outputs, over the real (unpadded) tokens."""
    m = attention_mask.unsqueeze(-1).float()
    per = [(((s.float() - t.float()) ** 2) * m).sum() / (m.sum() * s.shape[-1]) for s, t in zip(student, teacher)]
    return torch.stack(per).mean()


def _end_epoch(loop: _Loop, epoch: int) -> None:
    """The epoch's dev pass, its history entry, the best epoch so far; then (with a checkpointer) a checkpoint."""
    st, cfg, task = loop.state, loop.cfg, loop.task
    keep = masking.set_keep_(loop.model, st.step / loop.total)  # where the neuron / head schedules stand after this epoch
    logits = predict(loop.model, loop.dev_enc, loop.pad_id, bf16=cfg.bf16)
    dev_metrics = metrics.compute(task, logits, loop.dev.labels)
    density = masking.densities(loop.model)[1] if cfg.mode == "structure" else 1.0
    kept = {f"{unit}_keep": k for unit, k in keep.items() if loop.keep_target[unit] < 1.0}
    rec = Epoch(epoch, float(np.mean(st.losses)), dev_metrics, density, time.perf_counter() - loop.epoch_t0, **kept)
    pruning = any(k > loop.keep_target[unit] + 1e-9 for unit, k in keep.items())  # an epoch before the schedules' end is not selectable
    st.history.append(rec)
    loop.bar.set_postfix(loss=f"{rec.loss:.4f}", **{f"dev_{task.metric}": f"{dev_metrics[task.metric]:.4f}"}, density=f"{density:.3f}")
    loop.bar.close()
    log.info("epoch %d: loss %.4f dev %s density %.4f (%.0f s)", epoch, rec.loss, dev_metrics, density, rec.seconds)
    if not pruning and (cfg.select == "last" or dev_metrics[task.metric] > st.best_metric):  # only epochs at the final sparsity
        st.best_metric, st.best_epoch = dev_metrics[task.metric], epoch
        st.best_state = _trainable_state(loop.model, cfg)
    st.epoch, st.batch, st.order, st.losses = epoch + 1, 0, None, []
    if loop.checkpoint:  # every epoch's end (the last one too: an export that fails does not cost the training)
        _save(loop, True)


def _save(loop: _Loop, due: bool) -> None:
    """Save if due or asked to stop (then raise Interrupted); every process reaches this at each step, so all stop together."""
    stop = distributed.any_true(loop.checkpoint.stop_requested, loop.device)
    if (due or stop) and distributed.is_main():
        st = loop.state
        progress = dataclasses.replace(
            st, losses=list(st.losses), history=list(st.history), seconds=st.seconds + time.perf_counter() - loop.t_start
        )
        loop.checkpoint.save(
            TrainingState(
                progress, _trainable_state(loop.model, loop.cfg), loop.opt.state_dict(), loop.sched.state_dict(), rng_state(loop.rng)
            )
        )
    if stop:
        raise Interrupted(loop.checkpoint.path, loop.state.step)
