"""Remove dead FFN neurons and attention heads before export, so that structured sparsity makes the graph smaller and faster.

An FFN computes W2 · act(W1 x + b1) + b2. When the mask prunes the whole column j of W2 (as
`MaskConfig.ffn_keep` learns to), intermediate neuron j contributes nothing: row j of W1, b1[j] and
column j of W2 are removed, exactly. Likewise a head whose block of input columns of the attention
output projection is pruned whole (`MaskConfig.heads_keep`) contributes nothing: its Q/K/V rows and
those columns are removed (what Hugging Face's `prune_heads` did before transformers 5 dropped it), and ONNX Runtime's Attention
fusion takes
each layer's remaining head count. Zeros inside a matrix never speed up ONNX Runtime's kernels;
a smaller matrix does.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

import numpy as np
import torch

from compress import masking
from compress.qweight import QWeight

log = logging.getLogger(__name__)
PAD = 16


def ffn_pairs(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(first, second) projection names of every FFN of the model."""
    try:
        size = masking.intermediate_size(model)
    except ValueError:
        return []
    linears = {
        n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, masking.MaskedLinear)) and n.startswith("encoder.")
    }
    return pairs({n: tuple(m.weight.shape) for n, m in linears.items()}, size)


def pairs(shapes: dict[str, tuple[int, int]], size: int) -> list[tuple[str, str]]:
    """(first, second) projection names of every FFN, from the linears' [out, in] shapes: the second takes
    the intermediate size in (and gives something else out), the first is the one linear of the same
    transformer layer that gives it out."""
    out = []
    for second, (out_f, in_f) in shapes.items():
        if in_f != size or out_f == size:
            continue
        layer = re.match(r"(.*\.\d+)\.", second)
        firsts = [n for n, (o, _) in shapes.items() if o == size and layer and n.startswith(layer.group(1) + ".")]
        if len(firsts) == 1:
            out.append((firsts[0], second))
    return out


