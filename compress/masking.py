"""Learn a binary mask over frozen weights ("fine-tuning by sparsification").

Each target Linear becomes a MaskedLinear: its (already quantized) weight and bias are frozen
buffers, and a real-valued score per weight is the only thing learned. The forward pass uses the
hard mask ``scores > threshold``; the backward pass is straight-through (d mask / d score = 1).
With ``nm=(2, 4)`` the mask keeps the 2 highest scores in every group of 4 along the input
dimension (NVIDIA 2:4 structured sparsity).

With ``ffn_keep=f`` each FFN also learns one score per intermediate neuron and keeps the best
fraction f of them (top-k, straight-through): a dropped neuron's column of the FFN's second
projection is masked entirely, so the exporter can remove the neuron from both projections and the
exported matmuls get smaller (faster on any runtime). With ``heads_keep=h`` each self-attention
learns one score per head (on the head's block of input columns of the attention output projection)
and keeps the best fraction h of every layer's heads: a dropped head's Q/K/V rows and output columns
leave the exported graph. Both kept fractions fall from 1 to their target along a cubic schedule over
the first ``ffn_ramp`` of training, so the pretrained network is not cut at once.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F

from compress import maskcodec
from compress.configs import MaskConfig
from compress.errors import ConfigError
from compress.quantize import target_linears

log = logging.getLogger(__name__)


def _binarize(scores: torch.Tensor, threshold: float, nm: tuple[int, int] | None) -> torch.Tensor:
    if nm is None:
        return (scores > threshold).to(scores.dtype)
    n, m = nm
    rows, cols = scores.shape
    g = scores.detach().reshape(rows, cols // m, m)
    keep = torch.zeros_like(g).scatter_(-1, g.topk(n, dim=-1).indices, 1.0)
    return keep.reshape(rows, cols)


def _top_k(scores: torch.Tensor, keep: float) -> torch.Tensor:
    k = max(1, round(keep * scores.numel()))
    if k >= scores.numel():
        return torch.ones_like(scores)
    return torch.zeros_like(scores).scatter_(0, scores.detach().topk(k).indices, 1.0)


class MaskedLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, config: MaskConfig, unit: str | None = None, unit_size: int = 1):
        """unit: also learn one score per block of `unit_size` inputs and keep the top fraction `keep` of the blocks;
        "ffn": an FFN's second projection, a block per intermediate neuron; "heads": an attention output projection,
        a block per head (unit_size = the head size)."""
        super().__init__()
        self.config = config
        if config.nm and linear.in_features % config.nm[1]:
            raise ConfigError(f"in_features={linear.in_features} is not divisible by m={config.nm[1]} for N:M sparsity")
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        if config.nm is None:
            init = torch.empty_like(self.weight).uniform_(config.init_low, config.init_high)
        else:  # N:M starts from magnitude pruning: scores rank like |W| (scaled into the init range), not at random
            mag = self.weight.abs() / self.weight.abs().amax(1, keepdim=True).clamp(min=1e-12)
            init = config.init_low + (config.init_high - config.init_low) * mag
        self.scores = torch.nn.Parameter(init)
        self.neuron_scores = None
        self.unit, self.unit_size = unit, unit_size
        self.keep = 1.0  # kept fraction of the input blocks (neurons, heads); set by set_keep_ along the schedule
        if unit is not None:  # start ranked by the block's output-weight norm; learning reorders them
            if linear.in_features % unit_size:
                raise ConfigError(f"in_features={linear.in_features} is not a multiple of the {unit} block size {unit_size}")
            norms = self.weight.float().reshape(self.weight.shape[0], -1, unit_size).norm(dim=(0, 2))
            self.neuron_scores = torch.nn.Parameter(norms / norms.max().clamp(min=1e-12))

    def neuron_mask(self) -> torch.Tensor | None:
        """1/0 per input column: the columns of the kept blocks (None without blocks to prune)."""
        if self.neuron_scores is None:
            return None
        return _top_k(self.neuron_scores, self.keep).repeat_interleave(self.unit_size)

    def mask(self) -> torch.Tensor:
        hard = _binarize(self.scores, self.config.threshold, self.config.nm)
        neurons = self.neuron_mask()
        return hard if neurons is None else hard * neurons

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = _binarize(self.scores, self.config.threshold, self.config.nm)
        m = m + self.scores - self.scores.detach()  # straight-through estimator
        if self.neuron_scores is not None:
            n = self.neuron_mask()
            m = m * (n + (self.neuron_scores - self.neuron_scores.detach()).repeat_interleave(self.unit_size))
        return F.linear(x, self.weight * m.to(self.weight.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, nm={self.config.nm}"


def intermediate_size(model: torch.nn.Module) -> int:
    cfg = model.encoder.config
    size = getattr(cfg, "intermediate_size", None) or getattr(cfg, "hidden_dim", None)
    if not size:
        raise ConfigError(f"{cfg.model_type}: its config names no FFN intermediate size, so FFN neurons cannot be pruned; drop ffn_keep")
    return size


# the attention output projection of each transformer layer (its inputs are the heads' outputs), by architecture, and the
# Q/K/V projections beside it, relative to the layer's `attention` module (compress.exporters.neurons removes dead heads)
ATTENTION_OUTPUTS = {"attention.output.dense": ("self.query", "self.key", "self.value"), "attention.out_lin": ("q_lin", "k_lin", "v_lin")}


def attention_of(name: str) -> tuple[str, tuple[str, str, str]] | None:
    """An attention output projection's module name -> (its attention module's name, the names of that module's Q, K and
    V projections): 'x.attention.output.dense' -> ('x.attention', ('x.attention.self.query', ...)); None for any other linear."""
    suffix = next((k for k in ATTENTION_OUTPUTS if name.endswith(k)), None)
    if suffix is None:
        return None
    att = name[: -len(suffix)] + "attention"
    q, k, v = (f"{att}.{p}" for p in ATTENTION_OUTPUTS[suffix])
    return att, (q, k, v)


def transformer_layers(model):
    """The encoder's list of transformer layers (BERT's encoder.layer, DistilBERT's transformer.layer)."""
    for path in ("encoder.encoder.layer", "encoder.transformer.layer"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise ConfigError(
        f"{model.encoder.config.model_type}: no list of transformer layers (encoder.layer or transformer.layer): "
        "drop --speedup and --distill-hidden"
    )


def drop_layers_(model: torch.nn.Module, layers: int | None) -> list[str]:
    """Keep only the first `layers` transformer layers (None: all): the layers above leave the model, and the config says so.
    -> the module names of the layers removed."""
    if layers is None:
        return []
    stack = transformer_layers(model)
    if layers == len(stack):
        return []
    if layers > len(stack):
        raise ConfigError(f"--layers {layers}: the model has {len(stack)} transformer layers; keep {len(stack)} or fewer")
    prefix = next(n for n, m in model.named_modules() if m is stack)
    removed = [f"{prefix}.{i}" for i in range(layers, len(stack))]
    del stack[layers:]
    model.encoder.config.num_hidden_layers = layers  # DistilBERT's config maps it to n_layers
    log.info("kept the first %d transformer layers (%d removed)", layers, len(removed))
    return removed


def present(model: torch.nn.Module, tensors: dict) -> dict:
    """The entries of `tensors` (by module name) whose module the model still holds: after drop_layers_, not the removed ones."""

    def holds(name: str) -> bool:
        try:
            model.get_submodule(name)
            return True
        except AttributeError:
            return False

    return {k: v for k, v in tensors.items() if holds(k)}


def head_size(model: torch.nn.Module) -> int:
    cfg = model.encoder.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None)
    if not heads:
        raise ConfigError(f"{cfg.model_type}: its config names no number of attention heads, so heads cannot be pruned; drop heads_keep")
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // heads


