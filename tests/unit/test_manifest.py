"""compress.manifest: typed all the way down, frozen, versioned, verified; every manifest an earlier release wrote still reads."""

import dataclasses
import json
from pathlib import Path

import pytest

from compress import manifest as mf
from compress.configs import ExportConfig, QuantConfig
from compress.errors import ArtifactError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "manifests"
OLD = sorted(FIXTURES.glob("*/*.json"))


def backbone_manifest() -> mf.BackboneManifest:
    model = mf.ModelInfo("x", "/x", True, "mean", "bert", 64, 4, ["input_ids", "attention_mask"], 0)
    return mf.BackboneManifest(
        model=model,
        quant=QuantConfig(bits=4),
        calibration=mf.CalibrationInfo("none"),
        layers=[mf.QLayer("a", [2, 2], 4, None, True)],
        sizes=mf.BackboneSizes(codes=2),
    )


def test_manifest_is_typed_versioned_and_verified(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"onnx")
    m = mf.write(tmp_path, backbone_manifest())
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["kind"] == "backbone" and raw["schema_version"] == mf.SCHEMA_VERSION == 4 and list(raw)[-1] == "files"
    assert raw["files"]["weights.safetensors"]["bytes"] == 4 and raw["sizes"] == {"codes": 2, "scales": 0, "embeddings": 0, "floats": 0}
    back = mf.read(tmp_path, mf.BackboneManifest)
    assert back == m and back.quant.bits == 4 and back.layers[0].shape == [2, 2] and back.weights_sha256 == m.weights_sha256
    with pytest.raises(mf.ManifestError, match="is a backbone, not an artifact: pass an artifact directory"):
        mf.read(tmp_path, mf.ArtifactManifest)
    (tmp_path / "weights.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="weights.safetensors does not match its SHA-256"):
        mf.read(tmp_path)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        mf.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        mf.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 3, "kind": "backbone", "model": {}}))
    with pytest.raises(ArtifactError, match=r"not a valid backbone manifest \(TypeError: model.name is missing\)"):
        mf.read(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not a JSON object"):
        mf.read(tmp_path)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        mf.read(tmp_path / "elsewhere")


def test_the_loader_names_the_field_that_does_not_fit():
    d = json.loads((FIXTURES / "schema2-last" / "artifact.json").read_text())
    for path, value, message in [
        (("metrics", "onnx"), "x", "metrics.onnx is 'x', not dict[str, float]"),
        (("density",), True, "density is 'True', not float"),
        (("sizes", "weights"), 1.5, "sizes.weights is '1.5', not int"),
        (("config", "quant", "bits"), 3, "bits=3 is not supported"),
        (("validation", "surprise"), 1, "validation has unknown fields ['surprise']"),
    ]:
        doc = json.loads(json.dumps(d))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = value
        with pytest.raises(mf.ManifestError, match=message.replace("[", r"\[").replace("]", r"\]")):
            mf.parse(doc)


def test_a_kind_or_schema_version_of_the_wrong_type_is_refused_as_a_manifest_error():
    """Found by the fuzz test: a kind of [None] raised TypeError (unhashable) instead of saying what is wrong."""
    d = json.loads((FIXTURES / "schema2-last" / "artifact.json").read_text())
    for field, value, message in [("kind", [None], "has kind [None], not one of"), ("schema_version", [2], "has schema_version [2]")]:
        with pytest.raises(mf.ManifestError, match=message.replace("[", r"\[").replace("]", r"\]")):
            mf.parse(d | {field: value})


@pytest.mark.parametrize("path", OLD, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_earlier_schema_still_reads(path):
    d = json.loads(path.read_text())
    m = mf.parse(d, path=path, listed="pack-task" not in path.name)
    assert d["schema_version"] in (1, 2, 3) and m.schema_version == mf.SCHEMA_VERSION
    assert type(m).kind == d.get("kind", "artifact")
    again = mf.parse(m.to_dict(), listed="pack-task" not in path.name)  # written as this schema, read back: the same values
    assert again == m
    if isinstance(m, mf.ArtifactManifest):
        assert m.teacher is None and m.speed is None and m.config.distill is None  # schema 4's: none before
        assert m.config.export.activations == d["config"]["export"].get("activations", "tensor")  # before: one scale per batch
        assert m.passed is d["validation"].get("passed", True) and m.metrics.torch == d["metrics"]["torch"]
        assert [h.epoch for h in m.training.history] == [h["epoch"] for h in d["training"]["history"]]
        assert all(isinstance(r, mf.LayerInfo) for r in m.layers) and m.masked_weights == sum(
            r["shape"][0] * r["shape"][1] for r in d["layers"] if r.get("masked")
        )
        assert {k: v.median_ms for k, v in m.bench.items()} == {k: v["median_ms"] for k, v in d.get("bench", {}).items()}
    if isinstance(m, mf.PackManifest):
        assert (m.memory is None) == (not d.get("memory")) and all(isinstance(t.source, mf.PackSource) for t in m.tasks.values())
        assert m.sizes.total == d["sizes"]["total"]


def test_reexported_voids_what_was_measured_on_another_graph():
    m = mf.parse(json.loads((FIXTURES / "schema2-last" / "artifact.json").read_text()))
    m = m.with_mobile(100, 0.01).with_tokenizer_graph(200, 0.001)
    assert m.sizes.ort_total == 100 and m.validation.with_tokenizer_max_abs_diff == 0.001 and m.bench and m.metrics.onnx
    kw = dict(
        export=ExportConfig(kernel="float"),
        sizes=m.sizes,
        parity_max_abs_diff=1e-7,
        sample_max_abs_diff=1e-7,
        fusions={},
        ffn_neurons={},
        attention_heads={},
        backbone_path=None,
    )
    same = m.reexported(same_graph=True, **kw)
    assert same.metrics.onnx == m.metrics.onnx and same.bench == m.bench and same.validation.passed is True
    assert same.config.export.kernel == "float" and same.sizes.ort_total is None and same.validation.ort_max_abs_diff is None
    other = m.reexported(same_graph=False, **kw)
    assert other.metrics.onnx == {} and other.bench == {} and other.passed is None
    assert other.validation.agreement is None and other.validation.dev_max_abs_diff is None and other.validation.parity_max_abs_diff == 1e-7
    assert m.metrics.onnx and m.passed is True  # the manifest it came from is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.density = 0.5


def test_a_manifest_field_is_declared_once():
    """Every part is a dataclass read by the annotations: no hand-written from_dict that could fall out of step."""
    parts = [v for v in vars(mf).values() if dataclasses.is_dataclass(v) and v.__module__.startswith("compress.manifest")]
    assert len(parts) > 15 and all(dataclasses.fields(p) and not hasattr(p, "from_dict") for p in parts)
    assert all(p.__dataclass_params__.frozen for p in parts)
