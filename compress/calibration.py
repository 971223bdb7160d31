"""Calibration text: tokens of the first training examples, and what the layers see of them.

Used by GPTQ (input Hessians) and by the export's activation smoothing (input channel ranges).
The tokens are saved in the artifact (calibration.npz), so a re-export needs no data.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

FILE = "calibration.npz"


def tokens(tok, split, examples: int, max_length: int) -> dict[str, np.ndarray]:
    """The first `examples` examples of a task split, tokenized and right-padded (int32)."""
    from compress.runtimes.evaluate import pad

    sub = split.subset(examples)
    enc = tok(sub.text_a, sub.text_b, truncation=True, max_length=max_length)
    enc = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return {k: v.astype(np.int32) for k, v in pad(enc, range(len(enc["input_ids"])), tok.pad_token_id or 0).items()}


def batches(arrays: dict[str, np.ndarray] | None, batch_size: int = 32) -> list[dict[str, torch.Tensor]] | None:
    if arrays is None:
        return None
    n = len(arrays["input_ids"])
    return [{k: torch.from_numpy(v[s:s + batch_size].astype(np.int64)) for k, v in arrays.items()} for s in range(0, n, batch_size)]


@torch.no_grad()
def collect_inputs(model: torch.nn.Module, names: list[str], batches_, update: Callable[[str, torch.Tensor], None]) -> None:
    """Run the batches through the model; for each named module call update(name, x) with its input
    rows at non-padding tokens, x [tokens, in_features] (float32)."""
    keep: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            update(name, inputs[0][keep["mask"]].float())
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        model.eval()
        for batch in batches_:
            keep["mask"] = batch["attention_mask"].bool()
            model(**batch)
    finally:
        for h in handles:
            h.remove()


def input_absmax(model: torch.nn.Module, names: list[str], batches_) -> dict[str, np.ndarray]:
    """Per input channel max |x| of each named module over the calibration tokens."""
    out: dict[str, torch.Tensor] = {}

    def update(name, x):
        m = x.abs().amax(0)
        out[name] = torch.maximum(out[name], m) if name in out else m

    collect_inputs(model, names, batches_, update)
    return {k: v.numpy() for k, v in out.items()}
