"""Where a graph runs: ONNX Runtime's execution providers (cpu, cuda, tensorrt, openvino-ep) or OpenVINO's own runtime
(openvino), their availability and why one is skipped."""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from compress.errors import CompressError, ConfigError

ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino-ep": "OpenVINOExecutionProvider",  # the onnxruntime-openvino build (it replaces the onnxruntime module)
}
RUNTIMES = ("openvino",)  # not ONNX Runtime: OpenVINO's own runtime (compress.runtimes.openvino_runtime)
NAMES = (*ORT_NAMES, *RUNTIMES)


class ProviderUnavailableError(CompressError, RuntimeError):
    """The execution provider is not in this onnxruntime build or has no device."""


class GraphLoadError(CompressError, RuntimeError):
    """A graph file that the runtime cannot load (not ONNX, truncated, operators it does not have)."""


@dataclass(frozen=True)
class Provider:
    name: str
    available: bool
    reason: str = ""  # why it is unavailable

    def session_providers(self, sparse: bool = False, qdq: bool = False) -> list:
        """ONNX Runtime's providers list; sparse: 2:4-sparse weights (TensorRT builds its engine with sparse tensor cores);
        qdq: a standard-ONNX QDQ graph (`--kernel qdq`), which TensorRT builds as explicitly quantized int8 (its Q/DQ scales,
        no calibration table: ONNX Runtime's TensorRT provider refuses Q/DQ layers without the int8 flag)."""
        if self.name == "tensorrt":
            opts = {"trt_fp16_enable": True, "trt_sparsity_enable": bool(sparse), "trt_int8_enable": bool(qdq)}
            return [(ORT_NAMES["tensorrt"], opts), ORT_NAMES["cuda"], ORT_NAMES["cpu"]]
        if self.name in ("cuda", "openvino-ep"):
            return [ORT_NAMES[self.name], ORT_NAMES["cpu"]]  # what the provider does not take falls back to the CPU
        return [ORT_NAMES["cpu"]]


def get(name: str) -> Provider:
    if name not in NAMES:
        raise ConfigError(f"provider '{name}' is not one of {list(NAMES)}")
    if name == "openvino":
        import importlib.util

        found = importlib.util.find_spec("openvino") is not None
        return Provider(name, found, "" if found else "the openvino package is not installed: pip install openvino")
    have = ort.get_available_providers()
    if ORT_NAMES[name] in have:
        return Provider(name, True)
    install = {
        "cuda": "install onnxruntime-gpu on a machine with an NVIDIA GPU",
        "tensorrt": "install onnxruntime-gpu on a machine with an NVIDIA GPU",
        "openvino-ep": "install onnxruntime-openvino in an environment of its own (it replaces the onnxruntime module)",
    }.get(name, "install onnxruntime")
    return Provider(name, False, f"{ORT_NAMES[name]} is not in this onnxruntime build ({ort.__version__}, has {have}): {install}")


def require(name: str) -> Provider:
    p = get(name)
    if not p.available:
        raise ProviderUnavailableError(f"provider {name} skipped: {p.reason}")
    if name in ("cuda", "tensorrt"):
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
    return [get(n) for n in NAMES]
