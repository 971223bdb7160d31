"""Does a sequence's prediction depend on what it is batched with? Per-token vs per-tensor activation scales.

    python benchmarks/batch_independence.py --data-dir ../shared/data/glue --artifacts runs/pack_glue/pertask-{mrpc,sst2,cola,stsb}-s0

Each artifact (any int8 `compress run` directory; copies are re-exported, the originals are not
touched) is exported twice: `--activations token` (one scale per token, the default) and
`--activations tensor` (ONNX Runtime's DynamicQuantizeLinear over the whole padded batch, fused
into DynamicQuantizeMatMul / QAttention). On the whole dev set each graph is run three ways:
one sequence at a time with no padding (the reference), batches of 32 padded to their longest
(how `compress` evaluates), and batches of 32 with every row padded to 128 tokens. Printed: the
largest |logit difference| and the predictions that flip against the reference, the dev metric,
and the latency at batch 1 and 32 x 128 of the first artifact's two graphs and of ONNX Runtime's own
quantize_dynamic (per channel int8, BERT fusions) of the same weights, timed round-robin in one process.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from _results import write  # benchmarks/ is on sys.path when a script here runs
from export_vs_ort import reexported
from smoothing import ort_dynamic

from compress.files import graph_path

MODES = ("token", "tensor")


def exported(art: Path, activations: str, work: Path) -> Path:
    from compress.reexport import reexport

    d = work / f"{art.name}-{activations}"
    shutil.copytree(art, d)
    reexport(d, kernel="int8", activations=activations)
    return graph_path(d)


def three_ways(sess, enc, pad_id: int) -> dict[str, np.ndarray]:
    from compress.runtimes import evaluate
    from compress.runtimes.session import run_logits

    n = len(enc["input_ids"])
    alone = np.concatenate([run_logits(sess, evaluate.pad(enc, [i], pad_id)) for i in range(n)])
    batched = evaluate.logits(sess, enc, 32, pad_id)
    long = {k: [s + [pad_id if k == "input_ids" else 0] * (128 - len(s)) for s in v] for k, v in enc.items()}
    padded = evaluate.logits(sess, long, 32, pad_id)
    return {"alone": alone, "batch32": batched, "pad128": padded}


def _n(flips: int | None) -> str:
    return "-" if flips is None else str(flips)  # regression: no classes to flip


def main() -> int:
    from compress import manifest as mf
    from compress import metrics, tasks
    from compress.runtimes import bench, evaluate
    from compress.runtimes.session import open_session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--artifacts", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=7, help="round-robin latency rounds")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "batch_independence"))
    args = ap.parse_args()
    rows, lat_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for art in map(Path, args.artifacts):
            m = mf.read(art, mf.ArtifactManifest)
            task = tasks.get_task(m.task.name)
            dev = tasks.load_task(task, args.data_dir)["dev"]
            tok = evaluate.load_tokenizer(art / "tokenizer.json", m.config.train.max_length)
            enc = evaluate.encode(tok, dev.text_a, dev.text_b)
            pad_id = m.model.pad_token_id
            sessions = {}
            if not lat_rows:  # latency: the first artifact's graphs and ORT's own int8 model of the same weights
                anchor = Path(tmp) / "anchor"
                anchor.mkdir()
                sessions["ORT int8"] = open_session(ort_dynamic(graph_path(reexported(art, "float", anchor)), anchor))
            for mode in MODES:
                sess = sessions[mode] = open_session(exported(art, mode, Path(tmp)))
                out = three_ways(sess, enc, pad_id)
                ref = out["alone"]
                row = {
                    "task": m.task.name,
                    "activations": mode,
                    "examples": len(dev.labels),
                    "metric": task.metric,
                    "dev_metric": metrics.compute(task, out["batch32"], dev.labels)[task.metric],
                }
                for way in ("batch32", "pad128"):
                    row[f"{way}_max_abs_diff"] = float(np.abs(out[way] - ref).max())
                    row[f"{way}_flips"] = None if task.is_regression else int((out[way].argmax(1) != ref.argmax(1)).sum())
                rows.append(row)
                print(row, file=sys.stderr)
            if lat_rows:
                continue
            times = {(k, b): [] for k in sessions for b in (1, 32)}
            for _ in range(args.rounds):
                for k, sess in sessions.items():
                    for b in (1, 32):
                        times[(k, b)].append(bench.latency(sess, b, 128, warmup=2, runs=20 if b == 1 else 3).median_ms)
            for b in (1, 32):
                t = {k: float(np.median(times[(k, b)])) for k in sessions}
                lat_rows.append({"task": m.task.name, "batch": b, **{f"{k}_ms": v for k, v in t.items()}})
    table = [
        "| task | activation scales | dev metric | batch 32 (padded to longest) vs alone: max abs logit diff, flips "
        "| padded to 128 vs alone: max abs logit diff, flips |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['task']} ({r['examples']}) | per {r['activations']} | {r['metric']} {r['dev_metric']:.4f} "
            f"| {r['batch32_max_abs_diff']:.2g}, {_n(r['batch32_flips'])} | {r['pad128_max_abs_diff']:.2g}, {_n(r['pad128_flips'])} |"
        )
    table += [
        "",
        f"Latency of {lat_rows[0]['task']}'s graphs, seq 128, median of {args.rounds} round-robin rounds in one process "
        "(x int8: against ORT quantize_dynamic of the same weights):",
        "",
        "| batch | per token ms | x int8 | per tensor ms | x int8 | ORT int8 ms | per token / per tensor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in lat_rows:
        a = r["ORT int8_ms"]
        table.append(
            f"| {r['batch']} | {r['token_ms']:.2f} | {r['token_ms'] / a:.2f} | {r['tensor_ms']:.2f} | {r['tensor_ms'] / a:.2f} "
            f"| {a:.2f} | {r['token_ms'] / r['tensor_ms']:.2f}x |"
        )
    write(
        args.results,
        "Batch and padding independence: per-token vs per-tensor activation scales",
        {"accuracy": rows, "latency": lat_rows},
        "\n".join(table),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
