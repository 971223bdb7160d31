"""-> runtime report: the shipped graph's dev metric through ONNX Runtime against PyTorch's, the accuracy guard, latency.

``validate`` runs the dev set through the artifact's graph; the guard fails when the dev set shows ONNX Runtime's
metric trailing PyTorch's by more than ``ExportConfig.max_metric_drop`` (compress.guard: the drop's 95% lower bound,
which knows how many examples it judged) or its logits differ by more than ``max_logit_diff``. A run
that fails it keeps its artifact (``validation.passed = false``) and exits 1 (``guard_error`` names the fixes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress import files, guard, metrics
from compress import manifest as mf
from compress.configs import RunConfig
from compress.exporters.verify import AccuracyDriftError


@dataclass(frozen=True)
class Checked:
    torch_metrics: dict[str, float]
    onnx_metrics: dict[str, float]
    validation: mf.Validation  # the dev-set checks (the export's parity figures are added by the caller)
    bench: dict[str, mf.Latency]


def validate(directory: Path, task, dev, torch_logits: np.ndarray, torch_metrics: dict[str, float], cfg: RunConfig, pad_id: int) -> Checked:
    """Dev metric through ONNX Runtime, agreement with PyTorch, latency; the guard's verdict (not raised: see guard_error)."""
    from compress.runtimes import bench, evaluate
    from compress.runtimes.session import open_session

    sess = open_session(files.graph_path(directory), threads=cfg.threads, fold_first=cfg.export.folds_at_load)
    ort_logits = evaluate.texts_logits(sess, directory / files.TOKENIZER, cfg.train.max_length, dev.text_a, dev.text_b, pad_id)
    ort_metrics = metrics.compute(task, ort_logits, dev.labels)
    p_t, p_o = metrics.predictions(task, torch_logits), metrics.predictions(task, ort_logits)
    agreement = float(np.mean(p_t == p_o)) if not task.is_regression else float(np.corrcoef(p_t, p_o)[0, 1])
    drop = guard.drop(task, torch_logits, ort_logits, dev.labels)
    diff = float(np.max(np.abs(ort_logits.astype(np.float64) - torch_logits)))
    exp = cfg.export
    failure = None
    if drop.exceeds(exp.max_metric_drop):
        failure = (
            f"ONNX Runtime dev {task.metric} {ort_metrics[task.metric]:.4f} trails PyTorch's "
            f"{torch_metrics[task.metric]:.4f} {drop.describe()} > max_metric_drop {exp.max_metric_drop}"
        )
    elif not diff <= exp.max_logit_diff:
        failure = f"ONNX Runtime's dev logits differ from PyTorch's by up to {diff:.3g} > max_logit_diff {exp.max_logit_diff:g}"
    checks = mf.Validation(
        passed=failure is None,
        failure=failure,
        agreement=agreement,
        metric_drop=drop.observed,
        metric_drop_low=drop.low,
        dev_examples=drop.examples,
        max_metric_drop=exp.max_metric_drop,
        dev_max_abs_diff=diff,
        max_logit_diff=exp.max_logit_diff,
    )
    timed = {}
    if cfg.bench:
        for b in (1, 32):
            timed[f"batch{b}"] = bench.latency(sess, batch=b, seq_len=128, runs=50 if b == 1 else 10)
    return Checked(torch_metrics, ort_metrics, checks, timed)


def guard_error(m: mf.ArtifactManifest, out: Path, cfg: RunConfig) -> AccuracyDriftError:
    """The error of an artifact kept after failing its accuracy guard, naming the re-exports that fix it without retraining."""
    exp, token = cfg.export, ""
    if exp.kernel == "int8" and exp.activations == "static":
        token = f"`compress export {out} --activations token` re-exports with per-token activation scales, "
    if exp.kernel == "qdq" and exp.activations == "static":
        token = f"`compress export {out} --kernel qdq --activations none` re-exports it weight-only (exact), "
    return AccuracyDriftError(
        f"{m.validation.failure}: the artifact is kept at {out} with validation.passed = false; {token}"
        f"`compress export {out} --kernel float` ships the exact graph without retraining"
    )
