"""ONNX Runtime's transformer optimizer (SkipLayerNorm, BiasGelu, ... fusions), applied where it composes."""
from __future__ import annotations

import logging

import onnx

log = logging.getLogger(__name__)


def optimize(model: onnx.ModelProto, num_heads: int, hidden_size: int, keep_embeddings: bool = True,
             keep_matmuls: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Fuse with model_type='bert' (opt_level 0: python fusions only, so the file stays portable).

    keep_embeddings: leave the word-embedding Gather alone (no EmbedLayerNormalization) so that
    the embedding table can be replaced by its quantized form afterwards.
    keep_matmuls: no Attention fusion (which packs Q/K/V into one weight [hidden, 3 * hidden]);
    by default it is fused, and exporters.weights turns Attention into QAttention with int8 Q/K/V.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    opts = FusionOptions("bert")
    if keep_embeddings:
        opts.enable_embed_layer_norm = False
    if keep_matmuls:
        opts.enable_attention = False
    bert = BertOnnxModel(model, num_heads, hidden_size)
    bert.optimize(opts, add_dynamic_axes=False)
    bert.topological_sort()  # the fused graph is not always in order; onnx.checker requires it
    if not any(op.domain == "com.microsoft" for op in bert.model.opset_import):
        bert.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # fused ops live there
    stats = {k: v for k, v in bert.get_fused_operator_statistics().items() if v}
    log.info("ORT transformer fusions: %s", stats)
    return bert.model, stats
