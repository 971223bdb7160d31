"""torch masked model -> shipped ONNX graph (fp32 export, fusions, integer weights, checks)."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from compress import manifest as mf
from compress import masking
from compress.configs import ExportConfig
from compress.exporters import fusions, neurons, onnx_graph, verify, weights
from compress.exporters.builder import Prefolded
from compress.exporters.smoothing import Smoothing
from compress.qweight import QWeight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphBytes:
    """What a written graph's bytes are: its parts (a standalone graph), or what it references and holds (a pack's task graph)."""

    weights: int = 0  # encoder weight codes
    scales: int = 0  # their scales, zero points and smoothing factors
    embeddings: int = 0  # the word-embedding table (and, nbits, the other quantized tables)
    other: int = 0  # the rest of the file: biases, LayerNorms, position embeddings, head, graph
    shared: int = 0  # a pack's task graph: bytes it references in the shared file
    own: int = 0  # a pack's task graph: its own file
    masks: int = 0  # a pack's task graph: its coded masks


@dataclass
class ExportResult:
    path: Path
    sizes: GraphBytes = field(default_factory=GraphBytes)
    fusions: dict[str, int] = field(default_factory=dict)
    parity_max_abs_diff: float = 0.0  # float-kernel graph vs PyTorch
    deployed_max_abs_diff: float = 0.0  # shipped graph vs PyTorch (int8 activations add rounding)
    ffn_neurons: dict[str, list[int]] = field(default_factory=dict)  # FFN with dead neurons removed -> [kept, total]
    attention_heads: dict[str, list[int]] = field(default_factory=dict)  # attention output projection -> [heads kept, total]

    def sizes_in(self, base: mf.Sizes) -> mf.Sizes:
        """An artifact's sizes with this (standalone) graph's parts and total."""
        b = self.sizes
        return dataclasses.replace(
            base, weights=b.weights, scales=b.scales, embeddings=b.embeddings, other=b.other, onnx_total=self.path.stat().st_size
        )


def export(
    model: torch.nn.Module,
    linears: dict[str, QWeight],
    embedding: tuple[str, QWeight] | None,
    path: Path,
    config: ExportConfig,
    sample: dict[str, np.ndarray],
    calibration=None,
    shared=None,
) -> ExportResult:
    """Write the graph to `path` and verify it; `sample` are padded inputs for the parity check.

    calibration: batches whose input-channel ranges set the int8 kernel's activation smoothing
    (compress.calibration.batches); without them the graph is not smoothed.
    shared: a compress.exporters.shared.SharedFile: the graph takes the backbone's tensors from that
    file (external data) and applies the model's masks in the graph (a pack's task graph).
    """
    from compress.runtimes.session import open_session, release_freed_memory, run_logits

    masks = {k: v.numpy() for k, v in masking.masks(model).items()} if shared is not None else {}
    model, linears, removed = neurons.drop_dead(model, linears)  # folded; dead FFN neurons removed (exact)
    linears, heads = neurons.drop_dead_heads(model, linears)  # dead attention heads removed (exact)
    fp32, stats, attention = _fp32_graph(model, config, keep_embeddings=embedding is not None)
    ref = _torch_logits(model, sample)
    parity = _float_parity(fp32, linears, embedding, attention, ref, sample, config)
    smooth = _smoothing(model, linears, config, calibration)
    del model  # the folded copy (the caller's model is untouched)
    qkv_bias = {n.input[2]: attention[n.name] for n in fp32.graph.node if n.name in attention and len(n.input) > 2}
    source = shared.source(masks, removed | heads) if shared is not None else Prefolded() if config.prefold else None
    values = {n: found[1][2] for n in linears if (found := masking.attention_of(n))}  # output projection -> its V
    shipped, parts = (
        weights.quantize_graph(
            fp32,
            linears,
            embedding,
            kernel=config.kernel,
            smooth=smooth,
            attention=attention,
            source=source,
            activations=config.activations,
            values=values,
        )
        if (linears or embedding)
        else (fp32, {"weights": 0, "scales": 0, "embeddings": 0})
    )
    del fp32
    sizes = _save(shipped, path, parts, shared, source, qkv_bias, removed | heads)
    del shipped
    release_freed_memory(collect=True)  # ONNX Runtime unpacks the low-bit weights at load: start it from the smallest footprint
    deployed = run_logits(open_session(path), sample)
    deployed_diff = float(np.max(np.abs(deployed.astype(np.float64) - ref)))  # bounded by the caller (run: on the dev set)
    ffn, att = ({k: r.counts() for k, r in d.items()} for d in (removed, heads))
    res = ExportResult(path, sizes, stats, parity, deployed_diff, ffn, att)
    log.info("exported %s (%.2f MB): %s", path, path.stat().st_size / 1e6, sizes)
    return res


def _fp32_graph(model: torch.nn.Module, config: ExportConfig, keep_embeddings: bool):
    """The folded model as fp32 ONNX, with ONNX Runtime's transformer fusions; -> (graph, fusion counts, Attention -> Q/K/V)."""
    cfg = model.encoder.config
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = onnx.load(str(onnx_graph.export_fp32(model, Path(tmp) / "fp32.onnx", config.opset)))
    if config.kernel == "qdq":  # standard ONNX: none of ONNX Runtime's fused (contrib) operators; opset 21's 4-bit DequantizeLinear
        return onnx_graph.to_opset(fp32, onnx_graph.QDQ_OPSET), {}, {}
    if not config.fusions:
        return fp32, {}, {}
    fused = fusions.optimize(
        fp32,
        cfg.num_attention_heads,
        cfg.hidden_size,
        keep_embeddings=keep_embeddings,
        keep_matmuls=config.kernel == "nbits",
        heads=neurons.head_counts(model),
    )
    return fused.model, fused.stats, fused.attention


