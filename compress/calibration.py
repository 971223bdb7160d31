"""Calibration text and what the layers see of it.

Two sources, chosen by the caller (``QuantConfig.calibration``):
  task     the first training examples of the task (``tokens``): the export's activation smoothing
           always, and GPTQ for a task's own quantization. Saved in the artifact (calibration.npz),
           so a re-export needs no data.
  general  the general English text this package ships (``general_tokens``, compress/data/: WordNet
           3.0 usage examples, see its README): GPTQ for a backbone that every task shares.
Used by GPTQ (input Hessians) and by the export's activation smoothing (input channel ranges).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compress.errors import ConfigError

GENERAL_TEXT = Path(__file__).parent / "data" / "general_text.txt"
SENTENCES_PER_EXAMPLE = 4


def tokens(tok, split, examples: int, max_length: int) -> dict[str, np.ndarray]:
    """The first `examples` examples of a task split, tokenized and right-padded (int32)."""
    sub = split.subset(examples)
    enc = tok(sub.text_a, sub.text_b, truncation=True, max_length=max_length)
    enc = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return _padded(tok, enc)


def general_sentences() -> list[str]:
    return GENERAL_TEXT.read_text(encoding="utf-8").splitlines()


def general_tokens(tok, examples: int, max_length: int) -> dict[str, np.ndarray]:
    """`examples` calibration inputs from the package's general text, four sentences each: every other
    one a single text, the others a pair of two sentences each (token types 0 and 1), like the tasks'
    one- and two-sentence inputs."""
    sents = general_sentences()
    n = SENTENCES_PER_EXAMPLE
    if examples * n > len(sents):
        raise ConfigError(
            f"{examples} general calibration examples need {examples * n} sentences; {GENERAL_TEXT} has {len(sents)}: "
            f"calibrate on at most {len(sents) // n}"
        )
    groups = [sents[i * n : (i + 1) * n] for i in range(examples)]
    singles = tok([" ".join(g) for g in groups[0::2]], truncation=True, max_length=max_length)
    enc = {k: list(v) for k, v in singles.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if groups[1::2]:
        pairs = tok(
            [" ".join(g[: n // 2]) for g in groups[1::2]],
            [" ".join(g[n // 2 :]) for g in groups[1::2]],
            truncation=True,
            max_length=max_length,
        )
        for k in enc:
            enc[k] += pairs[k]
    return _padded(tok, enc)


def _padded(tok, enc) -> dict[str, np.ndarray]:
    from compress.runtimes.evaluate import pad

    return {k: v.astype(np.int32) for k, v in pad(enc, range(len(enc["input_ids"])), tok.pad_token_id or 0).items()}


def batches(arrays: dict[str, np.ndarray] | None, batch_size: int = 32) -> list[dict[str, torch.Tensor]] | None:
    if arrays is None:
        return None
    n = len(arrays["input_ids"])
    return [{k: torch.from_numpy(v[s : s + batch_size].astype(np.int64)) for k, v in arrays.items()} for s in range(0, n, batch_size)]


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
