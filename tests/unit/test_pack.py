"""Several tasks on one backbone: pack, refusal, parity with the standalone artifacts, materialize, the Pack API, tampering."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirunner import error_line, invoke

from compress import Pack, maskcodec
from compress import manifest as mf
from compress.pack_writer import PackConfig, PackError, logits_parity, pack
from compress.runtimes.bench import inputs


@pytest.fixture(scope="module")
def glue2(tmp_path_factory) -> Path:
    """MRPC (pairs) and SST-2 (single sentences) in the GLUE layout, a few rows each."""
    d = tmp_path_factory.mktemp("glue2")
    (d / "MRPC").mkdir()
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = [f"{i % 2}\t{i}\t{i + 100}\tThe witness number {i} spoke .\tA witness spoke , number {i} ." for i in range(32)]
    (d / "MRPC" / "train.tsv").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    (d / "MRPC" / "dev.tsv").write_text(header + "\n".join(rows[:16]) + "\n", encoding="utf-8")
    (d / "SST-2").mkdir()
    sents = [f"{w} film , {i} times over\t{int(w == 'a great')}" for i in range(16) for w in ("a great", "a dull")]
    (d / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(sents) + "\n")
    (d / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(sents[:12]) + "\n")
    return d


@pytest.fixture(scope="module")
def trained(tiny_model_dir, glue2, tmp_path_factory):
    """A 4-bit backbone (GPTQ on the general text) and three artifacts on it: MRPC, SST-2, and MRPC with FFN neurons and
    attention heads removed."""
    root = tmp_path_factory.mktemp("packing")
    assert invoke("quantize", "--model", tiny_model_dir, "--bits", "4", "--calibration-examples", "16", "--out", root / "bb").exit_code == 0
    common = ["--backbone", root / "bb", "--data-dir", glue2, "--batch-size", "8", "--no-bench", "--mask-lr", "0.05"]
    for name, extra in {
        "mrpc": ["--task", "mrpc", "--epochs", "1"],
        "sst2": ["--task", "sst2", "--epochs", "1"],
        "mrpc-ffn": ["--task", "mrpc", "--epochs", "2", "--ffn-keep", "0.5", "--heads-keep", "0.5"],
        "mrpc-shallow": ["--task", "mrpc", "--epochs", "1", "--layers", "1"],
    }.items():
        r = invoke("run", *common, *extra, "--out", root / name)
        assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="module")
def packed(trained):
    out = trained / "pack"
    r = invoke("pack", out, trained / "mrpc", trained / "sst2")
    assert r.exit_code == 0, r.output
    return out


def test_pack_holds_the_backbone_once_and_a_small_graph_per_task(trained, packed):
    pm = mf.read(packed, mf.PackManifest)
    assert pm.command == f"compress pack {packed} {trained / 'mrpc'} {trained / 'sst2'}"  # the command as typed, every artifact named
    files = {p.name for p in packed.iterdir()}
    assert {
        "backbone.safetensors",
        "tokenizer.json",
        "mrpc.onnx",
        "mrpc.json.gz",
        "sst2.onnx",
        "sst2.json.gz",
        "report.md",
        "manifest.json",
    } <= files
    assert (packed / "backbone.safetensors").read_bytes() == (trained / "bb" / "weights.safetensors").read_bytes()
    assert pm.backbone.sha256 == mf.read(trained / "bb", mf.BackboneManifest).weights_sha256
    for name, t in pm.tasks.items():
        art = mf.read(trained / name, mf.ArtifactManifest)
        assert t.parity_max_abs_diff <= 1e-5 and t.metrics == art.metrics.onnx and t.labels == ["0", "1"]
        # every shared tensor is a reference into the backbone file; the task file holds its own part only
        graph = onnx.load(str(packed / t.onnx), load_external_data=False)
        ext = [i for i in graph.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        assert {e.value for i in ext for e in i.external_data if e.key == "location"} == {"backbone.safetensors"}
        from compress import backbone

        bb = backbone.load(trained / "bb")  # every quantized tensor's codes and scales, and e.g. the position embeddings
        offsets = {int(e.value) for i in ext for e in i.external_data if e.key == "offset"}
        wanted = [f"{q.name}.weight.{part}" for q in bb.manifest.layers for part in ("codes", "scale")]
        assert offsets >= {
            bb.data_start + bb.header[k]["data_offsets"][0] for k in wanted + ["encoder.embeddings.position_embeddings.weight"]
        }
        assert t.bytes < 0.25 * art.sizes.onnx_total and t.bits_per_masked_weight == pytest.approx(8 * t.bytes / t.masked_weights)
    s = pm.sizes
    assert s.total == s.shared + sum(s.tasks.values()) and s.vs_standalone < 1 and s.vs_ort_int8 < 0.6
    assert pm.memory.shared_in_memory is True and len(pm.memory.rss) == 3
    assert "the backbone file, mapped once" in (packed / "report.md").read_text()


def test_pack_graph_folds_to_the_standalone_int8_weights(trained, packed):
    """Same logits as the artifact's model.onnx on fresh inputs (shapes the pack never saw), and ONNX Runtime folds
    the unpack-and-mask subgraph away: the same integer kernels run."""
    from collections import Counter

    from compress.runtimes.session import open_session

    feeds = inputs(3, 17, seed=7)
    feeds["attention_mask"][2, 9:] = 0
    for name in ("mrpc", "sst2"):
        assert logits_parity(packed / f"{name}.onnx", trained / name / "onnx" / "model.onnx", feeds) <= 1e-5
    open_session(packed / "mrpc.onnx", optimized_path=trained / "opt.onnx")
    opt = onnx.load(str(trained / "opt.onnx"), load_external_data=False).graph
    ops = Counter(n.op_type for n in opt.node)
    assert ops["QAttention"] == 2 and ops["MatMulIntegerToFloat"] == 6  # per layer: Q/K/V fused; out, FFN x 2 (static scales)
    assert ops["BitShift"] == ops["ScatterElements"] == ops["NonZero"] == ops["CumSum"] == 0
    # the word embeddings stay packed (30522 x 64 codes, 2 per byte): rows are gathered and looked up at run time
    tables = {tuple(i.dims): i.data_type for i in opt.initializer if i.dims and i.dims[0] in (30522, 256)}
    assert tables == {(30522, 32): onnx.TensorProto.UINT8, (30522, 1): onnx.TensorProto.FLOAT, (256, 2): onnx.TensorProto.FLOAT}


def test_pack_sessions_share_the_backbone_map(trained, packed):
    """compress.Pack hands every session the backbone tensors the manifest places in its file, as views of one read-only
    map (no copy), and the logits are those of sessions that read the file themselves."""
    pm = mf.read(packed, mf.PackManifest)
    t = pm.tasks["mrpc"]
    emb = [(n, s) for n, s in t.shared_tensors.items() if s.dtype == "uint8" and len(s.shape) == 2 and s.shape[0] == 30522]
    assert len(emb) == 1 and emb[0][1].shape == [30522, 32]  # the word embeddings' 4-bit codes, 2 per byte, seen as rows
    bb = (packed / "backbone.safetensors").read_bytes()
    shared, alone = Pack(packed), Pack(packed, share_backbone=False)
    texts, texts_b = ["the witness spoke"], ["a witness , number 3"]
    assert np.array_equal(shared.logits("mrpc", texts, texts_b), alone.logits("mrpc", texts, texts_b))
    values = shared._initializers["mrpc"]
    assert set(values) == set(t.shared_tensors) and not alone._initializers["mrpc"]
    name, s = emb[0]
    view = values[name].numpy()
    assert np.shares_memory(view, shared._shared.map) and view.tobytes() == bb[s.offset : s.offset + s.length]
    # a session outlives the Pack it came from (it keeps the buffers ONNX Runtime reads): no crash, same logits
    code = (
        f"import gc; from compress import Pack; from compress.runtimes.bench import inputs; from compress.runtimes.session import "
        f"run_logits; s = Pack({str(packed)!r}).session('mrpc'); gc.collect(); print(run_logits(s, inputs(2, 9)).shape)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "(2, 2)", r.stderr[-500:]


def test_a_pack_task_loads_from_the_fold_cache_the_second_time(packed, tmp_path, monkeypatch):
    """The first session of a task writes its folded graph to the cache (keyed by the pack's manifest and the task), the
    backbone's tensors left to the shared map; a later Pack reads it without folding: the logits of the fold in memory."""
    from compress.runtimes import staged_fold

    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    texts, texts_b = ["the witness spoke", "a dull film"], ["a witness , number 3", "it was"]
    monkeypatch.setenv("COMPRESS_FOLD_CACHE", "0")
    want = Pack(packed).logits("mrpc", texts, texts_b)
    monkeypatch.delenv("COMPRESS_FOLD_CACHE")
    assert np.array_equal(Pack(packed).logits("mrpc", texts, texts_b), want)
    (entry,) = (tmp_path / "cache" / "folded").iterdir()
    written = onnx.load(entry / "model.onnx", load_external_data=False).graph
    external = {i.name: {e.key: e.value for e in i.external_data} for i in written.initializer if i.external_data}
    shared = mf.read(packed, mf.PackManifest).tasks["mrpc"].shared_tensors
    assert {e["location"] for e in external.values()} == {"folded.bin"} and set(external) & set(shared)  # given, not written
    assert np.array_equal(Pack(packed, share_backbone=False).logits("mrpc", texts, texts_b), want)  # an entry of its own

    folds = []
    monkeypatch.setattr(staged_fold, "fold", lambda *args, **kwargs: folds.append(args))
    assert np.array_equal(Pack(packed).logits("mrpc", texts, texts_b), want)
    assert np.array_equal(Pack(packed, share_backbone=False).logits("mrpc", texts, texts_b), want)
    assert folds == []  # both read from the cache
    assert len(list((tmp_path / "cache" / "folded").iterdir())) == 2


def test_pack_api_predicts_like_the_artifacts(trained, packed, glue2):
    p = Pack(packed)
    assert p.tasks == ["mrpc", "sst2"] and not p._sessions  # sessions open lazily
    from compress.runtimes import evaluate
    from compress.runtimes.session import open_session

    texts = ["a great film , 3 times over", "a dull film"]
    assert p.predict("sst2", texts) == [str(i) for i in p.logits("sst2", texts).argmax(-1)] and list(p._sessions) == ["sst2"]
    ref = evaluate.texts_logits(
        open_session(trained / "sst2" / "onnx" / "model.onnx"), trained / "sst2" / "tokenizer.json", 128, texts, None
    )
    assert np.abs(p.logits("sst2", texts) - ref).max() <= 1e-5
    assert len(p.predict("mrpc", ["one", "two"], ["uno", "dos"])) == 2
    with pytest.raises(KeyError, match="no task 'cola'"):
        p.predict("cola", texts)
    # the app-side reader needs neither torch nor transformers
    code = (
        f"import sys; from compress import Pack; Pack({str(packed)!r}).predict('mrpc', ['a'], ['b']); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.slow  # --full only
def test_refusals_name_the_file_and_the_reason(trained, tiny_model_dir, glue2, tmp_path):
    r = invoke("pack", tmp_path / "p", trained / "mrpc", trained / "mrpc")
    assert r.exit_code != 0 and "a pack holds one artifact per task" in error_line(r)
    plain = tmp_path / "plain"
    assert (
        invoke(
            "run", "--model", tiny_model_dir, "--task", "sst2", "--data-dir", glue2, "--epochs", "1", "--no-bench", "--out", plain
        ).exit_code
        == 0
    )
    r = invoke("pack", tmp_path / "p", trained / "mrpc", plain)
    assert r.exit_code != 0 and f"{plain / 'manifest.json'} records no backbone" in error_line(r)
    other = tmp_path / "bb8"
    assert invoke("quantize", "--model", tiny_model_dir, "--bits", "8", "--out", other).exit_code == 0
    assert (
        invoke(
            "run", "--backbone", other, "--task", "sst2", "--data-dir", glue2, "--epochs", "1", "--no-bench", "--out", tmp_path / "sst2-8"
        ).exit_code
        == 0
    )
    r = invoke("pack", tmp_path / "p", trained / "mrpc", tmp_path / "sst2-8")
    line = error_line(r)
    assert r.exit_code != 0 and str(tmp_path / "sst2-8" / "manifest.json") in line and "differs from" in line
    assert mf.read(other, mf.BackboneManifest).weights_sha256[:16] in line
    r = invoke("pack", tmp_path / "p", trained / "mrpc", "--backbone", other)  # a backbone, but not the one it was trained on
    assert r.exit_code != 0 and "pass the backbone it was trained on" in error_line(r)
    assert not (tmp_path / "p").exists()


@pytest.mark.slow  # --full only
def test_pruned_artifacts_pack_and_materialize(trained, tmp_path):
    """Removed FFN neurons and attention heads are gathered out of the shared codes, scales and biases in the folded
    subgraph: the same logits, and the task graph's matrices as small as the standalone artifact's."""
    out = tmp_path / "pack"
    _, pm = pack(PackConfig((str(trained / "mrpc-ffn"), str(trained / "sst2")), str(out), memory=False))
    t, art = pm.tasks["mrpc"], mf.read(trained / "mrpc-ffn", mf.ArtifactManifest)
    assert t.ffn_neurons == {f"encoder.encoder.layer.{i}.output.dense": [64, 128] for i in range(2)} and t.parity_max_abs_diff <= 1e-5
    assert t.attention_heads == art.attention_heads == {f"encoder.encoder.layer.{i}.attention.output.dense": [2, 4] for i in range(2)}
    assert "| 128 of 256 | 4 of 8 |" in (out / "report.md").read_text()
    # ONNX Runtime folds the pack's gathers into the same (smaller) attention weights the standalone graph has
    standalone = _attention_weight_shapes(trained / "mrpc-ffn" / "onnx" / "model.onnx", tmp_path / "a.onnx")
    assert _attention_weight_shapes(out / t.onnx, tmp_path / "b.onnx") == standalone == [(64, 96)] * 2
    r = invoke("materialize", out, "mrpc", "--out", tmp_path / "mat")
    assert r.exit_code == 0, r.output
    assert (
        logits_parity(tmp_path / "mat" / "onnx" / "model.onnx", trained / "mrpc-ffn" / "onnx" / "model.onnx", inputs(2, 11, seed=3)) <= 1e-5
    )
    # the recovered mask removes the same neurons: a re-export gives the same graph's logits
    a, b = maskcodec.load_masks(trained / "mrpc-ffn" / "mask.npz"), maskcodec.load_masks(tmp_path / "mat" / "mask.npz")
    for second in ("encoder.encoder.layer.0.output.dense", "encoder.encoder.layer.1.attention.output.dense"):
        assert np.array_equal(a[second], b[second])
    # the rows of removed heads are not in the pack: recovered unpruned (the heads are dead either way), the rest as trained
    query, output = "encoder.encoder.layer.0.attention.self.query", "encoder.encoder.layer.0.attention.output.dense"
    live = a[output].reshape(64, 4, 16).any((0, 2)).repeat(16)  # the Q rows of the heads kept
    assert 0 < live.sum() < 64 and np.array_equal(a[query][live], b[query][live]) and b[query][~live].all()
    re = invoke("export", tmp_path / "mat", "--kernel", "float")
    assert re.exit_code == 0, re.output
    assert mf.read(tmp_path / "mat", mf.ArtifactManifest).attention_heads == art.attention_heads


def test_an_artifact_with_fewer_layers_packs_and_materializes(trained, tmp_path):
    """--layers 1: the task's graph holds one of the backbone's two layers, in the pack as standalone."""
    out = tmp_path / "pack"
    _, pm = pack(PackConfig((str(trained / "mrpc-shallow"), str(trained / "sst2")), str(out), memory=False))
    assert pm.tasks["mrpc"].parity_max_abs_diff <= 1e-5
    for graph in (trained / "mrpc-shallow" / "onnx" / "model.onnx", out / pm.tasks["mrpc"].onnx):
        names = " ".join(i.name for i in onnx.load(graph, load_external_data=False).graph.initializer)
        assert "layer.0." in names and "layer.1." not in names
    assert json.loads((trained / "mrpc-shallow" / "config.json").read_text())["num_hidden_layers"] == 1
    assert "transformer layers kept | the first 1" in (trained / "mrpc-shallow" / "report.md").read_text()
    r = invoke("materialize", out, "mrpc", "--out", tmp_path / "mat")
    assert r.exit_code == 0, r.output
    mat = tmp_path / "mat" / "onnx" / "model.onnx"
    assert logits_parity(mat, trained / "mrpc-shallow" / "onnx" / "model.onnx", inputs(2, 11, seed=3)) <= 1e-5
    assert mf.read(tmp_path / "mat", mf.ArtifactManifest).config.mask.layers == 1
    re = invoke("export", tmp_path / "mat", "--kernel", "float")
    assert re.exit_code == 0, re.output


def _attention_weight_shapes(path: Path, optimized: Path) -> list[tuple[int, ...]]:
    """The shapes of the QAttention nodes' weights in the graph ONNX Runtime optimized at load (written to `optimized`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    inits = {i.name: tuple(i.dims) for i in g.initializer}
    return [inits[n.input[1]] for n in g.node if n.op_type == "QAttention"]


def test_materialize_gives_a_standalone_artifact(trained, packed, tmp_path):
    out = tmp_path / "mat"
    r = invoke("materialize", packed, "sst2", "--out", out)
    assert r.exit_code == 0, r.output
    m = mf.read(out, mf.ArtifactManifest)
    assert m.materialized_from.task == "sst2" and m.validation.pack_max_abs_diff == 0.0
    # the Hugging Face layout, as a trained artifact has it
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    assert logits_parity(out / "onnx" / "model.onnx", trained / "sst2" / "onnx" / "model.onnx", inputs(2, 9, seed=5)) <= 1e-5
    onnx.checker.check_model(str(out / "onnx" / "model.onnx"), full_check=True)
    assert not [i for i in onnx.load(str(out / "onnx" / "model.onnx")).graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    orig = maskcodec.load_masks(trained / "sst2" / "mask.npz")
    assert all(np.array_equal(v, maskcodec.load_masks(out / "mask.npz")[k]) for k, v in orig.items())
    from safetensors.numpy import load_file

    head, ref = load_file(str(out / "trainable.safetensors")), load_file(str(trained / "sst2" / "trainable.safetensors"))
    assert head.keys() == ref.keys() and all(np.array_equal(head[k], ref[k]) for k in ref)
    app = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "examples" / "classify.py"), str(out), "a great film"],
        capture_output=True,
        text=True,
    )
    assert app.returncode == 0 and app.stdout.startswith("sst2: label "), app.stderr
    bad = invoke("materialize", packed, "cola", "--out", tmp_path / "x")
    assert bad.exit_code != 0 and "has no task 'cola': it holds mrpc, sst2" in error_line(bad)
    # no calibration tokens travel in a pack: a new int8 graph is refused with the reason, the exact one is rebuilt
    again = invoke("export", out)
    assert again.exit_code != 0 and "materialized from the pack" in error_line(again)
    assert invoke("export", out, "--kernel", "float").exit_code == 0
    qdq = invoke("export", out, "--kernel", "qdq")  # the standard-ONNX form of a pack's task (weight-only: no calibration needed)
    assert qdq.exit_code == 0 and {n.domain for n in onnx.load(str(out / "onnx" / "model.onnx")).graph.node} == {""}, qdq.output
    mobile = invoke("export", out, "--format", "ort")  # the mobile graph needs no activation ranges: the way to a pack task's .ort
    assert mobile.exit_code == 0 and (out / "onnx" / "model.ort").is_file(), mobile.output


def test_materialize_prefold_stores_the_folded_weights(trained, packed, tmp_path):
    """--prefold: the unpack / mask / re-round subgraphs are folded at materialize (ONNX Runtime's basic optimizations), so
    the graph holds the int8 weights and loading it folds nothing; the same logits."""
    from collections import Counter

    plain, folded = tmp_path / "plain", tmp_path / "folded"
    assert invoke("materialize", packed, "mrpc", "--out", plain).exit_code == 0
    r = invoke("materialize", packed, "mrpc", "--out", folded, "--prefold")
    assert r.exit_code == 0, r.output
    m = mf.read(folded, mf.ArtifactManifest)
    assert m.config.export.prefold and m.validation.pack_max_abs_diff <= 1e-5
    assert logits_parity(folded / "onnx" / "model.onnx", trained / "mrpc" / "onnx" / "model.onnx", inputs(2, 9, seed=5)) <= 1e-5
    graph = onnx.load(str(folded / "onnx" / "model.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["BitShift"] == ops["CumSum"] == ops["ScatterElements"] == ops["Where"] == 0 and ops["MatMulIntegerToFloat"] == 6
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8) == 8 and m.sizes.onnx_total > mf.read(plain, mf.ArtifactManifest).sizes.onnx_total  # 2 x (QKV, out, FFN x 2)


def test_bench_and_check_accept_a_pack(packed, glue2, tmp_path):
    r = invoke("bench", packed, "--batch", "1", "--seq-len", "16", "--data-dir", glue2, "--json", tmp_path / "bench.json")
    assert r.exit_code == 0, r.output
    assert "mrpc on cpu" in r.output and "sst2 on cpu" in r.output and r.output.count("batch 1 x 16") == 2
    pm = mf.read(packed, mf.PackManifest)
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"metrics": {f"{t}.onnx.{m.metric}": m.metrics[m.metric] for t, m in pm.tasks.items()}}))
    for report in (packed, tmp_path / "bench.json"):  # the pack's recorded metrics, and the ones bench measured through it
        ok = invoke("check", report, "--baseline", base)
        assert ok.exit_code == 0 and "sst2.onnx.accuracy" in ok.output, ok.output


def test_a_tampered_pack_is_refused_on_every_read(packed, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(packed, bad)
    data = bytearray((bad / "backbone.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "backbone.safetensors").write_bytes(bytes(data))
    with pytest.raises(mf.ManifestError, match="backbone.safetensors does not match its SHA-256"):
        Pack(bad)
    for args in (["bench", bad], ["check", bad, "--baseline", bad], ["materialize", bad, "mrpc", "--out", tmp_path / "m"]):
        r = invoke(*args)
        assert r.exit_code != 0 and "does not match its SHA-256" in error_line(r)
    (bad / "backbone.safetensors").write_bytes((packed / "backbone.safetensors").read_bytes())
    (bad / "sst2.onnx").write_bytes((bad / "sst2.onnx").read_bytes() + b"\0")
    with pytest.raises(mf.ManifestError, match="sst2.onnx does not match"):
        Pack(bad)
    assert not (tmp_path / "m").exists()


def test_pack_error_types(trained):
    with pytest.raises(PackError, match="at least one artifact"):
        pack(PackConfig((), str(trained / "none")))


@pytest.mark.slow  # --full only
@pytest.mark.parametrize("bits", ["8", "2"])
def test_other_grids_pack_exactly(tiny_model_dir, glue2, tmp_path, bits):
    """8-bit codes (stored as int8 + 128) and 2-bit asymmetric groups of 16 (zero points per group) unpack alike."""
    assert invoke("quantize", "--model", tiny_model_dir, "--bits", bits, "--quantizer", "rtn", "--out", tmp_path / "bb").exit_code == 0
    args = ["--epochs", "1", "--no-bench", "--mask-lr", "0.05"]
    r = invoke("run", "--backbone", tmp_path / "bb", "--task", "sst2", "--data-dir", glue2, *args, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    _, pm = pack(PackConfig((str(tmp_path / "a"),), str(tmp_path / "p"), memory=False))
    assert pm.tasks["sst2"].parity_max_abs_diff <= 1e-5
    assert logits_parity(tmp_path / "p" / "sst2.onnx", tmp_path / "a" / "onnx" / "model.onnx", inputs(2, 13, seed=4)) <= 1e-5


@pytest.mark.slow  # --full only
def test_a_failed_accuracy_guard_is_packed_only_when_allowed(trained, glue2, tmp_path):
    failed = tmp_path / "failed"
    impossible = ["--max-logit-diff", "1e-9"]  # an impossible guard: the artifact is kept, flagged
    r = invoke(
        "run",
        "--backbone",
        trained / "bb",
        "--task",
        "sst2",
        "--data-dir",
        glue2,
        "--epochs",
        "1",
        "--no-bench",
        *impossible,
        "--out",
        failed,
    )
    assert r.exit_code == 1
    refused = invoke("pack", tmp_path / "p", trained / "mrpc", failed, "--no-memory")
    assert refused.exit_code != 0 and "--allow-failed-guard" in error_line(refused) and not (tmp_path / "p").exists()
    ok = invoke("pack", tmp_path / "p", trained / "mrpc", failed, "--no-memory", "--allow-failed-guard")
    assert ok.exit_code == 0 and "(failed its accuracy guard)" in ok.output
    pm = mf.read(tmp_path / "p", mf.PackManifest)
    assert pm.tasks["sst2"].guard_passed is False and pm.tasks["mrpc"].guard_passed is True