def _torch_logits(model: torch.nn.Module, sample: dict[str, np.ndarray]) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        feeds = {k: torch.from_numpy(v) for k, v in sample.items() if k in onnx_graph.input_names(model)}
        return model(**feeds).float().numpy()


def _float_parity(fp32: onnx.ModelProto, linears, embedding, attention, ref: np.ndarray, sample, config: ExportConfig) -> float:
    """The same weights through the float kernel (exact) must give PyTorch's logits within parity_atol; -> max |difference|."""
    from compress.runtimes.session import open_session, run_logits

    exact = onnx.ModelProto()
    exact.CopyFrom(fp32)
    if linears or embedding:
        exact, _ = weights.quantize_graph(exact, linears, embedding, kernel="float", attention=attention)
    got = {"logits": run_logits(open_session(exact.SerializeToString()), sample)}
    del exact  # the float-kernel graph is only checked: free it (bert-large's is 1.3 GB) before the shipped one is built
    return verify.compare({"logits": ref}, got, config.parity_atol, "float-kernel graph")["logits"]


def _smoothing(model, linears, config: ExportConfig, calibration) -> Smoothing | None:
    """The int8 kernel's calibration ranges and smoothing factors, the qdq kernel's ranges (None: another kernel, or nothing to
    calibrate on)."""
    int8 = config.kernel == "int8" and (config.smooth_alpha or config.activations == "static")
    qdq = config.kernel == "qdq" and config.activations == "static"  # the ranges only: smoothing would change the codes
    if (int8 or qdq) and calibration and linears:
        from compress.calibration import input_absmax

        return Smoothing(input_absmax(model, list(linears), calibration), config.smooth_alpha if int8 else None, config.smooth_max_bits)
    return None


def _save(shipped: onnx.ModelProto, path: Path, parts: dict[str, int], shared, source, qkv_bias, removed) -> GraphBytes:
    """Write the graph (a pack's task graph: its shared tensors pointing into the shared file) and check it with onnx.checker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if shared is None:
        verify.check_graph(shipped)
        onnx.save(shipped, str(path))
        return GraphBytes(**parts, other=max(0, path.stat().st_size - sum(parts.values())))
    from compress.exporters import shared as sh

    sh.share_floats(shipped, shared, qkv_bias, removed)
    referenced = sh.save(shipped, path, shared)
    verify.check_graph(path)
    return GraphBytes(shared=referenced, own=path.stat().st_size, masks=source.mask_bytes)
