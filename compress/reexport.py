"""`compress export DIR`: an artifact's graphs again from its mask and head, without retraining.

    format "onnx"  rebuild onnx/model.onnx (and config.json) from the base model (or backbone) + mask.npz +
                   trainable.safetensors (e.g. with another kernel); an artifact written before the Hugging Face
                   layout gets it. Byte-identical when nothing changed; otherwise the old graph's measurements are void.
    format "ort"   also write onnx/model.ort for ONNX Runtime's mobile packages and minimal builds: the low-bit graph
                   (MatMulNBits, GatherBlockQuantized; weights stay packed), whatever kernel onnx/model.onnx uses.
    with_tokenizer also write onnx/model_with_tokenizer.onnx (raw strings in; compress.exporters.tokenizer_graph),
                   checked against the two-step path on the shipped general text.

Every new graph is checked against PyTorch before anything is replaced: the artifact is rewritten whole or not at all.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np

from compress import build, calibration, files, hf_layout, report, restore, staging, tasks
from compress import manifest as mf
from compress.errors import ConfigError
from compress.exporters.export import export
from compress.exporters.verify import ParityError

FORMATS = ("onnx", "ort")


def reexport(
    directory: Path,
    kernel: str | None = None,
    fmt: str = "onnx",
    command: str = "",
    backbone_dir: str | None = None,
    activations: str | None = None,
    with_tokenizer: bool = False,
    prefold: bool | None = None,
) -> mf.ArtifactManifest:
    """Re-export an artifact without retraining (see the module docstring); returns the new manifest."""
    from compress.runtimes.bench import sample as padded_sample

    if fmt not in FORMATS:
        raise ConfigError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    directory = Path(directory)
    m = mf.read(directory, mf.ArtifactManifest)
    sample = padded_sample()
    with staging.staging(directory, overwrite=True) as tmp:
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
        graph = files.graph_path(tmp)
        rebuild = fmt == "onnx" or kernel is not None or activations is not None or prefold is not None
        # the mobile graph alone needs no calibration ranges (nbits: float activations)
        cfg = restore.config_from_manifest(m, backbone_dir, kernel=kernel if rebuild else "nbits", activations=activations, prefold=prefold)
        r = restore.restore(directory, m, cfg)
        linears, embedding = build.prepare(r.model, r.qweights)
        if rebuild:
            graph, m = _rebuild(tmp, m, cfg, r, linears, embedding, sample, directory)
        if fmt == "ort":
            m = m.with_mobile(*_mobile(r.model, linears, embedding, cfg.export, sample, graph, directory))
        if with_tokenizer:
            m = m.with_tokenizer_graph(*_with_tokenizer(graph, tmp, m))
        m = dataclasses.replace(m, exported_by=command)
        (tmp / files.REPORT).write_text(report.render(m))
        return mf.write(tmp, m)


def _rebuild(tmp: Path, m: mf.ArtifactManifest, cfg, r: restore.Restored, linears, embedding, sample, directory: Path):
    """onnx/model.onnx and config.json anew in `tmp` (the graphs made from the old one removed); -> (graph, manifest)."""
    for stale in (files.LEGACY_GRAPH, *files.LEGACY_MOBILE, files.MOBILE_GRAPH, files.MOBILE_OPERATORS, files.GRAPH_WITH_TOKENIZER):
        (tmp / stale).unlink(missing_ok=True)
    graph = tmp / files.GRAPH
    res = export(r.model, linears, embedding, graph, cfg.export, sample, calibration.batches(r.calibration))
    if not res.deployed_max_abs_diff <= cfg.export.max_logit_diff:  # NaN fails too; the old artifact stays as it was
        raise ParityError(
            f"the new {cfg.export.kernel}-kernel graph's logits differ from PyTorch's by up to "
            f"{res.deployed_max_abs_diff:.3g} > max_logit_diff {cfg.export.max_logit_diff:g} on the parity "
            f"sample: {directory} is unchanged; export with --kernel float (exact)"
        )
    hf_layout.write(tmp, r.model.encoder.config, tasks.get_task(m.task.name), m.config.train.max_length)
    old = m.files.get(files.GRAPH)
    same = old is not None and files.sha256(graph) == old.sha256  # another graph: the old one's figures are void, not kept
    m = m.reexported(
        export=cfg.export,
        sizes=res.sizes_in(m.sizes),
        parity_max_abs_diff=res.parity_max_abs_diff,
        sample_max_abs_diff=res.deployed_max_abs_diff,
        fusions=res.fusions,
        ffn_neurons=res.ffn_neurons,
        attention_heads=res.attention_heads,
        backbone_path=str(Path(cfg.backbone).resolve()) if cfg.backbone else None,
        same_graph=same,
    )
    return graph, m


def _mobile(model, linears, embedding, config, sample: dict, graph: Path, directory: Path) -> tuple[int, float]:
    """onnx/model.ort (+ its required-operators config) next to `graph`: the "nbits" kernel's graph (MatMulNBits and
    GatherBlockQuantized on the packed codes: the weights stay low-bit in the .ort), checked against PyTorch (bound
    max_logit_diff), the .ort against that graph (parity_atol) and against `graph`; -> (.ort bytes, max |logit - graph's|)."""
    from compress.exporters import ort_format, verify
    from compress.runtimes.session import open_session, run_logits

    with tempfile.TemporaryDirectory() as tmp:
        mobile = Path(tmp) / "model.onnx"  # the converter names its outputs after it: model.ort, model.required_operators.config
        res = export(model, linears, embedding, mobile, dataclasses.replace(config, kernel="nbits"), sample)
        if not res.deployed_max_abs_diff <= config.max_logit_diff:
            raise ParityError(
                f"the mobile (nbits) graph's logits differ from PyTorch's by up to {res.deployed_max_abs_diff:.3g} > "
                f"max_logit_diff {config.max_logit_diff:g} on the parity sample: {directory} is unchanged; "
                "export --format onnx and convert onnx/model.onnx yourself"
            )
        ort_file = next(p for p in ort_format.to_ort(mobile, graph.parent) if p.suffix == ".ort")
        logits = run_logits(open_session(ort_file), sample)
        verify.compare({"logits": run_logits(open_session(mobile), sample)}, {"logits": logits}, config.parity_atol, "model.ort")
    shipped = run_logits(open_session(graph), sample)
    return ort_file.stat().st_size, float(np.max(np.abs(logits.astype(np.float64) - shipped)))


def _with_tokenizer(graph: Path, tmp: Path, m: mf.ArtifactManifest) -> tuple[int, float]:
    """onnx/model_with_tokenizer.onnx beside `graph`; -> (its bytes, max |logit - the two-step path's|)."""
    from compress.exporters import tokenizer_graph

    text = calibration.general_sentences()[:64]
    pair = tasks.get_task(m.task.name).text_cols[1:] != ()
    out = graph.parent / tokenizer_graph.FILE
    diff = tokenizer_graph.write(
        graph, tmp, out, pair, m.config.train.max_length, (text[0::2], text[1::2]) if pair else (text, None), m.config.export.parity_atol
    )
    return out.stat().st_size, diff
