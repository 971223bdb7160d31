"""report.md and the closing console table, rendered from an artifact's manifest."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compress.manifest import ArtifactManifest


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def summary_rows(m: ArtifactManifest) -> list[tuple[str, str]]:
    metric = m.task.metric
    t, o = m.metrics.torch, m.metrics.onnx
    v = m.validation
    unmeasured = "not measured (re-exported: `compress bench DIR --data-dir D`)"
    shipped = f"{v.dev_max_abs_diff:.2e}" if v.dev_max_abs_diff is not None else "not measured"
    rows = [
        (f"dev {metric} (PyTorch, masked)" if m.config.train.mode == "structure" else f"dev {metric} (PyTorch)", f"{t[metric]:.4f}"),
        (f"dev {metric} (ONNX Runtime)", f"{o[metric]:.4f}" if metric in o else unmeasured),
        ("prediction agreement", f"{v.agreement:.4f}" if v.agreement is not None else unmeasured),
        *([("accuracy guard", _guard(v))] if v.metric_drop_low is not None else []),
        ("max abs logit diff, float kernel / shipped", f"{v.parity_max_abs_diff:.2e} / {shipped}"),
        ("mask density", f"{m.density:.4f}" + (f" (mask SHA-256 {m.mask_sha256[:12]}...)" if m.mask_sha256 else "")),
        *([("transformer layers kept", f"the first {m.config.mask.layers} (the layers above removed)")] if m.config.mask.layers else []),
        *(
            [("FFN neurons kept", "{} of {} (the rest removed from the graph)".format(*map(sum, zip(*m.ffn_neurons.values()))))]
            if m.ffn_neurons
            else []
        ),
        *(
            [("attention heads kept", "{} of {} (the rest removed from the graph)".format(*map(sum, zip(*m.attention_heads.values()))))]
            if m.attention_heads
            else []
        ),
        *([("backbone", f"{m.backbone.path} (weights SHA-256 {m.backbone.sha256[:12]}...)")] if m.backbone else []),
        *([("teacher", _teacher(m))] if m.teacher else []),
        *([("speedup (batch 1, vs unpruned)", _speed(m))] if m.speed else []),
        ("onnx/model.onnx", _mb(m.sizes.onnx_total)),
    ]
    for b in m.bench.values():
        rows.append((f"latency {b.batch}x{b.seq_len} (median)", f"{b.median_ms:.2f} ms ({b.throughput_seq_s:.0f} seq/s)"))
    return rows


def _guard(v) -> str:
    verdict = "passed" if v.passed else "failed"
    return (
        f"{verdict}: dev metric drop {v.metric_drop:.4f}, 95% lower bound {v.metric_drop_low:.4f} over {v.dev_examples} examples "
        f"(limit {v.max_metric_drop})"
    )


def _teacher(m: ArtifactManifest) -> str:
    d, t = m.config.distill, m.teacher
    dev = f", dev {m.task.metric} {t.dev_metric:.4f}" if t.dev_metric is not None else ""
    how = f"alpha {d.alpha}, temperature {d.temperature}" + (f", hidden states x{d.hidden}" if d and d.hidden else "") if d else ""
    return f"{t.path} (SHA-256 {t.sha256[:12]}...{dev}; {how})"


def _speed(m: ArtifactManifest) -> str:
    s = m.speed
    reached = f"reached {s.reached:.2f}x ({s.dense_ms:.2f} -> {s.pruned_ms:.2f} ms)" if s.reached is not None else "reached: not measured"
    return f"asked {s.asked:g}x, predicted {s.predicted:.2f}x, {reached} on {s.cpu}"


def size_lines(m: ArtifactManifest) -> list[str]:
    """What each part of the artifact costs: the graph's parts, the mask file, the task head."""
    sz = m.sizes
    lines = [
        f"- onnx/model.onnx: {_mb(sz.onnx_total)} = encoder weight codes {_mb(sz.weights)} + scales and zero points "
        f"{_mb(sz.scales)} + word embeddings {_mb(sz.embeddings)} + other {_mb(sz.other)} "
        "(biases, LayerNorms, position embeddings, head, graph)"
    ]
    if sz.masks:
        lines.append(
            f"- mask.npz: {_mb(sz.masks)} ({8 * sz.masks / max(m.masked_weights, 1):.3f} bits per masked weight; "
            "already folded into onnx/model.onnx, kept to re-export or to apply to the shared quantized weights)"
        )
    if sz.head:
        lines.append(f"- trainable.safetensors (what the task trained): {_mb(sz.head)}")
    if sz.ort_total is not None:
        lines.append(
            f"- onnx/model.ort (ONNX Runtime mobile: MatMulNBits + GatherBlockQuantized, the weights at their bit width): "
            f"{_mb(sz.ort_total)}"
        )
    return lines


def render(m: ArtifactManifest) -> str:
    q, tr = m.config.quant, m.config.train
    bits = f"{q.bits}-bit" + (f", groups of {q.group_size}" if q.group_size else ", per channel") if q.bits <= 8 else "none (fp32)"
    lines = [f"# {m.model.name} on {m.task.name}: mode={tr.mode}, weights {bits}", "", f"Command: `{m.command}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(m)]
    lines += [
        "",
        f"Majority-class baseline: {m.metrics.majority}",
        "",
        "## Training (dev metric per epoch)",
        "",
        "| epoch | loss | dev | density | seconds |",
        "|---|---|---|---|---|",
    ]
    for h in m.training.history:
        dev = ", ".join(f"{k} {v:.4f}" for k, v in h.dev.items())
        mark = " (selected)" if h.epoch == m.training.best_epoch else ""
        lines.append(f"| {h.epoch}{mark} | {h.loss:.4f} | {dev} | {h.density:.4f} | {h.seconds:.0f} |")
    lines += ["", f"Selection: `{tr.select}` epoch by dev {m.task.metric}.", ""]
    if m.stages:
        lines += ["## Where the run's time and memory went", "", "| stage | seconds | peak resident memory GB |", "|---|---|---|"]
        lines += [f"| {name} | {st.seconds:.1f} | {st.peak_rss_gb:.2f} |" for name, st in m.stages.items()] + [""]
    lines += ["## Bytes", ""]
    lines += size_lines(m)
    lines += ["", "## Layers", "", "| layer | shape | bits | group | density |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.shape} | {r.bits} | {r.group_size or 'channel'} | {r.density:.4f} |" for r in m.layers]
    lines += ["", f"ONNX Runtime fusions: {m.fusions}", "", f"Versions: {m.versions}", ""]
    return "\n".join(lines)