def apply_masks_(model: torch.nn.Module, config: MaskConfig) -> dict[str, MaskedLinear]:
    """Replace every target Linear by a MaskedLinear; freeze everything else in those layers.
    With config.ffn_keep, the FFNs' second projections (inputs = the intermediate neurons) also score neurons;
    with config.heads_keep, the attention output projections score heads."""
    replaced = {}
    ffn = intermediate_size(model) if config.ffn_keep is not None else None
    head = head_size(model) if config.heads_keep is not None else None
    for name, lin in target_linears(model).items():
        parent_name, _, attr = name.rpartition(".")
        if lin.in_features == ffn != lin.out_features:
            masked = MaskedLinear(lin, config, "ffn")
        elif head and name.endswith(tuple(ATTENTION_OUTPUTS)):
            masked = MaskedLinear(lin, config, "heads", head)
        else:
            masked = MaskedLinear(lin, config)
        setattr(model.get_submodule(parent_name), attr, masked)
        replaced[name] = masked
    if head and not any(m.unit == "heads" for m in replaced.values()):
        raise ConfigError(
            f"{model.encoder.config.model_type}: no attention output projection named like {tuple(ATTENTION_OUTPUTS)} "
            "among the masked layers, so heads cannot be pruned; drop heads_keep"
        )
    return replaced


