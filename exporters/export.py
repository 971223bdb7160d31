"""torch masked model -> shipped ONNX graph (fp32 export, fusions, integer weights, checks)."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from compress import masking
from compress.errors import ConfigError
from compress.exporters import fusions, neurons, onnx_graph, verify, weights
from compress.qweight import QWeight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    kernel: str = "int8"  # "int8": integer matmuls (fast); "float": weights dequantized at load (exact); "nbits": MatMulNBits
    fusions: bool = True  # ONNX Runtime transformer fusions
    opset: int = onnx_graph.OPSET
    parity_atol: float = 1e-4  # float-kernel graph vs PyTorch, logits (fp32 summation order only)
    max_metric_drop: float = 0.01  # deployed graph's dev metric may trail PyTorch's by at most this
    max_logit_diff: float = 2.0  # deployed graph's logits may differ from PyTorch's by at most this (int8 rounding: < 1 on GLUE)
    smooth_alpha: float | None = 0.75  # int8 kernel: SmoothQuant-style migration of activation outliers (None: off)
    smooth_max_bits: int = 4  # smooth only weights of this many bits or fewer (8-bit codes stay exact; see weights.Smoothing)
    # int8 kernel's activation scales: "static" (calibrated at export; batch-independent, fewest operators), "token" (one per token at
    # run time; batch-independent, never clips), "tensor" (one per padded batch: ORT's fused kernels, batch-dependent)
    activations: str = "static"

    def __post_init__(self):
        if self.kernel not in weights.KERNELS:
            raise ConfigError(f"kernel '{self.kernel}' is not one of {weights.KERNELS}")
        if self.activations not in weights.ACTIVATIONS:
            raise ConfigError(f"activations '{self.activations}' is not one of {weights.ACTIVATIONS}")
        if not (self.max_metric_drop >= 0 and self.max_logit_diff > 0 and self.parity_atol > 0):
            raise ConfigError(f"max_metric_drop={self.max_metric_drop}, max_logit_diff={self.max_logit_diff}, parity_atol={self.parity_atol}: "
                              "the drop must be >= 0 and the tolerances > 0")
        if self.smooth_alpha is not None and not 0 < self.smooth_alpha < 1:
            raise ConfigError(f"smooth_alpha={self.smooth_alpha} must be in (0, 1), or None for no smoothing")


@dataclass
class ExportResult:
    path: Path
    sizes: dict[str, int] = field(default_factory=dict)  # bytes: weights, scales, embeddings, other
    fusions: dict[str, int] = field(default_factory=dict)
    parity_max_abs_diff: float = 0.0  # float-kernel graph vs PyTorch
    deployed_max_abs_diff: float = 0.0  # shipped graph vs PyTorch (int8 activations add rounding)
    ffn_neurons: dict[str, list[int]] = field(default_factory=dict)  # FFN with dead neurons removed -> [kept, total]
    attention_heads: dict[str, list[int]] = field(default_factory=dict)  # attention output projection -> [heads kept, total]


def export(model: torch.nn.Module, linears: dict[str, QWeight], embedding: tuple[str, QWeight] | None,
           path: Path, config: ExportConfig, sample: dict[str, np.ndarray], calibration=None, shared=None) -> ExportResult:
    """Write the graph to `path` and verify it; `sample` are padded inputs for the parity check.

    calibration: batches whose input-channel ranges set the int8 kernel's activation smoothing
    (compress.calibration.batches); without them the graph is not smoothed.
    shared: a compress.exporters.shared.SharedFile: the graph takes the backbone's tensors from that
    file (external data) and applies the model's masks in the graph (a pack's task graph).
    """
    from compress.runtimes.session import open_session, release_freed_memory, run_logits

    masks = {k: v.numpy() for k, v in masking.masks(model).items()} if shared is not None else {}
    model, linears, removed = neurons.drop_dead(model, linears)  # folded; dead FFN neurons removed (exact)
    heads = {}
    if shared is None:  # a pack's task graph keeps its heads: they index the shared backbone's Q/K/V rows
        linears, heads = neurons.drop_dead_heads(model, linears)  # dead attention heads removed (exact)
    cfg = model.encoder.config
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = onnx.load(str(onnx_graph.export_fp32(model, Path(tmp) / "fp32.onnx", config.opset)))
    stats, attention = {}, {}
    if config.fusions:
        fused = fusions.optimize(fp32, cfg.num_attention_heads, cfg.hidden_size, keep_embeddings=embedding is not None,
                                 keep_matmuls=config.kernel == "nbits")
        fp32, stats, attention = fused.model, fused.stats, fused.attention
        del fused
    model.eval()
    with torch.no_grad():
        feeds = {k: torch.from_numpy(v) for k, v in sample.items() if k in onnx_graph.input_names(model)}
        ref = {"logits": model(**feeds).float().numpy()}
    exact = onnx.ModelProto()
    exact.CopyFrom(fp32)
    if linears or embedding:
        exact, _ = weights.quantize_graph(exact, linears, embedding, kernel="float", attention=attention)
    got = {"logits": run_logits(open_session(exact.SerializeToString()), sample)}
    del exact  # the float-kernel graph is only checked: free it (bert-large's is 1.3 GB) before the shipped one is built
    parity = verify.compare(ref, got, config.parity_atol, "float-kernel graph")["logits"]
    smooth = None
    if config.kernel == "int8" and (config.smooth_alpha or config.activations == "static") and calibration and linears:
        from compress.calibration import input_absmax

        smooth = weights.Smoothing(input_absmax(model, list(linears), calibration), config.smooth_alpha, config.smooth_max_bits)
    del model  # the folded copy (the caller's model is untouched)
    qkv_bias = {n.input[2]: attention[n.name] for n in fp32.graph.node if n.name in attention and len(n.input) > 2}
    source = shared.source(masks, removed) if shared is not None else None
    values = {n: found[1][2] for n in linears if (found := masking.attention_of(n))}  # output projection -> its V
    shipped, sizes = (weights.quantize_graph(fp32, linears, embedding, kernel=config.kernel, smooth=smooth, attention=attention,
                                             source=source, activations=config.activations, values=values) if (linears or embedding)
                      else (fp32, {"weights": 0, "scales": 0, "embeddings": 0}))
    del fp32
    path.parent.mkdir(parents=True, exist_ok=True)
    if shared is None:
        verify.check_graph(shipped)
        onnx.save(shipped, str(path))
        total = path.stat().st_size
        sizes["other"] = max(0, total - sum(sizes.values()))
    else:
        from compress.exporters import shared as sh

        sh.share_floats(shipped, shared, qkv_bias, removed)
        sizes = sh.save(shipped, path, shared) | {"masks": source.mask_bytes}
        verify.check_graph(path)
        total = path.stat().st_size
    del shipped
    release_freed_memory()  # ONNX Runtime unpacks the low-bit weights at load: start it from the smallest footprint
    deployed = run_logits(open_session(path), sample)
    deployed_diff = float(np.max(np.abs(deployed.astype(np.float64) - ref["logits"])))  # bounded by the caller (run: on the dev set)
    res = ExportResult(path, sizes, stats, parity, deployed_diff, {k: [int(r.keep.size), r.total] for k, r in removed.items()}, heads)
    log.info("exported %s (%.2f MB): %s", path, total / 1e6, sizes)
    return res
