"""How the format and the pipeline scale: tiny, MiniLM-L6, bert-base and bert-large shapes.

    python benchmarks/scale.py --data-dir ../shared/data/glue [--models tiny minilm bert-base bert-large] [--rounds 2]

The hub is unreachable here, so bert-base and bert-large are built from their configs with random weights (accuracy is
not the point at this size; size, speed and the pipeline's cost are). For each model:

1. `compress run --model DIR --task mrpc --max-train-examples 64 --max-eval-examples 64 --epochs 1 --no-bench` (4-bit,
   the defaults: GPTQ, static activation scales; 2 training steps), in its own process: wall time and peak resident
   memory of the process (os.wait4), and per stage from the artifact's manifest (`stages`: seconds, peak resident GB);
2. ONNX Runtime's own int8 model of the same weights (fp32 export, BERT fusions, quantize_dynamic per channel) and the
   artifact's graph: file size, and latency at batch 1 and batch 32 for 128 and 384 tokens, timed round-robin in this
   one process (medians over --rounds rounds; at batch 32 a few runs each, these are seconds per call on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import command_of, verdict, write  # benchmarks/ is on sys.path when a script here runs

SHAPES = {  # transformers.BertConfig fields; minilm is the embedded pretrained model
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    "bert-base": dict(),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
LATENCY = [(1, 128, 20), (32, 128, 3), (1, 384, 10), (32, 384, 2)]  # batch, tokens, timed runs per round


def model_dir(name: str, work: Path) -> str:
    if name == "minilm":
        return "minilm"
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from compress.models import embedded_dir

    d = work / f"model-{name}"
    if not d.is_dir():
        torch.manual_seed(0)
        BertModel(BertConfig(**SHAPES[name])).save_pretrained(d)
        AutoTokenizer.from_pretrained(embedded_dir()).save_pretrained(d)
    return str(d)


def run(name: str, model: str, data_dir: str, work: Path, batch: int = 32) -> dict:
    """One `compress run`; when its memory check refuses the batch (bert-large at 32 on 24 GB), again at half the batch."""
    out = work / f"art-{name}"
    cmd = [
        sys.executable,
        "-m",
        "compress.cli",
        "run",
        "--model",
        model,
        "--task",
        "mrpc",
        "--data-dir",
        data_dir,
        "--max-train-examples",
        "64",
        "--max-eval-examples",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        str(batch),
        "--no-bench",
        "--overwrite",
        "--out",
        str(out),
    ]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - t0
    if status != 0:
        refused = [ln for ln in stderr.splitlines() if "lower --batch-size" in ln]
        if refused and batch > 1:
            print(f"{name}: batch {batch} refused before training ({refused[0][:160]}...): batch {batch // 2}", flush=True)
            return run(name, model, data_dir, work, batch // 2) | {"refused": refused[0]}
        raise SystemExit(f"{name}: compress run failed:\n{stderr[-3000:]}")
    from compress import manifest as mf

    m = mf.read(out, mf.ArtifactManifest).to_dict()  # rows of the results JSON
    return {
        "model": name,
        "artifact": str(out),
        "batch": batch,
        "wall_s": wall,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
        "stages": m["stages"],
        "onnx_mb": m["sizes"]["onnx_total"] / 1e6,
        "sizes": m["sizes"],
        "dev_f1": m["metrics"]["onnx"].get("f1"),
    }


def anchor(model: str, work: Path, name: str) -> Path:
    from compress.exporters.anchor import ort_int8
    from compress.models import build_classifier

    clf, _, _ = build_classifier(model, 2, seed=0)
    cfg = clf.encoder.config
    d = work / f"ort-{name}"
    d.mkdir(exist_ok=True)
    return ort_int8(clf.eval(), cfg.num_attention_heads, cfg.hidden_size, d)[1]


def latencies(paths: dict[str, Path], rounds: int) -> dict[str, dict]:
    """Round-robin over the graphs, medians over rounds."""
    import numpy as np

    from compress.runtimes import bench
    from compress.runtimes.session import open_session

    sessions = {k: open_session(p) for k, p in paths.items()}
    times = {k: {(b, s): [] for b, s, _ in LATENCY} for k in paths}
    for _ in range(rounds):
        for b, s, runs in LATENCY:
            for k, sess in sessions.items():
                times[k][(b, s)].append(bench.latency(sess, batch=b, seq_len=s, warmup=1, runs=runs, max_seconds=0).median_ms)
    return {k: {f"b{b}x{s}_ms": float(np.median(v)) for (b, s), v in t.items()} for k, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models", nargs="+", default=["tiny", "minilm", "bert-base", "bert-large"])
    ap.add_argument("--timed", nargs="+", default=["minilm", "bert-base", "bert-large"], help="models to time against ORT int8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default=None, help="keep models and artifacts here [a temporary directory]")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "scale"))
    ap.add_argument("--update", action="store_true", help="measure only --models again; keep the other models' rows from the results JSON")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.models:
        model = model_dir(name, work)
        row = run(name, model, a.data_dir, work)
        print(f"{name}: compress run {row['wall_s']:.0f} s, peak {row['peak_rss_gb']:.2f} GB, {row['onnx_mb']:.1f} MB", flush=True)
        if name in a.timed:
            from compress.files import graph_path

            int8 = anchor(model, work, name)
            row["ort_int8_mb"] = int8.stat().st_size / 1e6
            row["latency"] = latencies({"compress": graph_path(Path(row["artifact"])), "ort_int8": int8}, a.rounds)
            print(f"  {row['latency']}", flush=True)
        rows.append(row)
    command = None
    if a.update:  # the other rows as they were; the table names both commands
        res = Path(a.results)
        new = {r["model"]: r for r in rows}
        old = json.loads(res.with_suffix(".json").read_text())
        rows = [new.pop(r["model"], r) for r in old] + list(new.values())
        command = f"{command_of(res)}`, then `python {' '.join(sys.argv)}"
    stage_names = list(dict.fromkeys(k for r in rows for k in r["stages"]))
    lines = [
        "`compress run` (64 MRPC pairs, 1 epoch, 64 dev pairs, 4-bit defaults), each model in its own process:",
        "",
        "| model | batch (steps) | wall s | peak resident GB | " + " | ".join(f"{s}: s / peak GB" for s in stage_names) + " |",
        "|---|---|---|---|" + "---|" * len(stage_names),
    ]
    for r in rows:
        cells = [f"{r['stages'][s]['seconds']:.0f} / {r['stages'][s]['peak_rss_gb']:.2f}" if s in r["stages"] else "" for s in stage_names]
        lines.append(
            f"| {r['model']} | {r['batch']} ({-(-64 // r['batch'])}) | {r['wall_s']:.0f} | {r['peak_rss_gb']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [f"\n{r['model']} at batch {2 * r['batch']}: `{r['refused']}`" for r in rows if "refused" in r]
    lines += [
        "",
        "Against ONNX Runtime's int8 export of the same weights (sizes; latency medians in ms, batch x tokens; ratio = compress / "
        "ORT int8, so below 1 is better for size and latency):",
        "",
        "| model | MB (x int8) | 4-bit codes MB (x int8) | " + " | ".join(f"b{b}x{s} ms (x int8)" for b, s, _ in LATENCY) + " |",
        "|---|---|---|" + "---|" * len(LATENCY),
    ]
    for r in rows:
        if "latency" not in r:
            continue
        c, o = r["latency"]["compress"], r["latency"]["ort_int8"]
        cells = [f"{c[f'b{b}x{s}_ms']:.1f} ({c[f'b{b}x{s}_ms'] / o[f'b{b}x{s}_ms']:.2f})" for b, s, _ in LATENCY]
        codes = (r["sizes"]["weights"] + r["sizes"]["embeddings"]) / 1e6
        lines.append(
            f"| {r['model']} | {r['onnx_mb']:.1f} ({r['onnx_mb'] / r['ort_int8_mb']:.2f}) | {codes:.1f} ({codes / r['ort_int8_mb']:.2f}) | "
            + " | ".join(cells)
            + " |"
        )
    big = [r for r in rows if r["model"] in ("bert-base", "bert-large") and "latency" in r]
    if big:
        lines += [
            "",
            "| target (x ORT int8) | " + " | ".join(r["model"] for r in big) + " |",
            "|---|" + "---|" * len(big),
            "| size <= 0.45 | " + " | ".join(verdict(r["onnx_mb"] / r["ort_int8_mb"], 0.45) for r in big) + " |",
            "| b1x128 latency <= 0.85 | "
            + " | ".join(verdict(r["latency"]["compress"]["b1x128_ms"] / r["latency"]["ort_int8"]["b1x128_ms"], 0.85) for r in big)
            + " |",
            "",
            "Where the ratios come from: the 4-bit codes of the encoder linears and the word embedding table alone (the "
            "codes column) are about half of ORT int8's file, so 0.45x needs fewer weights (--ffn-keep / --heads-keep) or fewer "
            "bits; the rest is scales and float tensors (position embeddings, biases, LayerNorms, the pooler). At run time the "
            "4-bit weights are int8 (unpacked at session load) and go through the same integer kernels as ORT's "
            "(MatMulIntegerToFloat and QAttention vs DynamicQuantizeMatMul and QAttention), plus a smoothing Mul and a "
            "QuantizeLinear per quantized activation (3 and 4 per layer) that ORT's kernel does internally "
            "(benchmarks/results/profile_ops.md), so the latency is about ORT int8's, not below it.",
        ]
    write(
        a.results,
        "Scale: the pipeline's cost and the graph's size and speed from tiny to bert-large (2-core CPU)",
        rows,
        "\n".join(lines),
        command=command,
    )


if __name__ == "__main__":
    main()
