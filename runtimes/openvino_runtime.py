"""OpenVINO's own runtime (the `openvino` package, which installs beside onnxruntime) behind ONNX Runtime's session calls.

`compress bench` / `check` and compress.runtimes.evaluate call a session's `get_inputs()` and `run(["logits"], feeds)`;
`OpenVINOSession` answers both from an OpenVINO model compiled for the CPU, so every measurement made through ONNX Runtime
is made through OpenVINO the same way. OpenVINO reads standard ONNX only: the qdq kernel's graph (`compress export DIR
--kernel qdq`); the int8, nbits and mobile graphs use ONNX Runtime's contrib operators, which it refuses (GraphLoadError
names the re-export).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Input:
    name: str


class OpenVINOSession:
    """An OpenVINO CPU model with the two calls of onnxruntime.InferenceSession that compress makes."""

    def __init__(self, path: str | Path | bytes, threads: int | None = None):
        import openvino as ov

        from compress.runtimes.providers import GraphLoadError

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        try:
            model = core.read_model(path if isinstance(path, bytes) else str(path))
            self.model = core.compile_model(model, "CPU", config)
        except RuntimeError as e:
            raise GraphLoadError(
                f"{path} is not a graph OpenVINO can read ({str(e).splitlines()[0][:160]}): OpenVINO takes standard ONNX only; "
                "re-export it with `compress export DIR --kernel qdq`"
            ) from None
        self.request = self.model.create_infer_request()
        self.inputs = [_Input(p.get_any_name()) for p in self.model.inputs]
        self.outputs = [p.get_any_name() for p in self.model.outputs]
        log.info("OpenVINO %s compiled %s for the CPU", ov.__version__, path)

    def get_inputs(self) -> list[_Input]:
        return self.inputs

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        by_name = {p.get_any_name(): v for p, v in result.items()}
        return [np.array(by_name[n]) for n in (output_names or self.outputs)]
