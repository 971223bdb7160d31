"""manifest.json: the typed, versioned record that every stage's directory carries, verified on every read.

Three kinds share one schema version and one envelope (kind, schema version, command, time, package
versions, and the bytes and SHA-256 of every other file in the directory):

    ArtifactManifest  kind "artifact": one task (`compress run`): model, task, resolved configs, the backbone it
                      was trained on (if any), metrics, validation, sizes, latency, per-layer bits and density, ...
    BackboneManifest  kind "backbone": quantized frozen weights shared by tasks (`compress quantize`)
    PackManifest      kind "pack": one backbone + several tasks (`compress pack`)

Every part is a frozen dataclass declared once (compress.manifest_parts, re-exported here): ``read`` builds it from the
JSON by the annotations (compress.typed: a value of another type, a missing field or an unknown one is an invalid manifest), and ``write``
writes ``dataclasses.asdict`` of it. A manifest changes only by a new value (``dataclasses.replace`` or the
methods that say why: ``ArtifactManifest.reexported`` voids the old graph's measurements). ``write(dir, m)``
hashes the directory's files into the returned manifest and writes manifest.json; ``read(dir, Kind)`` checks
the schema version and kind, then every file's SHA-256.

Schema 3 (this version) declares every part; 2 kept validation, sizes, latency and layers as free-form
objects (the same keys), 1 had no kinds (artifacts only). Both still read (``_upgrade``; real manifests of
each are tests/fixtures/manifests). Nothing here imports torch or onnx: apps read packs and artifacts with
onnxruntime, tokenizers and numpy alone.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from compress import files, typed
from compress.configs import ExportConfig, QuantConfig
from compress.errors import ArtifactError
from compress.manifest_parts import (  # the parts, re-exported: compress.manifest is the contract
    BackboneRef,
    BackboneSizes,
    CalibrationInfo,
    Epoch,
    FileEntry,
    Latency,
    LayerInfo,
    MaterializedFrom,
    Metrics,
    ModelInfo,
    PackMemory,
    PackSizes,
    PackSource,
    PackTask,
    QLayer,
    RunSettings,
    SharedTensor,
    Sizes,
    Speed,
    Stage,
    TaskInfo,
    TeacherRef,
    Training,
    Validation,
)
from compress.staging import recover

__all__ = [  # the kinds, their parts, and reading and writing them
    "FILE",
    "READABLE",
    "SCHEMA_VERSION",
    "ArtifactManifest",
    "BackboneManifest",
    "BackboneRef",
    "BackboneSizes",
    "CalibrationInfo",
    "Epoch",
    "FileEntry",
    "Latency",
    "LayerInfo",
    "Manifest",
    "ManifestError",
    "MaterializedFrom",
    "Metrics",
    "ModelInfo",
    "PackManifest",
    "PackMemory",
    "PackSizes",
    "PackSource",
    "PackTask",
    "QLayer",
    "RunSettings",
    "SharedTensor",
    "Sizes",
    "Speed",
    "Stage",
    "TaskInfo",
    "TeacherRef",
    "Training",
    "Validation",
    "kind_of",
    "load_dict",
    "manifest_sha256",
    "parse",
    "read",
    "versions",
    "write",
]
SCHEMA_VERSION = 4  # 4: teacher, speed, config.distill (optional: a schema-3 manifest reads as is)
READABLE = (1, 2, 3, 4)
FILE = files.MANIFEST


class ManifestError(ArtifactError):
    """A manifest that is missing, malformed, of another kind or version, or whose files were altered."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def versions() -> dict[str, str]:
    """The versions of Python and of the packages that shape an artifact."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in (
        "compress-encoders",
        "torch",
        "transformers",
        "onnx",
        "onnxruntime",
        "onnxruntime-extensions",
        "optimum-onnx",
        "numpy",
        "tokenizers",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------- the kinds
@dataclass(frozen=True, kw_only=True)
class Manifest:
    kind: ClassVar[str] = ""
    schema_version: int = SCHEMA_VERSION
    command: str = ""
    created: str = field(default_factory=_now)
    versions: dict[str, str] = field(default_factory=versions)
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self), default=list))
        entries = d.pop("files")
        return {"kind": self.kind, **d, "files": entries}


@dataclass(frozen=True, kw_only=True)
class BackboneManifest(Manifest):
    kind: ClassVar[str] = "backbone"
    model: ModelInfo
    quant: QuantConfig
    calibration: CalibrationInfo
    layers: list[QLayer]
    sizes: BackboneSizes
    seconds: float = 0.0

    @property
    def weights_sha256(self) -> str:
        return self.files[files.BACKBONE_WEIGHTS].sha256


@dataclass(frozen=True, kw_only=True)
class ArtifactManifest(Manifest):
    kind: ClassVar[str] = "artifact"
    model: ModelInfo
    task: TaskInfo
    config: RunSettings
    backbone: BackboneRef | None = None
    density: float = 1.0
    mask_sha256: str | None = None  # maskcodec.mask_sha256 of the learned mask (structure mode): the same run gives the same hash
    layers: list[LayerInfo] = field(default_factory=list)
    training: Training = field(default_factory=lambda: Training([], 0, 0.0))
    metrics: Metrics = field(default_factory=lambda: Metrics({}, {}))
    validation: Validation = field(default_factory=Validation)
    fusions: dict[str, int] = field(default_factory=dict)
    ffn_neurons: dict[str, list[int]] = field(default_factory=dict)  # FFN second projection -> [neurons kept, total]
    attention_heads: dict[str, list[int]] = field(default_factory=dict)  # attention output projection -> [heads kept, total]
    sizes: Sizes = field(default_factory=Sizes)
    bench: dict[str, Latency] = field(default_factory=dict)  # "batch1", "batch32"
    seconds: float = 0.0
    stages: dict[str, Stage] = field(default_factory=dict)  # per pipeline stage
    exported_by: str | None = None
    materialized_from: MaterializedFrom | None = None
    teacher: TeacherRef | None = None  # distilled from this teacher
    speed: Speed | None = None  # asked for a speed (--speedup)

    @property
    def passed(self) -> bool | None:
        """The accuracy guard: True, False (kept after failing it), None (re-exported; not measured)."""
        return self.validation.passed

    @property
    def masked_weights(self) -> int:
        return sum(r.shape[0] * r.shape[1] for r in self.layers if r.masked)

    def reexported(
        self,
        *,
        export: ExportConfig,
        sizes: Sizes,
        parity_max_abs_diff: float,
        sample_max_abs_diff: float,
        fusions: dict[str, int],
        ffn_neurons: dict[str, list[int]],
        attention_heads: dict[str, list[int]],
        backbone_path: str | None,
        same_graph: bool,
    ) -> ArtifactManifest:
        """onnx/model.onnx was rebuilt (`compress export`): its config, sizes and parity are the new graph's, the graphs made
        from the old one are gone, and unless the new graph is byte-identical, so is what was measured on the old one (dev
        metric, agreement, guard verdict, latency: `compress bench DIR --data-dir D` measures them again)."""
        validation = replace(
            self.validation,
            parity_max_abs_diff=parity_max_abs_diff,
            sample_max_abs_diff=sample_max_abs_diff,
            ort_max_abs_diff=None,
            with_tokenizer_max_abs_diff=None,
        )
        sizes = replace(sizes, ort_total=None, with_tokenizer_total=None)
        m = replace(
            self,
            config=replace(self.config, export=export),
            sizes=sizes,
            validation=validation,
            fusions=fusions,
            ffn_neurons=ffn_neurons,
            attention_heads=attention_heads,
            backbone=replace(self.backbone, path=backbone_path) if self.backbone and backbone_path else self.backbone,
        )
        if same_graph:
            return m
        speed = replace(self.speed, reached=None, dense_ms=None, pruned_ms=None) if self.speed else None
        return replace(m, validation=m.validation.unmeasured(), metrics=replace(m.metrics, onnx={}), bench={}, speed=speed)

    def with_mobile(self, ort_bytes: int, max_abs_diff: float) -> ArtifactManifest:
        """onnx/model.ort was written beside the graph (`compress export DIR --format ort`)."""
        return replace(
            self, sizes=replace(self.sizes, ort_total=ort_bytes), validation=replace(self.validation, ort_max_abs_diff=max_abs_diff)
        )

    def with_tokenizer_graph(self, graph_bytes: int, max_abs_diff: float) -> ArtifactManifest:
        """onnx/model_with_tokenizer.onnx was written beside the graph (`compress export DIR --with-tokenizer`)."""
        return replace(
            self,
            sizes=replace(self.sizes, with_tokenizer_total=graph_bytes),
            validation=replace(self.validation, with_tokenizer_max_abs_diff=max_abs_diff),
        )

    def materialized(
        self,
        *,
        source: MaterializedFrom,
        onnx_total: int,
        mask_bytes: int,
        mask_sha256: str,
        pack_max_abs_diff: float,
        command: str,
        prefold: bool = False,
    ) -> ArtifactManifest:
        """A task written back from a pack (`compress materialize`): the graph with the shared tensors inlined, the mask recovered
        from the task graph (dropped FFN neurons' rows come back unpruned, hence its own hash); prefold: its weights folded."""
        config = replace(self.config, export=replace(self.config.export, prefold=True)) if prefold else self.config
        return replace(
            self,
            config=config,
            materialized_from=source,
            sizes=replace(self.sizes, onnx_total=onnx_total, masks=mask_bytes),
            mask_sha256=mask_sha256,
            validation=replace(self.validation, pack_max_abs_diff=pack_max_abs_diff),
            command=command or self.command,
        )


@dataclass(frozen=True, kw_only=True)
class PackManifest(Manifest):
    kind: ClassVar[str] = "pack"
    backbone: BackboneRef
    shared: str  # the shared weights file (the backbone's weights.safetensors)
    tokenizer: str  # tokenizer.json
    tasks: dict[str, PackTask]
    sizes: PackSizes
    memory: PackMemory | None = None  # not measured: None


KINDS: dict[str, type[Manifest]] = {k.kind: k for k in (ArtifactManifest, BackboneManifest, PackManifest)}


# ---------------------------------------------------------------- writing and reading
def write(directory: Path, m: Manifest) -> Manifest:
    """Hash every other file of the directory into the manifest and write manifest.json; returns the manifest written."""
    directory = Path(directory)
    entries = {
        str(p.relative_to(directory)): FileEntry(p.stat().st_size, files.sha256(p))
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != FILE
    }
    m = replace(m, files=entries, schema_version=SCHEMA_VERSION)
    (directory / FILE).write_text(json.dumps(m.to_dict(), indent=2) + "\n")
    return m


def load_dict(directory: Path) -> dict:
    """manifest.json as JSON, without verification (to tell kinds apart)."""
    path = Path(directory) / FILE
    if not Path(directory).exists():
        recover(Path(directory))  # a writer killed between setting the old version aside and renaming the new one in
    if not path.is_file():
        raise ManifestError(
            f"{directory} has no {FILE}: pass a directory written by `compress run`, `compress quantize` or `compress pack`"
        )
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
    m = parse(load_dict(directory), kind, directory / FILE)
    if verify:
        _verify(directory, m)
    return m


def parse(d: dict, kind: type[Manifest] | None = None, path: str | Path = FILE, listed: bool = True) -> Manifest:
    """A manifest from its parsed JSON (`path`: where it came from, for the messages): its schema version and kind checked, an
    earlier schema upgraded, every field typed, and (`listed`) its kind's files listed; ManifestError otherwise. A pack keeps
    each task's artifact manifest without its file list (`listed=False`)."""
    version = d.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in READABLE:
        raise ManifestError(
            f"{path} has schema_version {version}, this compress reads {list(READABLE)}: re-create it with this version of compress"
        )
    name = d.get("kind") or ("artifact" if version == 1 else None)
    if not isinstance(name, str) or name not in KINDS:  # (a list or a dict is no kind either)
        raise ManifestError(f"{path} has kind {name!r}, not one of {list(KINDS)}")
    if kind is not None and name != kind.kind:
        a = lambda k: f"{'an' if k[0] in 'aeiou' else 'a'} {k}"
        raise ManifestError(f"{Path(path).parent} is {a(name)}, not {a(kind.kind)}: pass {a(kind.kind)} directory")
    try:
        m = typed.load(KINDS[name], _upgrade(d, name))
        if listed:
            _check_files(m)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        raise ManifestError(f"{path} is not a valid {name} manifest ({what}): re-create it with this version of compress") from None
    return m


def _verify(directory: Path, m: Manifest) -> None:
    for rel, entry in m.files.items():
        f = directory / rel
        if not f.is_file():
            raise ManifestError(f"{f} is listed in {FILE} but missing: restore it or re-create {directory}")
        if f.stat().st_size != entry.bytes or files.sha256(f) != entry.sha256:
            raise ManifestError(f"{f} does not match its SHA-256 in {FILE}: it was altered; restore it or re-create {directory}")


def _upgrade(d: dict, kind: str) -> dict:
    """A manifest of an earlier schema as this one reads it (what an earlier version left out gets the meaning it had)."""
    d = {k: v for k, v in d.items() if k != "kind"} | {"schema_version": SCHEMA_VERSION}
    config = d.get("config")
    if kind == "artifact" and isinstance(config, dict) and isinstance(config.get("export"), dict):
        config = config | {"export": {"activations": "tensor", **config["export"]}}  # written before per-token scales existed
        d["config"] = config
    if kind == "pack" and d.get("memory") == {}:  # schema 2 wrote {} when the memory was not measured
        d["memory"] = None
    return d


def _check_files(m: Manifest) -> None:
    """The listed files stay inside the directory, and the kind's essential files are listed (a manifest listing nothing verifies
    nothing)."""
    for rel in m.files:
        if rel.startswith("/") or ".." in Path(rel).parts or not rel:
            raise ValueError(f"file entry {rel!r} points outside the directory")
    if isinstance(m, ArtifactManifest):
        graph = files.GRAPH if files.GRAPH in m.files or files.LEGACY_GRAPH not in m.files else files.LEGACY_GRAPH
        need = [graph, files.TRAINABLE]
    elif isinstance(m, BackboneManifest):
        need = [files.BACKBONE_WEIGHTS]
    else:
        need = [m.shared, m.tokenizer, *(t.onnx for t in m.tasks.values())]
    if missing := [f for f in need if f not in m.files]:
        raise ValueError(f"it does not list {missing}")


def manifest_sha256(directory: Path) -> str:
    return files.sha256(Path(directory) / FILE)
