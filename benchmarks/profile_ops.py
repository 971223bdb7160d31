"""Where the time goes: ONNX Runtime's profiler, summed per operator type, at batch 1 x 128.

    python benchmarks/profile_ops.py --dense DENSE_ARTIFACT --artifacts ARTIFACT ... [--graphs NAME=FILE.onnx ...] [--batch 1] [--threads 2]

Profiles ORT's int8 anchor (built from the dense artifact as in export_vs_ort.py) and each artifact's
model.onnx: per operator type the mean time per run and the node count, from ORT's own profiler
(SessionOptions.enable_profiling), after ORT's graph optimizations (the kernels that actually run).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
from _results import write  # benchmarks/ is on sys.path when a script here runs
from export_vs_ort import build_anchors

from compress.files import graph_path


def profile(path: Path, threads: int, runs: int, prefix: str, batch: int = 1) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(1000, 2000, (batch, 128)),
        "attention_mask": np.ones((batch, 128), np.int64),
        "token_type_ids": np.zeros((batch, 128), np.int64),
    }
    feeds = {i.name: feeds[i.name].astype(np.int64) for i in sess.get_inputs()}
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    total = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    per_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    n = len(total)
    return {
        "run_ms": float(np.median(total[n // 4 :])) / 1e3,
        "ops": {op: {"ms": us / n / 1e3, "nodes": count[op] // n} for op, us in per_op.most_common()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", required=True, type=Path)
    ap.add_argument("--artifacts", nargs="+", type=Path, default=[])
    ap.add_argument("--graphs", nargs="+", default=[], help="more graphs to profile, as NAME=FILE.onnx")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "profile_ops"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = {"ORT int8 dynamic": build_anchors(args.dense, Path(tmp))["ORT int8 dynamic"]}
        models.update({d.name: graph_path(d) for d in args.artifacts})
        models.update({g.split("=", 1)[0]: Path(g.split("=", 1)[1]) for g in args.graphs})
        rows = {
            name: profile(p, args.threads, args.runs, str(Path(tmp) / f"prof{i}"), args.batch) for i, (name, p) in enumerate(models.items())
        }
    ops = list(dict.fromkeys(op for r in rows.values() for op in r["ops"]))
    lines = ["| operator | " + " | ".join(f"{n} ms (nodes)" for n in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for op in ops:
        cells = [f"{r['ops'][op]['ms']:.3f} ({r['ops'][op]['nodes']})" if op in r["ops"] else "" for r in rows.values()]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("| **whole run (median)** | " + " | ".join(f"**{r['run_ms']:.2f}**" for r in rows.values()) + " |")
    write(args.results, f"ONNX Runtime profile per operator type, batch {args.batch} x 128", rows, "\n".join(lines))


if __name__ == "__main__":
    main()
