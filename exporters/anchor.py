"""What a user would otherwise ship: ONNX Runtime's own int8 model of the same encoder and head.

fp32 ONNX with ONNX Runtime's BERT fusions, then `quantize_dynamic` (int8 weights per channel,
activations quantized at run time). The size anchor of a pack's report and of the benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnx
import torch


@contextlib.contextmanager
def _quiet_root():
    """quantize_dynamic advises pre-processing through the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ort_int8(model: torch.nn.Module, num_heads: int, hidden_size: int, out_dir: Path) -> tuple[Path, Path]:
    """-> (fp32 + fusions, ORT int8 dynamic per channel) .onnx files written into out_dir; masks are folded."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compress.exporters import fusions, onnx_graph

    out_dir = Path(out_dir)
    raw = onnx.load(str(onnx_graph.export_fp32(model, out_dir / "raw.onnx")))
    fp32, int8 = out_dir / "fp32.onnx", out_dir / "int8.onnx"
    onnx.save(fusions.optimize(raw, num_heads, hidden_size, keep_embeddings=False, keep_matmuls=False).model, str(fp32))
    with _quiet_root():
        quantize_dynamic(
            fp32, int8, per_channel=True, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}
        )  # types behind fused com.microsoft ops
    return fp32, int8
