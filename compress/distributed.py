"""Mask learning on several processes (GPUs or hosts) with PyTorch's DistributedDataParallel, launched by `torchrun`.

    torchrun --nproc-per-node 4 -m compress.cli run --model bert-base --task mnli ...          # 4 GPUs of one host
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m compress.cli run ...

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; with WORLD_SIZE > 1 the run joins the process group (NCCL on CUDA, gloo on the
CPU), every process builds the same quantized model (same seed, same codes), and each takes its share of every batch:
the global batch stays --batch-size, so the learning rates keep their meaning. DDP averages the gradients of the
trainable tensors (mask scores and head); the frozen weights are buffers and are not synchronised (they are equal by
construction). Every process evaluates the dev set (the parameters are equal, so every process picks the same best
epoch); process 0 alone writes the checkpoint and the artifact.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)
_OWNED = False  # whether init() made the process group (a caller's own group is left alone)


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> None:
    """Join the process group torchrun describes (once); nothing without WORLD_SIZE > 1."""
    import torch.distributed as dist

    global _OWNED
    if world() > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        _OWNED = True
        log.info("process %d of %d (%s)", rank(), world(), backend)


def device(requested: torch.device) -> torch.device:
    """Under torchrun, CUDA means this process's GPU (LOCAL_RANK)."""
    if world() > 1 and requested.type == "cuda" and requested.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return requested


def wrap(model: torch.nn.Module, dev: torch.device, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel over the trainable tensors; the model itself when there is one process."""
    if world() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False, find_unused_parameters=find_unused
    )


def shard(indices):
    """This process's share of a batch's example indices (every process gets at least one)."""
    w, r = world(), rank()
    if w == 1:
        return indices
    part = indices[r::w]
    return part if len(part) else indices[r % len(indices) :][:1]


def any_true(flag: bool, dev: torch.device) -> bool:
    """Whether any process has the flag set (a stop request must stop all processes at the same step)."""
    if world() == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def finish(synchronize: bool = True) -> None:
    """Leave the process group init() made: all processes together (a barrier first, as PyTorch advises) when all got here
    normally; at once after an error (another process may never reach a barrier; torchrun stops them all)."""
    global _OWNED
    import gc

    import torch.distributed as dist

    if _OWNED and dist.is_initialized():
        gc.collect()  # DistributedDataParallel's reducer sits in reference cycles: free it while its group still exists
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
    _OWNED = False
