"""Training checkpoints: a killed or interrupted `compress run` continues where it stopped.

The checkpoint is one file, ``.<out>.partial/checkpoint.pt`` beside the output directory, replaced
atomically (written to a temporary file, then renamed) every ``every`` optimizer steps, at the end of
every epoch, when training ends and when SIGINT/SIGTERM arrives. It holds everything the loop's next
step depends on: the trainable tensors (mask scores and head, or every weight in mode=weights), the
optimizer and scheduler state, the RNG states (torch, CUDA, the data-order generator), the epoch's
data order, epoch and step, the loss so far and the best-epoch bookkeeping. Rerunning the same
command continues from it and ends at the same mask, bit for bit, as a run that was never stopped
(same machine, same thread count). A run that publishes its artifact removes the work directory; a
checkpoint made with other settings is refused, naming the settings that differ.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FILE = "checkpoint.pt"
RESUME = ("auto", "require", "restart")
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: other settings, another version, unreadable, or missing when required."""


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during training: the checkpoint was saved first (``path``)."""

    def __init__(self, path: Path, step: int):
        super().__init__(f"interrupted at step {step}: the training state is saved in {path}; rerun the same command to continue")
        self.path, self.step = path, step


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 200  # optimizer steps between checkpoints (0: only at epoch ends and on SIGINT/SIGTERM)
    resume: str = "auto"  # auto: continue a checkpoint made with the same settings, else start; require: fail without one; restart: discard it
    enabled: bool = True

    def __post_init__(self):
        if self.every < 0:
            raise CheckpointError(f"checkpoint every {self.every} steps: use 0 (epoch ends only) or a positive number")
        if self.resume not in RESUME:
            raise CheckpointError(f"resume '{self.resume}' is not one of {RESUME}")


def work_dir(out: Path) -> Path:
    """Where a run keeps its checkpoint until the artifact is published: a hidden sibling of the output."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(repr(sorted(_flatten(settings).items())).encode()).hexdigest()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(have: dict, want: dict) -> list[str]:
    """'key: checkpoint X, this run Y' for every setting that differs."""
    a, b = _flatten(have), _flatten(want)
    return [f"{k}: checkpoint {a.get(k)!r}, this run {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


class Checkpointer:
    """Saves and restores one run's training state (see the module docstring)."""

    def __init__(self, directory: Path, settings: dict, config: CheckpointConfig = CheckpointConfig()):
        self.directory, self.settings, self.config = Path(directory), settings, config
        self.path = self.directory / FILE
        self.stop_requested = False

    def due(self, step: int) -> bool:
        return self.stop_requested or (self.config.every > 0 and step % self.config.every == 0)

    def save(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}.tmp")
        try:
            torch.save({"version": VERSION, "settings": self.settings, **state}, tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:  # e.g. a full disk: training goes on; the previous checkpoint stays whole
            tmp.unlink(missing_ok=True)
            log.warning("checkpoint at step %d not saved (%s): training goes on; %s keeps the previous one", state["step"],
                        str(e).splitlines()[0][:120], self.path)
            return
        log.info("checkpoint: step %d saved to %s", state["step"], self.path)

    def restore(self) -> dict | None:
        """The saved state, or None (no checkpoint, or resume='restart'); other settings raise CheckpointError."""
        if self.config.resume == "restart":
            self.remove()
            return None
        if not self.path.is_file():
            if self.config.resume == "require":
                raise CheckpointError(f"--resume: there is no checkpoint at {self.path} (none was saved, or the run finished): "
                                      "run without --resume to start")
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            raise CheckpointError(f"checkpoint {self.path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}): "
                                  "pass --restart to discard it") from None
        if state.get("version") != VERSION:
            raise CheckpointError(f"checkpoint {self.path} has version {state.get('version')}, this compress writes {VERSION}: "
                                  "pass --restart to discard it")
        if diff := differences(state["settings"], self.settings):
            raise CheckpointError(f"checkpoint {self.path} was made with other settings ({'; '.join(diff[:4])}): rerun with its "
                                  "settings to continue it, or pass --restart to discard it")
        log.warning("resuming from %s: epoch %d, step %d", self.path, state["epoch"], state["step"])
        return state

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
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "order": generator.bit_generator.state}


def set_rng_state_(state: dict, generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.bit_generator.state = state["order"]
