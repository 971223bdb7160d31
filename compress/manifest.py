"""manifest.json: the typed, versioned record that every stage's directory carries, verified on every read.

Three kinds share one schema version and one envelope (kind, schema version, command, time, package
versions, and the bytes and SHA-256 of every other file in the directory):

    ArtifactManifest  kind "artifact": one task (`compress run`): model, task, resolved configs, the
                      backbone it was trained on (if any), metrics, validation, sizes, ...
    BackboneManifest  kind "backbone": quantized frozen weights shared by tasks (`compress quantize`)
    PackManifest      kind "pack": one backbone + several tasks (`compress pack`)

``write(dir, m)`` hashes the directory's files and writes manifest.json; ``read(dir, Kind)`` checks the
schema version and kind, then every file's SHA-256, and returns the dataclass. Schema 1 (artifacts
written before backbones and packs existed) reads as an artifact.

The configs inside an artifact or backbone manifest are the configs' own frozen dataclasses
(imported when such a manifest is read: a pack's reader needs neither torch nor the training code).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.artifact import ArtifactError, recover, sha256, versions

if TYPE_CHECKING:
    from compress.exporters.export import ExportConfig
    from compress.masking import MaskConfig
    from compress.quantize import QuantConfig
    from compress.train import TrainConfig

SCHEMA_VERSION = 2
READABLE = (1, 2)
FILE = "manifest.json"
BACKBONE_WEIGHTS = "weights.safetensors"  # a backbone's shared file; its SHA-256 is the backbone's identity


class ManifestError(ArtifactError):
    """A manifest that is missing, malformed, of another kind or version, or whose files were altered."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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


def model_info(clf, source, tok, num_labels: int | None = None) -> ModelInfo:
    from compress.exporters.onnx_graph import input_names

    cfg = clf.encoder.config
    return ModelInfo(name=source.name, location=source.location, local=source.local, pooling=clf.pooling, architecture=cfg.model_type,
                     hidden_size=cfg.hidden_size, num_heads=cfg.num_attention_heads, inputs=input_names(clf),
                     pad_token_id=tok.pad_token_id or 0, num_labels=num_labels)


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

    @classmethod
    def from_dict(cls, d: dict) -> RunSettings:
        from compress.exporters.export import ExportConfig
        from compress.masking import MaskConfig
        from compress.quantize import QuantConfig
        from compress.train import TrainConfig

        mask = dict(d["mask"])
        mask["nm"] = tuple(mask["nm"]) if mask.get("nm") else None
        export = {"activations": "tensor", **d["export"]}  # written before per-token activation scales existed
        return cls(QuantConfig(**d["quant"]), MaskConfig(**mask), TrainConfig(**d["train"]), ExportConfig(**export), d.get("embedding_bits"))


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
    def of(cls, quant, text_file: Path | None, tokens) -> CalibrationInfo:
        if tokens is None:
            return cls("none")
        return cls(quant.calibration, len(tokens["input_ids"]), f"compress/data/{text_file.name}" if text_file else None,
                   sha256(text_file) if text_file else None, int(tokens["attention_mask"].sum()))


@dataclass(frozen=True)
class BackboneRef:
    """Which backbone a task was trained on: the SHA-256 of its weights.safetensors is its identity."""

    sha256: str
    path: str
    model: str


@dataclass(frozen=True)
class Metrics:
    torch: dict[str, float]
    onnx: dict[str, float]
    majority: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Training:
    history: list[dict]
    best_epoch: int
    seconds: float
    init_from: str | None = None
    processes: int = 1  # distributed data parallel processes (torchrun) that trained it


@dataclass(kw_only=True)
class Manifest:
    kind: ClassVar[str] = ""
    schema_version: int = SCHEMA_VERSION
    command: str = ""
    created: str = field(default_factory=_now)
    versions: dict[str, str] = field(default_factory=versions)
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self), default=list))
        files = d.pop("files")
        return {"kind": self.kind, **d, "files": files}

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        raise NotImplementedError

    @staticmethod
    def _envelope(d: dict) -> dict:
        files = {k: FileEntry(**v) for k, v in (d.get("files") or {}).items()}
        return {"schema_version": SCHEMA_VERSION, "command": d.get("command", ""), "created": d.get("created", ""),
                "versions": d.get("versions", {}), "files": files}


