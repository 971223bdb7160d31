"""The parts of a manifest (compress.manifest): each a frozen dataclass, declared once, read from the JSON by its annotations
(compress.typed). An artifact records its model, task, configs, layers, training, metrics, validation, sizes and latency; a
backbone its quantized layers and calibration; a pack its tasks and their sources, sizes and memory."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from compress import files
from compress.configs import DistillConfig, ExportConfig, MaskConfig, QuantConfig, TrainConfig


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ModelInfo:
    """The encoder as loaded: what `--model` named, where it came from, and what an app needs to feed it."""

    name: str
    location: str
    local: bool
    pooling: str
    architecture: str
    hidden_size: int
    num_heads: int
    inputs: list[str]
    pad_token_id: int
    num_labels: int | None = None  # artifacts: the task head's outputs


@dataclass(frozen=True)
class TaskInfo:
    name: str
    metric: str
    train_examples: int
    dev_examples: int
    data: str
    labels: list[str] = field(default_factory=list)  # class names in logit order; [] for regression


@dataclass(frozen=True)
class RunSettings:
    """The resolved configs an artifact was made with (its manifest's "config")."""

    quant: QuantConfig
    mask: MaskConfig
    train: TrainConfig
    export: ExportConfig
    embedding_bits: int | None = None
    distill: DistillConfig | None = None  # learned from a teacher (the manifest's "teacher" is which)


@dataclass(frozen=True)
class QLayer:
    """One quantized tensor of a backbone."""

    name: str
    shape: list[int]
    bits: int
    group_size: int | None
    symmetric: bool
    embedding: bool = False


@dataclass(frozen=True)
class CalibrationInfo:
    """What calibrated a backbone's GPTQ (nothing for round to nearest)."""

    source: str  # "none" | "general" | "task"
    examples: int = 0
    text: str | None = None  # the text file, relative to the package
    text_sha256: str | None = None
    tokens: int = 0

    @classmethod
    def of(cls, quant: QuantConfig, text_file: Path | None, tokens) -> CalibrationInfo:
        if tokens is None:
            return cls("none")
        return cls(
            quant.calibration,
            len(tokens["input_ids"]),
            f"compress/data/{text_file.name}" if text_file else None,
            files.sha256(text_file) if text_file else None,
            int(tokens["attention_mask"].sum()),
        )


@dataclass(frozen=True)
class BackboneSizes:
    """Bytes of a backbone's weights.safetensors by kind."""

    codes: int = 0
    scales: int = 0
    embeddings: int = 0
    floats: int = 0  # biases, LayerNorms, position and token-type embeddings


@dataclass(frozen=True)
class TeacherRef:
    """The teacher a run distilled from: the SHA-256 of its trainable.safetensors (its fine-tuned weights) is its identity."""

    sha256: str
    path: str
    dev_metric: float | None = None  # its dev metric in PyTorch, as its manifest records it


@dataclass(frozen=True)
class Speed:
    """A run asked for a speed (`--speedup`): what the latency model chose and predicted, what the exported graph reached."""

    asked: float  # times the unpruned graph's batch-1 throughput
    predicted: float  # by the latency model (compress.latency), for the chosen heads and neurons
    heads_keep: float  # the kept fractions chosen (MaskConfig.heads_keep / ffn_keep)
    ffn_keep: float
    reached: float | None = None  # measured: the unpruned graph's batch-1 latency / the shipped graph's (None: not measured)
    dense_ms: float | None = None  # their batch-1 medians (seq_len below), timed round-robin in one run
    pruned_ms: float | None = None
    seq_len: int = 128
    cpu: str = ""  # where it was measured: speed is a property of the machine
    layers: int | None = None  # the transformer layers kept (MaskConfig.layers; None: all)


@dataclass(frozen=True)
class BackboneRef:
    """Which backbone a task was trained on: the SHA-256 of its weights.safetensors is its identity."""

    sha256: str
    path: str
    model: str


@dataclass(frozen=True)
class LayerInfo:
    """One quantized or masked linear (or the word-embedding table) of an artifact."""

    name: str
    shape: list[int]
    bits: int  # 32: not quantized
    group_size: int | None  # None: one scale per output channel
    symmetric: bool | None
    masked: bool
    density: float  # kept fraction of its weights


@dataclass(frozen=True)
class Epoch:
    """One epoch of training: its loss and dev metrics (in PyTorch), the mask's density and the kept fractions."""

    epoch: int
    loss: float
    dev: dict[str, float]
    density: float
    seconds: float
    ffn_keep: float | None = None  # where the FFN-neuron schedule stood (with --ffn-keep)
    heads_keep: float | None = None  # where the attention-head schedule stood (with --heads-keep)


@dataclass(frozen=True)
class Training:
    history: list[Epoch]
    best_epoch: int
    seconds: float
    init_from: str | None = None
    processes: int = 1  # distributed data parallel processes (torchrun) that trained it


@dataclass(frozen=True)
class Metrics:
    torch: dict[str, float]
    onnx: dict[str, float]  # {} when the shipped graph's dev metric is not measured (re-exported)
    majority: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Validation:
    """The checks of the shipped graph. None: not measured (or not made: no .ort, no tokenizer graph)."""

    passed: bool | None = True  # the accuracy guard: True, False (kept after failing it), None (re-exported: not measured)
    failure: str | None = None  # why the guard failed
    agreement: float | None = None  # dev predictions equal to PyTorch's (regression: their correlation)
    metric_drop: float | None = None  # PyTorch's dev metric - ONNX Runtime's
    max_metric_drop: float | None = None
    metric_drop_low: float | None = None  # the drop's 95% lower bound (compress.guard): what the guard compares
    dev_examples: int | None = None  # the dev examples the guard judged
    dev_max_abs_diff: float | None = None  # max |ONNX Runtime's dev logits - PyTorch's|
    max_logit_diff: float | None = None
    parity_max_abs_diff: float | None = None  # the float-kernel graph vs PyTorch on the parity sample
    parity_atol: float | None = None
    sample_max_abs_diff: float | None = None  # the shipped graph vs PyTorch on the parity sample
    ort_max_abs_diff: float | None = None  # onnx/model.ort vs onnx/model.onnx
    with_tokenizer_max_abs_diff: float | None = None  # model_with_tokenizer.onnx vs tokenizer.json + model.onnx
    pack_max_abs_diff: float | None = None  # a materialized task vs its graph in the pack

    def unmeasured(self) -> Validation:
        """The same graph checks without what was measured on the dev set (another graph's)."""
        return replace(
            self,
            passed=None,
            failure=None,
            agreement=None,
            metric_drop=None,
            metric_drop_low=None,
            dev_examples=None,
            dev_max_abs_diff=None,
        )


@dataclass(frozen=True)
class Sizes:
    """Bytes of an artifact's parts."""

    weights: int = 0  # encoder weight codes in onnx/model.onnx
    scales: int = 0  # their scales, zero points and smoothing factors
    embeddings: int = 0  # the word-embedding table
    other: int = 0  # the rest of onnx/model.onnx: biases, LayerNorms, position embeddings, head, graph
    onnx_total: int = 0
    masks: int = 0  # mask.npz
    head: int = 0  # trainable.safetensors
    ort_total: int | None = None  # onnx/model.ort
    with_tokenizer_total: int | None = None  # onnx/model_with_tokenizer.onnx


@dataclass(frozen=True)
class Latency:
    """One batch size's timing of a graph in ONNX Runtime (compress.runtimes.bench)."""

    batch: int
    seq_len: int
    runs: int
    median_ms: float
    p90_ms: float
    throughput_seq_s: float


@dataclass(frozen=True)
class Stage:
    """Wall time and peak resident memory of one stage of `compress run`."""

    seconds: float
    peak_rss_gb: float


@dataclass(frozen=True)
class MaterializedFrom:
    pack: str
    manifest_sha256: str
    task: str


@dataclass(frozen=True)
class PackSource:
    """The artifact a pack's task was made from."""

    artifact: str
    manifest_sha256: str
    model_onnx_sha256: str
    model_onnx_bytes: int
    mask_bytes: int = 0  # of the task graph's coded mask


@dataclass(frozen=True)
class SharedTensor:
    """Where a task graph's initializer lies in the pack's shared file, as the graph sees it (compress.runtimes.shared_weights)."""

    offset: int  # from the start of the file
    length: int  # bytes
    dtype: str  # numpy's name: "uint8", "float16", "float32"
    shape: list[int]


@dataclass(frozen=True)
class PackTask:
    """One task of a pack: its graph and what an app needs to run it."""

    name: str
    onnx: str  # file in the pack
    metric: str
    labels: list[str]
    max_length: int
    pad_token_id: int
    inputs: list[str]
    metrics: dict[str, float]  # the source artifact's dev metrics through ONNX Runtime
    masked_weights: int
    bytes: int  # this task's own files
    bits_per_masked_weight: float
    parity_max_abs_diff: float  # the pack's graph vs the source artifact's model.onnx
    source: PackSource
    ffn_neurons: dict[str, list[int]] = field(default_factory=dict)  # FFN second projection -> [neurons kept, total]
    attention_heads: dict[str, list[int]] = field(default_factory=dict)  # attention output projection -> [heads kept, total]
    guard_passed: bool | None = True  # the artifact's accuracy guard (False: packed with --allow-failed-guard)
    shared_tensors: dict[str, SharedTensor] = field(default_factory=dict)  # initializer -> its bytes in the shared file ({}: older packs)


@dataclass(frozen=True)
class PackSizes:
    """A pack's bytes against as many standalone artifacts and ONNX Runtime int8 models."""

    shared: int  # the shared weights and the tokenizer
    tasks: dict[str, int]  # each task's own files
    total: int
    standalone_model_onnx: int  # the source artifacts' model.onnx, together
    ort_int8_model: int  # one ONNX Runtime int8 model of the encoder and head
    ort_int8_total: int
    tokenizer_json: int
    vs_standalone: float
    vs_ort_int8: float


@dataclass(frozen=True)
class PackMemory:
    """Resident memory of a process with 0 .. N task sessions open (compress.pack_writer.resident_memory)."""

    sessions: list[int]
    rss: list[int]
    per_session: list[int]
    peak: list[int] = field(default_factory=list)
    shared_in_memory: bool = False  # the sessions took the shared file's tensors from one map and shared one arena