@dataclass(frozen=True, eq=False)
class Removed:
    """Units that left the graph: rows `keep` of the `rows` projections and columns `keep` of `second` remain. An FFN's
    neurons (rows: its first projection), or an attention's heads, as their channels (rows: its Q, K and V projections;
    second: its output projection)."""

    rows: tuple[str, ...]
    second: str
    keep: np.ndarray  # sorted indices: the live ones (FFN: padded with dead ones to a multiple of 16)
    alive: np.ndarray  # bool per kept index: False for the padding (zero weights and bias)
    total: int  # indices before
    unit: str = "neurons"  # "neurons" or "channels" (of the heads kept): names its tensors in a pack's task graph
    group: int = 1  # indices per unit counted: a head's channels

    def counts(self) -> list[int]:
        """[units kept, units before] (what the manifest records: FFN neurons, padding included; attention heads)."""
        return [int(self.keep.size) // self.group, self.total // self.group]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def drop_dead(model: torch.nn.Module, linears: dict[str, QWeight]) -> tuple[torch.nn.Module, dict[str, QWeight], dict[str, Removed]]:
    """-> (folded model with the dead neurons removed, integer weights to match, {second projection: what was removed}).

    The model is returned folded (masks multiplied in, plain Linear layers); `model` is not changed.
    A second projection quantized in groups along its inputs keeps its dead columns (as zeros): removing
    columns would split its groups.
    """
    folded = masking.folded(model)
    linears = dict(linears)
    kept = {}
    for first, second in ffn_pairs(folded):
        w1, w2 = folded.get_submodule(first), folded.get_submodule(second)
        q2 = linears.get(second)
        alive = (q2.codes != 0).any(0) if q2 is not None else (w2.weight != 0).any(0).numpy()
        if alive.all():
            continue
        if q2 is not None and q2.group_size is not None:
            log.warning(
                "%s: %d dead FFN neurons kept as zeros (its scales are per group of %d inputs; "
                "per-channel quantization lets the export remove them)",
                second,
                int((~alive).sum()),
                q2.group_size,
            )
            continue
        # kept: the live neurons, padded with dead ones (zero columns) to a multiple of 16, which integer
        # kernels like and MatMulNBits needs (blocks of >= 16 inputs)
        live = int(alive.sum())
        pad = (-live) % PAD if live else PAD  # an FFN with every neuron dead still needs a (zero) matmul
        keep = np.sort(np.concatenate([np.flatnonzero(alive), np.flatnonzero(~alive)[:pad]]))
        idx, padding = torch.from_numpy(keep), torch.from_numpy(~alive[keep])
        parent1, _, a1 = first.rpartition(".")
        parent2, _, a2 = second.rpartition(".")
        # padding neurons get zero input weights and bias too: act(0) = 0 for GELU/ReLU, so they add nothing to the
        # activation ranges that the int8 kernel quantizes with
        w1_rows, b1 = w1.weight[idx].masked_fill(padding[:, None], 0.0), None if w1.bias is None else w1.bias[idx].masked_fill(padding, 0.0)
        setattr(folded.get_submodule(parent1), a1, _linear(w1_rows, b1))
        setattr(folded.get_submodule(parent2), a2, _linear(w2.weight[:, idx], w2.bias))
        if first in linears:
            linears[first] = linears[first].rows(keep).masked(np.broadcast_to(alive[keep][:, None], (keep.size, w1.weight.shape[1])))
        if q2 is not None:
            linears[second] = dataclasses.replace(q2, codes=np.ascontiguousarray(q2.codes[:, keep]))
        kept[second] = Removed((first,), second, keep, alive[keep], int(alive.size))
    if kept:
        log.info("removed dead FFN neurons: %s", {k: "{}/{}".format(*r.counts()) for k, r in kept.items()})
    return folded, linears, kept


def drop_dead_heads(folded: torch.nn.Module, linears: dict[str, QWeight]) -> tuple[dict[str, QWeight], dict[str, Removed]]:
    """Remove, in place from the folded model, every attention head whose output columns are all pruned; -> (integer
    weights to match, {attention output projection: the channels of the heads kept} for the layers that lost heads).

    A layer keeps at least one head (a dead one contributes zeros: still exact). An output projection quantized in
    groups that do not fit inside a head keeps its dead heads (as zeros)."""
    linears = dict(linears)
    out = {}
    for name, lin in list(folded.named_modules()):
        found = masking.attention_of(name)
        if found is None or not isinstance(lin, torch.nn.Linear):
            continue
        att_name, projections = found
        att = folded.get_submodule(att_name)
        q = linears.get(name)
        alive_cols = (q.codes != 0).any(0) if q is not None else (lin.weight != 0).any(0).numpy()
        heads = _num_heads(folded, att)
        size = alive_cols.size // heads
        alive = alive_cols.reshape(heads, size).any(1)
        if alive.all():
            continue
        if not alive.any():
            alive[0] = True
        cols = np.concatenate([np.arange(h * size, (h + 1) * size) for h in np.flatnonzero(alive)])
        if q is not None:
            try:
                linears[name] = q.cols(cols)
            except ValueError:
                log.warning(
                    "%s: %d dead attention heads kept as zeros (its scales are per group of %d inputs, which a head of %d "
                    "does not hold whole)",
                    name,
                    int((~alive).sum()),
                    q.group_size,
                    size,
                )
                continue
        for proj in projections:
            if proj in linears:
                linears[proj] = linears[proj].rows(cols)
        _remove_heads(folded, att, projections, name, cols, int(alive.sum()))
        out[name] = Removed(projections, name, cols, np.ones(cols.size, bool), alive_cols.size, unit="channels", group=size)
    if out:
        log.info("removed dead attention heads: %s", {k: "{}/{}".format(*r.counts()) for k, r in out.items()})
    return linears, out


def _remove_heads(
    model: torch.nn.Module, att: torch.nn.Module, projections: tuple[str, str, str], output: str, cols: np.ndarray, heads: int
) -> None:
    """Q, K and V keep their rows `cols`, the output projection its columns `cols`, and the attention module its new head count
    (what Hugging Face's prune_heads did, with the same weights, in any transformers version)."""
    idx = torch.from_numpy(cols.astype(np.int64))
    for name, dim in [*((p, 0) for p in projections), (output, 1)]:
        lin = model.get_submodule(name)
        bias = None if lin.bias is None else lin.bias.detach().clone() if dim == 1 else lin.bias[idx].detach().clone()
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, _linear(lin.weight.index_select(dim, idx).detach().clone(), bias))
    size = cols.size // heads
    for mod in (getattr(att, "self", None), att):
        for key in ("num_attention_heads", "n_heads", "num_heads"):
            if mod is not None and isinstance(getattr(mod, key, None), int):
                setattr(mod, key, heads)
        if mod is not None and isinstance(getattr(mod, "all_head_size", None), int):
            mod.all_head_size = size * heads


def head_counts(model: torch.nn.Module) -> dict[str, int]:
    """Q projection -> its attention's current head count, for every attention module (after drop_dead_heads: the heads left)."""
    out = {}
    for name in [n for n, _ in model.named_modules()]:
        if (found := masking.attention_of(name)) is not None:
            att_name, (q, _, _) = found
            out[q] = _num_heads(model, model.get_submodule(att_name))
    return out


def _num_heads(model: torch.nn.Module, att: torch.nn.Module) -> int:
    """The attention module's current head count (Hugging Face keeps it on the module, its config has the original)."""
    for mod in (getattr(att, "self", None), att):
        for key in ("num_attention_heads", "n_heads", "num_heads"):
            if mod is not None and isinstance(getattr(mod, key, None), int):
                return getattr(mod, key)
    return model.encoder.config.num_attention_heads