@dataclass(kw_only=True)
class BackboneManifest(Manifest):
    kind: ClassVar[str] = "backbone"
    model: ModelInfo
    quant: QuantConfig
    calibration: CalibrationInfo
    layers: list[QLayer]
    sizes: dict[str, int]
    seconds: float = 0.0

    @property
    def weights_sha256(self) -> str:
        return self.files[BACKBONE_WEIGHTS].sha256

    @classmethod
    def from_dict(cls, d: dict) -> BackboneManifest:
        from compress.quantize import QuantConfig

        return cls(**cls._envelope(d), model=ModelInfo(**d["model"]), quant=QuantConfig(**d["quant"]),
                   calibration=CalibrationInfo(**d["calibration"]), layers=[QLayer(**x) for x in d["layers"]], sizes=d["sizes"],
                   seconds=d.get("seconds", 0.0))


@dataclass(kw_only=True)
class ArtifactManifest(Manifest):
    kind: ClassVar[str] = "artifact"
    model: ModelInfo
    task: TaskInfo
    config: RunSettings
    backbone: BackboneRef | None = None
    density: float = 1.0
    mask_sha256: str | None = None  # masking.mask_sha256 of the learned mask (structure mode): the same run gives the same hash
    layers: list[dict] = field(default_factory=list)
    training: Training = field(default_factory=lambda: Training([], 0, 0.0))
    metrics: Metrics = field(default_factory=lambda: Metrics({}, {}))
    validation: dict[str, Any] = field(default_factory=dict)  # checks of the shipped graph (parity, agreement, metric drop, passed)
    fusions: dict[str, int] = field(default_factory=dict)
    ffn_neurons: dict[str, list[int]] = field(default_factory=dict)
    attention_heads: dict[str, list[int]] = field(default_factory=dict)  # attention output projection -> [heads kept, total]
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of model.onnx's parts, mask.npz, head, ...
    bench: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # per pipeline stage: seconds, peak_rss_gb
    exported_by: str | None = None
    materialized_from: dict | None = None  # {"pack": path, "sha256": pack manifest's SHA-256}

    @property
    def passed(self) -> bool | None:
        """The accuracy guard: True, False (kept after failing it), None (re-exported; not measured)."""
        return self.validation.get("passed", True)

    @classmethod
    def from_dict(cls, d: dict) -> ArtifactManifest:
        bb = d.get("backbone")
        return cls(**cls._envelope(d), model=ModelInfo(**d["model"]), task=TaskInfo(**d["task"]), config=RunSettings.from_dict(d["config"]),
                   backbone=BackboneRef(**bb) if bb else None, density=d.get("density", 1.0), mask_sha256=d.get("mask_sha256"),
                   layers=d.get("layers", []),
                   training=Training(**d["training"]), metrics=Metrics(**d["metrics"]), validation=d.get("validation", {}),
                   fusions=d.get("fusions", {}), ffn_neurons=d.get("ffn_neurons", {}),
                   attention_heads=d.get("attention_heads", {}), sizes=d.get("sizes", {}), bench=d.get("bench", {}),
                   seconds=d.get("seconds", 0.0), stages=d.get("stages", {}), exported_by=d.get("exported_by"),
                   materialized_from=d.get("materialized_from"))


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
    source: dict  # {"artifact": path, "manifest_sha256": ..., "model_onnx_sha256": ...}
    ffn_neurons: dict[str, list[int]] = field(default_factory=dict)
    guard_passed: bool | None = True  # the artifact's accuracy guard (False: packed with --allow-failed-guard)


@dataclass(kw_only=True)
class PackManifest(Manifest):
    kind: ClassVar[str] = "pack"
    backbone: BackboneRef
    shared: str  # the shared weights file (the backbone's weights.safetensors)
    tokenizer: str  # tokenizer.json
    tasks: dict[str, PackTask]
    sizes: dict[str, Any]
    memory: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> PackManifest:
        return cls(**cls._envelope(d), backbone=BackboneRef(**d["backbone"]), shared=d["shared"], tokenizer=d["tokenizer"],
                   tasks={k: PackTask(**v) for k, v in d["tasks"].items()}, sizes=d["sizes"], memory=d.get("memory", {}))


KINDS: dict[str, type[Manifest]] = {k.kind: k for k in (ArtifactManifest, BackboneManifest, PackManifest)}


def write(directory: Path, m: Manifest) -> Manifest:
    """Hash every other file of the directory into m.files and write manifest.json; returns m."""
    directory = Path(directory)
    m.files = {str(p.relative_to(directory)): FileEntry(p.stat().st_size, sha256(p))
               for p in sorted(directory.rglob("*")) if p.is_file() and p.name != FILE}
    m.schema_version = SCHEMA_VERSION
    (directory / FILE).write_text(json.dumps(m.to_dict(), indent=2) + "\n")
    return m