def masked_layers(model: torch.nn.Module) -> dict[str, MaskedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}


def score_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What mask learning trains: every weight score, and the neuron scores of pruned FFNs."""
    layers = masked_layers(model).values()
    return [m.scores for m in layers] + [m.neuron_scores for m in layers if m.neuron_scores is not None]


def keep_targets(model: torch.nn.Module) -> dict[str, float]:
    """The kept fraction each pruned unit's schedule ends at: {"ffn": ..., "heads": ...} (only the pruned ones)."""
    out = {}
    for m in masked_layers(model).values():
        if m.unit is not None:
            out[m.unit] = m.config.keep_at(m.unit, 1.0)
    return out


def set_keep_(model: torch.nn.Module, progress: float) -> dict[str, float]:
    """Move the neuron / head schedules to `progress` (0..1) of training; returns the kept fraction of each pruned unit."""
    out = {}
    for m in masked_layers(model).values():
        if m.unit is not None:
            m.keep = out[m.unit] = m.config.keep_at(m.unit, progress)
    return out


@torch.no_grad()
def masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.mask().bool() for n, m in masked_layers(model).items()}


@torch.no_grad()
def densities(model: torch.nn.Module) -> tuple[dict[str, float], float]:
    per, kept, total = {}, 0, 0
    for name, m in masks(model).items():
        per[name] = m.float().mean().item()
        kept += int(m.sum())
        total += m.numel()
    return per, (kept / total if total else 1.0)


@torch.no_grad()
def set_masks_(model: torch.nn.Module, mask_by_name: dict[str, np.ndarray | torch.Tensor]) -> None:
    """Load fixed masks (e.g. from mask.npz) by setting scores to +-1 around the threshold."""
    layers = masked_layers(model)
    missing = set(layers) - set(mask_by_name)
    if missing:
        raise KeyError(f"mask file has no mask for layers {sorted(missing)[:3]}...: it was made for another model")
    for name, layer in layers.items():
        m = torch.as_tensor(np.asarray(mask_by_name[name]), dtype=torch.bool)
        if m.shape != layer.weight.shape:
            raise ValueError(f"mask for {name} has shape {tuple(m.shape)}, layer has {tuple(layer.weight.shape)}")
        t = layer.config.threshold
        layer.scores.copy_(torch.where(m, t + 1.0, t - 1.0))
        layer.keep = 1.0  # the loaded masks already hold any dropped neurons and heads (their columns are all pruned)


def model_mask_sha256(model: torch.nn.Module) -> str:
    """maskcodec.mask_sha256 of the masks a model holds now (on whatever device)."""
    return maskcodec.mask_sha256({k: v.cpu().numpy() for k, v in masks(model).items()})


def save_masks(path, model: torch.nn.Module) -> int:
    """Write mask.npz (compress.maskcodec); returns its size in bytes."""
    return maskcodec.write_masks(path, {name: m.numpy() for name, m in masks(model).items()})


def folded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with every MaskedLinear replaced by a plain Linear holding weight * mask."""
    out = copy.deepcopy(model)
    for name, layer in masked_layers(out).items():
        lin = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0], bias=layer.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(layer.weight * layer.mask())
            if layer.bias is not None:
                lin.bias.copy_(layer.bias)
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent), attr, lin)
    return out
