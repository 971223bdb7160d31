"""Memory before training: estimate what mask learning (or fine-tuning) needs on top of the loaded model, compare it with
what the machine (or the GPU) has free, and stop with an error naming what to lower instead of being killed mid-run.

The estimate (bytes) adds, for the trainable tensors T (mask scores + head, or every weight in mode=weights, fp32):
gradients, AdamW's two moments, the best epoch's copy and the checkpoint being written (5 T); per masked linear, the
binary mask, the masked weight and its bf16 copy kept for the backward pass (MASK_BYTES per weight); per layer the
activations kept for the backward pass, b*s*(ACT_HIDDEN*h + ACT_FFN*i) + ACT_ATTN*b*heads*s^2 bytes (b batch, s tokens,
h hidden, i FFN width); and a fixed OVERHEAD (autograd and oneDNN workspaces). The constants are fitted to the peak
resident memory of training steps on MiniLM and a bert-base-shaped model at 32x128 and 8x384
(benchmarks/memory_estimate.py prints estimate against measurement).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import CompressError
from compress.manifest import Stage

log = logging.getLogger(__name__)
ACT_HIDDEN, ACT_FFN, ACT_ATTN = 15, 6, 10  # bytes per token and unit; per attention score
MASK_BYTES = 13
OVERHEAD = 500_000_000
MARGIN = 1.15  # allocator fragmentation and what the estimate leaves out


class ResourceError(CompressError, RuntimeError):
    """Training would not fit in the memory that is free."""


@dataclass(frozen=True)
class Estimate:
    trainable: int  # gradients, optimizer moments, best-epoch and checkpoint copies
    masks: int  # per masked linear during a step
    activations: int  # kept for the backward pass, per step (with the fixed overhead)
    device: str

    @property
    def total(self) -> int:
        return int(MARGIN * (self.trainable + self.masks + self.activations))


def estimate(model: torch.nn.Module, batch_size: int, max_length: int, device: str = "cpu") -> Estimate:
    from compress import masking

    cfg = model.encoder.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    masked = sum(m.weight.numel() for m in masking.masked_layers(model).values())
    if not masked:  # mode=weights: every weight trains
        trainable = sum(p.numel() for p in model.parameters()) * 4
    b, s = batch_size, max_length
    layers, h, i, heads = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    act = layers * (b * s * (ACT_HIDDEN * h + ACT_FFN * i) + ACT_ATTN * b * heads * s * s)
    return Estimate(5 * trainable, MASK_BYTES * masked, act + OVERHEAD, device)


def available(device: torch.device) -> int:
    """Bytes that can still be allocated: the GPU's free memory, or the host's MemAvailable capped by a cgroup limit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = _meminfo_available()
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap, cur = Path(limit).read_text().strip(), int(Path(used).read_text())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:
            free = min(free, int(cap) - cur)
        break
    return free


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check(model: torch.nn.Module, batch_size: int, max_length: int, device: torch.device) -> Estimate:
    """Raise ResourceError, naming what to lower, when the estimate exceeds the free memory; else return the estimate."""
    est = estimate(model, batch_size, max_length, device.type)
    free = available(device)
    gb = lambda n: f"{n / 1e9:.1f} GB"
    log.info(
        "memory for training: about %s (trainable state %s, masks %s, activations %s); %s free on %s",
        gb(est.total),
        gb(est.trainable),
        gb(est.masks),
        gb(est.activations),
        gb(free),
        device,
    )
    if est.total > free:
        per_example = (est.activations - OVERHEAD) / batch_size
        fits = int(max(0, free / MARGIN - est.trainable - est.masks - OVERHEAD) / max(per_example, 1))
        lower = f"lower --batch-size (about {fits} fits) or --max-length" if fits else "lower --max-length"
        where = "the GPU" if device.type == "cuda" else "this machine"
        raise ResourceError(
            f"training needs about {gb(est.total)} (activations of batch {batch_size} x {max_length} tokens {gb(est.activations)}, "
            f"trainable state {gb(est.trainable)}, masks {gb(est.masks)}) but {where} has {gb(free)} free: {lower}, "
            "or use a smaller --model"
        )
    return est


def rss() -> int:
    """This process's resident memory in bytes (Linux /proc; elsewhere the peak so far)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StageMeter:
    """Wall time and peak resident memory of each pipeline stage (a thread samples the resident memory every 20 ms).

    start(name) ends the stage before; stop() ends the last; ``stages`` = {name: compress.manifest.Stage}."""

    def __init__(self, on_stage=None):
        import threading

        self.stages: dict[str, Stage] = {}
        self._on_stage, self._name, self._peak, self._t0 = on_stage, None, 0, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self._peak = max(self._peak, rss())

    def start(self, name: str) -> None:
        import time

        self._end()
        if self._on_stage:
            self._on_stage(name)
        self._name, self._peak, self._t0 = name, rss(), time.perf_counter()

    def _end(self) -> None:
        import time

        if self._name is not None:
            self._peak = max(self._peak, rss())
            st = self.stages[self._name] = Stage(round(time.perf_counter() - self._t0, 2), round(self._peak / 1e9, 3))
            log.info("stage %s: %.1f s, peak resident memory %.2f GB", self._name, st.seconds, st.peak_rss_gb)
        self._name = None

    def stop(self) -> dict[str, Stage]:
        self._end()
        self._done.set()
        return self.stages
