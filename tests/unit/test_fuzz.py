"""Hostile input, generated (hypothesis): every reader ends in a correct result or its one clear error type, never a traceback.

- GLUE TSV reader: random bytes, random rows of random column counts, bad encodings, huge fields, empty files, NaN scores.
- manifest loader (artifact, backbone and pack kinds): random bytes, random JSON, a real manifest with keys removed or values
  replaced (wrong types, NaN); through `compress bench`/`compress check` too: exit 1 with one Error line.
- `compress check`'s report reader: random JSON, sweep/bench/pack-shaped files with random insides, NaN metrics (which
  never pass a check).

How many inputs each reader got, and of which kind: `python -m pytest tests/unit/test_fuzz.py --hypothesis-show-statistics`.
"""

import copy
import json
import math
import shutil

import pytest
from clirunner import invoke, small_mrpc
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from compress import check, tasks
from compress import manifest as mf
from compress.errors import ArtifactError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _one_line(e: Exception) -> str:
    text = str(e)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# ---------------------------------------------------------------- GLUE TSV
cells = st.text(alphabet=st.characters(blacklist_characters="\t\n", blacklist_categories=("Cs",)), max_size=30)
rows = st.lists(st.lists(cells | st.sampled_from(["0", "1", "2.5", "nan", "inf", "-1", "positive", ""]), max_size=12), max_size=8)


@FUZZ
@given(
    task=st.sampled_from(["mrpc", "sst2", "cola", "stsb", "wnli"]),
    data=st.binary(max_size=400) | rows.map(lambda rs: "\n".join("\t".join(r) for r in rs).encode()),
)
@example(task="sst2", data=b"sentence\tlabel\n" + b"x" * 1_000_000 + b"\t1\n")  # a huge field
@example(task="stsb", data="h\n" + "\t".join(["a"] * 7) + "\tnan\n")  # a NaN score
@example(task="mrpc", data=b"\xff\xfe\x00h\x00i")  # UTF-16
@example(task="cola", data=b"")
def test_glue_reader(tmp_path_factory, task, data):
    t = tasks.get_task(task)
    path = tmp_path_factory.mktemp("tsv") / "train.tsv"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    try:
        split = tasks.read_tsv(path, t, "train")
    except tasks.TaskDataError as e:
        assert str(path) in _one_line(e)
        return
    assert len(split) > 0 and len(split.text_a) == len(split.labels)
    assert split.text_b is None or len(split.text_b) == len(split.labels)
    if t.is_regression:
        assert all(math.isfinite(x) for x in split.labels)
    else:
        assert all(x in range(len(t.labels)) for x in split.labels)


# ---------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def artifact_dir(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    glue = small_mrpc(d)
    out = d / "art"
    r = invoke("run", "--model", tiny_model_dir, "--data-dir", glue, "--epochs", "1", "--batch-size", "8", "--no-bench", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def _paths(d, prefix=()):
    """Every key path of a JSON document."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d[:3]):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _mutate(doc: dict, path: tuple, value, delete: bool) -> dict:
    doc = copy.deepcopy(doc)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@FUZZ
@given(data=st.data())
def test_manifest_loader(artifact_dir, tmp_path_factory, data):
    original = json.loads((artifact_dir / mf.FILE).read_text())
    kind = data.draw(st.sampled_from(["artifact", "pack", "backbone"]))
    how = data.draw(st.sampled_from(["bytes", "json", "mutate", "mutate", "mutate"]))
    event(f"{kind} manifest: {how}")
    if how == "bytes":
        text = data.draw(st.binary(max_size=300))
    elif how == "json":
        text = json.dumps(data.draw(json_values)).encode()
    else:
        paths = list(_paths(original))
        path = data.draw(st.sampled_from(paths))
        doc = _mutate(original, path, data.draw(json_values | st.just(float("nan"))), data.draw(st.booleans()))
        doc["kind"] = kind if path != ("kind",) else doc.get("kind")
        text = json.dumps(doc).encode()
    d = tmp_path_factory.mktemp("m")
    (d / mf.FILE).write_bytes(text)
    try:
        m = mf.read(d, verify=False)
    except ArtifactError as e:
        _one_line(e)
    else:
        assert isinstance(m, mf.Manifest)
    try:
        check.read_metrics(d)
    except check.CheckError as e:
        _one_line(e)


def test_manifest_fuzz_through_the_cli(artifact_dir, tmp_path):
    """A few altered manifests through the commands that read them: exit 1, one Error line, nothing written."""
    original = json.loads((artifact_dir / mf.FILE).read_text())
    docs = [
        b"\x00\xff garbage",
        b"[]",
        json.dumps({**original, "files": []}).encode(),
        json.dumps({**original, "metrics": {"torch": {"f1": float("nan")}, "onnx": "x"}}).encode(),
        json.dumps({**original, "config": {"quant": {"bits": "four"}}}).encode(),
        json.dumps({**original, "schema_version": 99}).encode(),
    ]
    for i, text in enumerate(docs):
        d = shutil.copytree(artifact_dir, tmp_path / f"a{i}")
        (d / mf.FILE).write_bytes(text)
        for args in (("bench", d, "--batch", "1"), ("export", d), ("check", d, "--baseline", artifact_dir)):
            r = invoke(*args)
            errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
            assert r.exit_code == 1 and len(errors) == 1, (args, r.output)


# ---------------------------------------------------------------- check's report reader
shaped = st.one_of(
    st.fixed_dictionaries({"kind": st.just("sweep"), "summary": json_values}),
    st.fixed_dictionaries(
        {
            "kind": st.just("sweep"),
            "summary": st.lists(
                st.fixed_dictionaries(
                    {"mode": json_values, "bits": json_values, "metrics": st.dictionaries(st.text(max_size=5), json_values, max_size=3)}
                ),
                max_size=3,
            ),
        }
    ),
    st.fixed_dictionaries({"kind": st.just("pack"), "tasks": json_values}),
    st.fixed_dictionaries({"kind": st.just("bench"), "tasks": st.dictionaries(st.text(max_size=5), json_values, max_size=3)}),
    st.fixed_dictionaries({"metrics": st.dictionaries(st.text(max_size=6), st.floats() | json_values, max_size=4)}),
    st.fixed_dictionaries({"metrics": st.fixed_dictionaries({"onnx": json_values, "torch": json_values})}),
    json_values,
)


@FUZZ
@given(report=shaped, raw=st.none() | st.binary(max_size=200))
def test_check_report_reader(tmp_path_factory, report, raw):
    path = tmp_path_factory.mktemp("r") / "report.json"
    path.write_bytes(raw if raw is not None else json.dumps(report).encode())
    try:
        got = check.read_metrics(path)
    except check.CheckError as e:
        _one_line(e)
        return
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in got.items())
    if got:
        rows = check.compare(got, got)
        for r in rows:
            assert r.ok if math.isfinite(r.baseline) else (not r.ok or not math.isnan(r.baseline))  # NaN never passes, even against itself
        check.render(rows)


def test_nan_metric_fails_the_check_from_the_cli(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"metrics": {"f1": 0.8}}))
    (tmp_path / "nan.json").write_text('{"metrics": {"f1": NaN}}')
    r = invoke("check", tmp_path / "nan.json", "--baseline", tmp_path / "base.json")
    assert r.exit_code == 1 and "REGRESSED" in r.output
