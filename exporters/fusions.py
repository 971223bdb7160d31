"""ONNX Runtime's transformer optimizer (SkipLayerNorm, BiasGelu, ... fusions), applied where it composes."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import onnx

log = logging.getLogger(__name__)


@dataclass
class Fused:
    model: onnx.ModelProto
    stats: dict[str, int]
    attention: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # Attention node -> its Q, K, V modules


def optimize(
    model: onnx.ModelProto,
    num_heads: int,
    hidden_size: int,
    keep_embeddings: bool = True,
    keep_matmuls: bool = False,
    heads: dict[str, int] | None = None,
) -> Fused:
    """Fuse with model_type='bert' (opt_level 0: python fusions only, so the file stays portable).

    keep_embeddings: leave the word-embedding Gather alone (no EmbedLayerNormalization) so that
    the embedding table can be replaced by its quantized form afterwards.
    keep_matmuls: no Attention fusion (which packs Q/K/V into one weight [hidden, 3 * hidden]);
    by default it is fused, and exporters.weights turns Attention into QAttention with int8 Q/K/V.
    Which Q/K/V MatMuls each Attention node was built from is recorded as it is built (the fused
    weight is a new tensor, so its name says nothing): the weights are then matched by name.
    heads: Q projection -> its layer's head count, where heads were removed (compress.exporters.neurons.head_counts): ONNX
    Runtime reads a layer's head count from its reshapes, and transformers 5 writes them with -1 heads.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    opts = FusionOptions("bert")
    if keep_embeddings:
        opts.enable_embed_layer_norm = False
    if keep_matmuls:
        opts.enable_attention = False
    bert = BertOnnxModel(model, num_heads, hidden_size)
    attention = _record_attention(bert)
    with _quiet_pruned_heads():
        bert.optimize(opts, add_dynamic_axes=False)
    bert.topological_sort()  # the fused graph is not always in order; onnx.checker requires it
    if not any(op.domain == "com.microsoft" for op in bert.model.opset_import):
        bert.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # fused ops live there
    stats = {k: v for k, v in bert.get_fused_operator_statistics().items() if v}
    fused = {n.name: n for n in bert.model.graph.node if n.op_type == "Attention"}
    if set(fused) - set(attention):
        raise RuntimeError(
            f"ONNX Runtime fused Attention nodes {sorted(set(fused) - set(attention))[:3]} without telling which Q/K/V "
            f"they came from (onnxruntime's FusionAttention changed?): export with keep_matmuls=True"
        )
    for name, node in fused.items():
        _set_heads(node, (heads or {}).get(attention[name][0]))
    log.info("ORT transformer fusions: %s", stats)
    return Fused(bert.model, stats, {k: v for k, v in attention.items() if k in fused})


def _record_attention(bert) -> dict[str, tuple[str, str, str]]:
    """Attention node name -> the (Q, K, V) modules it is built from, filled in as ONNX Runtime's fusion builds them."""
    from compress.exporters.weights import module_of

    attention: dict[str, tuple[str, str, str]] = {}
    create = bert.attention_fusion.create_attention_node

    def recording(mask_index, q_matmul, k_matmul, v_matmul, *args, **kwargs):
        node = create(mask_index, q_matmul, k_matmul, v_matmul, *args, **kwargs)
        if node is not None:
            attention[node.name] = (module_of(q_matmul.name), module_of(k_matmul.name), module_of(v_matmul.name))
        return node

    bert.attention_fusion.create_attention_node = recording
    return attention


@contextlib.contextmanager
def _quiet_pruned_heads():
    """With pruned heads (compress.exporters.neurons) a layer's Q/K/V give fewer columns than the hidden size they take in:
    correct, but ONNX Runtime's fusion warns about it for every such layer."""
    ort_logs = [logging.getLogger(n) for n in ("fusion_attention", "onnxruntime.transformers.fusion_attention")]  # ORT imports it both ways
    pruned = _Drop("Input hidden size (%d) is not same as weight matrix dimension")
    for lg in ort_logs:
        lg.addFilter(pruned)
    try:
        yield
    finally:
        for lg in ort_logs:
            lg.removeFilter(pruned)


def _set_heads(node: onnx.NodeProto, heads: int | None) -> None:
    """The Attention node's num_heads, where the layer's head count is known and differs (left as it is otherwise)."""
    attr = next((a for a in node.attribute if a.name == "num_heads"), None)
    if heads is not None and attr is not None and attr.i != heads:
        log.info("%s: %d heads, not the %d ONNX Runtime's fusion assumed", node.name, heads, attr.i)
        attr.i = heads


class _Drop(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)
