"""ONNX -> ONNX Runtime's .ort format (for mobile / minimal builds), with ORT's own converter."""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def to_ort(onnx_path: Path, out_dir: Path) -> list[Path]:
    """Write <stem>.ort and <stem>.required_operators.config into out_dir; returns the files written.

    'Fixed' optimization style: the graph is optimized (constant folding included, so the low-bit
    weights are stored unpacked as int8) with the hardware-independent optimizations only.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / onnx_path.name
        shutil.copy2(onnx_path, src)
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            convert_onnx_models_to_ort(src, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Fixed])
        log.info("ORT converter: %s", chatter.getvalue().strip())
        written = []
        for f in sorted((Path(tmp) / "out").iterdir()):
            name = f.name.replace(".with_runtime_opt", "")
            shutil.copy2(f, out_dir / name)
            written.append(out_dir / name)
    if not any(p.suffix == ".ort" for p in written):
        raise RuntimeError(f"ONNX Runtime's converter wrote no .ort file for {onnx_path}")
    return written