def load_dict(directory: Path) -> dict:
    """manifest.json as JSON, without verification (to tell kinds apart)."""
    path = Path(directory) / FILE
    if not Path(directory).exists():
        recover(Path(directory))  # a writer killed between setting the old version aside and renaming the new one in
    if not path.is_file():
        raise ManifestError(f"{directory} has no {FILE}: pass a directory written by `compress run`, `compress quantize` or `compress pack`")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON ({e}): re-create the directory with the command that wrote it") from e
    if not isinstance(d, dict):
        raise ManifestError(f"{path} is not a JSON object: re-create the directory with the command that wrote it")
    return d


def kind_of(directory: Path) -> str:
    d = load_dict(directory)
    return d.get("kind") or ("artifact" if d.get("schema_version") == 1 else "")


def read(directory: str | Path, kind: type[Manifest] | None = None, verify: bool = True) -> Manifest:
    """Load manifest.json, check its schema version and kind, verify every listed file's SHA-256."""
    directory = Path(directory)
    path = directory / FILE
    d = load_dict(directory)
    version = d.get("schema_version")
    if version not in READABLE:
        raise ManifestError(f"{path} has schema_version {version}, this compress reads {list(READABLE)}: "
                            "re-create it with this version of compress")
    name = d.get("kind") or ("artifact" if version == 1 else None)
    if name not in KINDS:
        raise ManifestError(f"{path} has kind {name!r}, not one of {list(KINDS)}")
    if kind is not None and name != kind.kind:
        a = lambda k: f"{'an' if k[0] in 'aeiou' else 'a'} {k}"  # noqa: E731
        raise ManifestError(f"{directory} is {a(name)}, not {a(kind.kind)}: pass {a(kind.kind)} directory")
    try:
        m = KINDS[name].from_dict(d)
        _check_types(m, name)
        _check_files(m)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        raise ManifestError(f"{path} is not a valid {name} manifest ({what}): re-create it with this version of compress") from None
    if verify:
        for rel, entry in m.files.items():
            f = directory / rel
            if not f.is_file():
                raise ManifestError(f"{f} is listed in {FILE} but missing: restore it or re-create {directory}")
            if f.stat().st_size != entry.bytes or sha256(f) != entry.sha256:
                raise ManifestError(f"{f} does not match its SHA-256 in {FILE}: it was altered; restore it or re-create {directory}")
    return m


def _conforms(value, hint) -> bool:
    """Whether a loaded value has its annotated type (JSON gives lists for tuples; ints are floats too; bools are not numbers)."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_conforms(x, args[0]) for x in value) if args else isinstance(value, (list, tuple))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint) and _check_types(value, hint.__name__) is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def _check_types(obj, where: str) -> None:
    """Every field of a loaded manifest (nested configs included) has its annotated type; TypeError names the first that does not."""
    import typing

    # configs named under TYPE_CHECKING (QuantConfig, TrainConfig, ...) resolve to the classes from_dict built them with:
    # nothing more is imported, so a pack still loads without torch
    values = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    localns = {type(v).__name__: type(v) for v in values if dataclasses.is_dataclass(v)}
    hints = typing.get_type_hints(type(obj), localns=localns)
    for f in dataclasses.fields(obj):
        if f.name in hints and not _conforms(getattr(obj, f.name), hints[f.name]):
            raise TypeError(f"{where}.{f.name} is {str(getattr(obj, f.name))[:60]!r}, not {hints[f.name]}")


def _check_files(m: Manifest) -> None:
    """The listed files stay inside the directory, and the kind's essential files are listed (a manifest listing nothing verifies nothing)."""
    from compress.artifact import GRAPH, LEGACY_GRAPH

    for rel in m.files:
        if rel.startswith("/") or ".." in Path(rel).parts or not rel:
            raise ValueError(f"file entry {rel!r} points outside the directory")
    if isinstance(m, ArtifactManifest):
        need = [GRAPH if GRAPH in m.files or LEGACY_GRAPH not in m.files else LEGACY_GRAPH, "trainable.safetensors"]
    elif isinstance(m, BackboneManifest):
        need = [BACKBONE_WEIGHTS]
    else:
        need = [m.shared, m.tokenizer, *(t.onnx for t in m.tasks.values())]
    if missing := [f for f in need if f not in m.files]:
        raise ValueError(f"it does not list {missing}")


def manifest_sha256(directory: Path) -> str:
    return sha256(Path(directory) / FILE)
