"""ONNX -> ONNX Runtime's .ort format (mobile and minimal builds), with ORT's own converter.

The converter optimizes the graph and stores the result, constant folding included: a graph whose low-bit
weights are unpacked by a subgraph at session load (the int8 kernel's) would be stored unpacked, as large as
ONNX Runtime's own int8 model. The mobile graph (compress.reexport.reexport with format "ort") is therefore the
"nbits" kernel's: com.microsoft MatMulNBits for the linears and GatherBlockQuantized for the word embeddings read
the packed codes as they are, so the .ort keeps them at their bit width. Both operators are in ONNX Runtime's
full Android/iOS packages (onnxruntime-android, onnxruntime-c/-objc, which replaced the reduced onnxruntime-mobile
packages in 1.19) and in any minimal build made from the required-operators config written next to the .ort
(contrib operators included unless the build disables them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
TARGET = "arm"  # the converter's target platform: no x86-only layout transforms baked into the file


def to_ort(onnx_path: Path, out_dir: Path) -> list[Path]:
    """Write <stem>.ort and <stem>.required_operators.config into out_dir; returns the files written.

    'Fixed' optimization style: the graph is optimized once, here, for an ARM target (ONNX Runtime's
    hardware-independent optimizations; no NCHWc), so the device loads it without optimizing again.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / onnx_path.name
        shutil.copy2(onnx_path, src)
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            convert_onnx_models_to_ort(
                src, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Fixed], target_platform=TARGET
            )
        log.info("ORT converter: %s", chatter.getvalue().strip())
        written = []
        for f in sorted((Path(tmp) / "out").iterdir()):
            name = f.name.replace(".with_runtime_opt", "")
            shutil.copy2(f, out_dir / name)
            written.append(out_dir / name)
    if not any(p.suffix == ".ort" for p in written):
        raise RuntimeError(f"ONNX Runtime's converter wrote no .ort file for {onnx_path}")
    return written


def required_operators(config: Path) -> dict[str, set[str]]:
    """The required-operators config the converter wrote: domain -> operator names (what a minimal build must include)."""
    ops: dict[str, set[str]] = {}
    for line in config.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, _, names = line.split(";", 2)
            ops.setdefault(domain, set()).update(n for n in names.split(",") if n)
    return ops
