"""Execution providers: cpu / cuda / tensorrt, their availability and why one is skipped."""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from compress.errors import CompressError, ConfigError

ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class ProviderUnavailableError(CompressError, RuntimeError):
    """The execution provider is not in this onnxruntime build or has no device."""


@dataclass(frozen=True)
class Provider:
    name: str
    available: bool
    reason: str = ""  # why it is unavailable

    def session_providers(self, sparse: bool = False) -> list:
        """ONNX Runtime's providers list; sparse: 2:4-sparse weights (TensorRT builds its engine with sparse tensor cores)."""
        if self.name == "tensorrt":
            opts = {"trt_fp16_enable": True, "trt_sparsity_enable": bool(sparse)}
            return [(ORT_NAMES["tensorrt"], opts), ORT_NAMES["cuda"], ORT_NAMES["cpu"]]
        if self.name == "cuda":
            return [ORT_NAMES["cuda"], ORT_NAMES["cpu"]]
        return [ORT_NAMES["cpu"]]


def get(name: str) -> Provider:
    if name not in ORT_NAMES:
        raise ConfigError(f"provider '{name}' is not one of {list(ORT_NAMES)}")
    have = ort.get_available_providers()
    if ORT_NAMES[name] in have:
        return Provider(name, True)
    pkg = "onnxruntime-gpu" if name in ("cuda", "tensorrt") else "onnxruntime"
    return Provider(
        name,
        False,
        f"{ORT_NAMES[name]} is not in this onnxruntime build ({ort.__version__}, has {have}): "
        f"install {pkg} on a machine with an NVIDIA GPU",
    )


def require(name: str) -> Provider:
    p = get(name)
    if not p.available:
        raise ProviderUnavailableError(f"provider {name} skipped: {p.reason}")
    if name != "cpu":
        preload_nvidia_libraries(tensorrt=name == "tensorrt")
    return p


def preload_nvidia_libraries(tensorrt: bool) -> None:
    """Load the CUDA/cuDNN libraries of the pip `nvidia-*` packages (onnxruntime >= 1.21) and TensorRT's from
    `tensorrt-cu12-libs` (the `[gpu]` extra), so that no LD_LIBRARY_PATH is needed; libraries already on the path win."""
    import ctypes
    import glob
    import os

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if tensorrt:
        try:
            import tensorrt_libs
        except ImportError:
            return
        for lib in sorted(glob.glob(os.path.join(os.path.dirname(tensorrt_libs.__file__), "libnvinfer*.so*"))):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass


def all_providers() -> list[Provider]:
    return [get(n) for n in ORT_NAMES]
