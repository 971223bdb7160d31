"""Training checkpoints: a killed or interrupted `compress run` continues where it stopped.

The checkpoint is one file, ``.<out>.partial/checkpoint.pt`` beside the output directory, replaced
atomically (written to a temporary file, then renamed) every ``every`` optimizer steps, at the end of
every epoch, when training ends and when SIGINT/SIGTERM arrives. It holds a ``TrainingState``: where the
loop stands (``Progress``: epoch, step, the epoch's data order, the losses so far, the history and the
best epoch) and the state of what it updates (the trainable tensors: mask scores and head, or every weight
in mode=weights; the optimizer, the scheduler and the RNG states). ``save`` and ``restore`` are its one
writer and reader. Rerunning the same command continues from it and ends at the same mask, bit for bit, as
a run that was never stopped (same machine, same thread count). A run that publishes its artifact removes
the work directory; a checkpoint made with other ``CheckpointSettings`` is refused, naming the fields that
differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress import typed
from compress.configs import CheckpointConfig, DistillConfig, MaskConfig, QuantConfig, TrainConfig
from compress.errors import CompressError
from compress.manifest import Epoch

log = logging.getLogger(__name__)
FILE = "checkpoint.pt"
VERSION = 1


class CheckpointError(CompressError, ValueError):
    """A checkpoint that cannot be used: other settings, another version, unreadable, or missing when required."""


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during training: the checkpoint was saved first (``path``)."""

    def __init__(self, path: Path, step: int):
        super().__init__(f"interrupted at step {step}: the training state is saved in {path}; rerun the same command to continue")
        self.path, self.step = path, step


@dataclass(frozen=True)
class TrainData:
    examples: int
    sha256: str  # of the training rows (texts and labels), in order


@dataclass(frozen=True)
class CheckpointSettings:
    """What a checkpoint must share with the run that continues it: everything that shapes training, the data itself and
    the number of torchrun processes (not where outputs go, export options, threads or benchmarking)."""

    model: str
    task: str
    pooling: str | None
    quant: QuantConfig
    mask: MaskConfig
    train: TrainConfig
    init_from: str | None
    backbone_sha256: str | None
    train_data: TrainData
    processes: int  # torchrun processes share each batch: another count, another data order
    distill: DistillConfig | None = None  # and the teacher's trainable.safetensors SHA-256: another teacher, another loss
    teacher_sha256: str | None = None


@dataclass
class Progress:
    """Where the training loop stands: the next step's position and what the epochs so far decided."""

    step: int = 0  # optimizer steps taken
    epoch: int = 1  # the epoch being run (or next)
    batch: int = 0  # its next batch
    order: np.ndarray | None = None  # its data order (None: draw one when it starts)
    losses: list[float] = field(default_factory=list)  # its losses so far
    history: list[Epoch] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None  # the trainable tensors of the best epoch
    seconds: float = 0.0  # training time before this process continued


@dataclass
class TrainingState:
    """A checkpoint's contents."""

    progress: Progress
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: dict  # rng_state()

    def to_file(self) -> dict:
        """Plain tensors, numbers and lists (torch.load's weights_only reads them back); the keys of VERSION 1 files."""
        p = self.progress
        return {
            "step": p.step,
            "epoch": p.epoch,
            "batch": p.batch,
            "order": None if p.order is None else torch.from_numpy(p.order),
            "losses": list(p.losses),
            "history": [dataclasses.asdict(h) for h in p.history],
            "best_epoch": p.best_epoch,
            "best_metric": p.best_metric,
            "best_state": p.best_state,
            "seconds": p.seconds,
            "trainable": self.trainable,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "rng": self.rng,
        }

    @classmethod
    def from_file(cls, d: dict) -> TrainingState:
        progress = Progress(
            d["step"],
            d["epoch"],
            d["batch"],
            None if d["order"] is None else d["order"].numpy(),
            list(d["losses"]),
            [Epoch(**h) for h in d["history"]],
            d["best_epoch"],
            d["best_metric"],
            d["best_state"],
            d["seconds"],
        )
        return cls(progress, d["trainable"], d["optimizer"], d["scheduler"], d["rng"])


def work_dir(out: Path) -> Path:
    """Where a run keeps its checkpoint until the artifact is published: a hidden sibling of the output."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


class Checkpointer:
    """Saves and restores one run's training state (see the module docstring)."""

    def __init__(self, directory: Path, settings: CheckpointSettings, config: CheckpointConfig = CheckpointConfig()):
        self.directory, self.settings, self.config = Path(directory), settings, config
        self.path = self.directory / FILE
        self.stop_requested = False

    def due(self, step: int) -> bool:
        return self.stop_requested or (self.config.every > 0 and step % self.config.every == 0)

    def save(self, state: TrainingState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}.tmp")
        try:
            torch.save({"version": VERSION, "settings": dataclasses.asdict(self.settings), **state.to_file()}, tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:  # e.g. a full disk: training goes on; the previous checkpoint stays whole
            tmp.unlink(missing_ok=True)
            log.warning(
                "checkpoint at step %d not saved (%s): training goes on; %s keeps the previous one",
                state.progress.step,
                str(e).splitlines()[0][:120],
                self.path,
            )
            return
        log.info("checkpoint: step %d saved to %s", state.progress.step, self.path)

    def restore(self) -> TrainingState | None:
        """The saved state, or None (no checkpoint, or resume='restart'); other settings raise CheckpointError."""
        if self.config.resume == "restart":
            self.remove()
            return None
        if not self.path.is_file():
            if self.config.resume == "require":
                raise CheckpointError(
                    f"--resume: there is no checkpoint at {self.path} (none was saved, or the run finished): run without --resume to start"
                )
            return None
        d = self._read()
        if diff := typed.differences(self._settings(d), self.settings):
            named = [f"{k}: checkpoint {a!r}, this run {b!r}" for k, a, b in diff]
            raise CheckpointError(
                f"checkpoint {self.path} was made with other settings ({'; '.join(named[:4])}): rerun with its "
                "settings to continue it, or pass --restart to discard it"
            )
        log.warning("resuming from %s: epoch %d, step %d", self.path, d["epoch"], d["step"])
        return TrainingState.from_file(d)

    def _read(self) -> dict:
        try:
            d = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}): pass --restart to discard it"
            ) from None
        if not isinstance(d, dict) or d.get("version") != VERSION:
            raise CheckpointError(
                f"checkpoint {self.path} has version {d.get('version') if isinstance(d, dict) else None}, this compress "
                f"writes {VERSION}: pass --restart to discard it"
            )
        return d

    def _settings(self, d: dict) -> CheckpointSettings:
        try:
            return typed.load(CheckpointSettings, d.get("settings"))
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {self.path} records settings this compress does not know ({str(e).splitlines()[0][:120]}): "
                "pass --restart to discard it"
            ) from None

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    @contextlib.contextmanager
    def signals(self):
        """While training: SIGINT/SIGTERM ask for a checkpoint at the next step boundary (then ``Interrupted``);
        a second signal stops at once. Only in the main thread (elsewhere signals stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("%s: saving a checkpoint at the end of this step (send it again to stop at once)", signal.Signals(signum).name)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def rng_state(generator) -> dict:
    """Every random state training consumes: torch (dropout), CUDA, and the numpy generator that orders the data."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "order": generator.bit_generator.state,
    }


def set_rng_state_(state: dict, generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.bit_generator.state = state["order"]
