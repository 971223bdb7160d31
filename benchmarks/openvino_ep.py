"""ONNX Runtime's OpenVINO execution provider (onnxruntime-openvino, in an environment of its own: it replaces the
onnxruntime module) beside its CPU provider: dev metric and batch-1 / batch-32 latency of each graph form, against ORT's
int8 model on the CPU provider, all timed round-robin in one process of that environment (issue 24; OpenVINO's own
runtime: benchmarks/runtimes_qdq.py).

    python benchmarks/openvino_ep.py --data-dir ../shared/data/glue [--python .venv-openvino_ep/bin/python] [--rounds 5]

The artifacts and graph forms are benchmarks/runtimes_qdq.py's (under --work, made there or here the same way: MRPC and
SST-2 trained on 2,000 examples for 3 epochs, re-exported as int8, qdq weight-only and qdq static int8, and ORT's
quantize_dynamic of the same weights). The environment is the tests' (tests/conftest.py's openvino_ep_python: `python
-m pytest --full tests/integration/test_openvino_ep.py` makes it). That environment's onnxruntime is the OpenVINO build's
own (its CPU provider included), so every figure here comes from it. Results: results/openvino_ep.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROVIDERS = ("cpu", "openvino-ep")


def inside(spec: dict) -> dict:
    """In the OpenVINO build's environment: every (task, form, provider)'s dev metric, then their timings round-robin."""
    from runtimes_qdq import dev_metric, timings  # benchmarks/ is on sys.path when a script here runs

    rows, runnable = {}, {}
    for task, t in spec["tasks"].items():
        for form, graph in t["graphs"].items():
            for provider in PROVIDERS if form != spec["anchor"] else ("cpu",):
                key = (task, form, provider)
                rows[key] = {"metric": dev_metric(task, Path(t["art"]), Path(graph), provider, Path(spec["data_dir"]))}
                if not isinstance(rows[key]["metric"], str):
                    runnable[key] = Path(graph)
    for key, timing in timings(runnable, spec["rounds"]).items():
        rows[key] |= timing
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "rows": [[*k, v] for k, v in rows.items()]}


def render(args, out: dict) -> None:
    from _results import write
    from runtimes_qdq import ANCHOR

    from compress.latency import cpu_name

    rows = {tuple(r[:3]): r[3] for r in out["rows"]}
    lines = [
        "| task | graph | provider | dev metric | vs int8 on cpu | b1 ms | x anchor | b32 seq/s | x anchor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, form, provider), r in rows.items():
        a, base = rows[(task, ANCHOR, "cpu")], rows[(task, "int8", "cpu")]["metric"]
        if isinstance(r["metric"], str):
            lines.append(f"| {task} | {form} | {provider} | not run: {r['metric']} | | | | | |")
            continue
        lines.append(
            f"| {task} | {form} | {provider} | {r['metric']:.4f} | {r['metric'] - base:+.4f} | {r['b1_ms']:.2f} | "
            f"{r['b1_ms'] / a['b1_ms']:.2f} | {r['b32_seq_s']:.0f} | {r['b32_seq_s'] / a['b32_seq_s']:.2f} |"
        )
    ort = f"onnxruntime-openvino {out['onnxruntime']}"
    lines += ["", f"{cpu_name()}, 2 threads; {ort}; timings round-robin in one process, medians of {args.rounds} rounds."]
    write(args.results, "ONNX Runtime's OpenVINO execution provider beside its CPU provider (MiniLM-L6)", out, "\n".join(lines))


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1] == "--inside":  # (run by main() in the OpenVINO build's environment)
        print(json.dumps(inside(json.loads(sys.stdin.read()))))
        return 0
    from runtimes_qdq import ANCHOR, artifacts, graphs

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("runs/runtimes"))
    ap.add_argument("--tasks", nargs="+", default=["mrpc", "sst2"])
    ap.add_argument("--artifact", nargs="*", default=[], help="TASK=DIR: an existing 4-bit artifact of that task")
    ap.add_argument("--python", type=Path, default=Path(".venv-openvino_ep/bin/python"), help="onnxruntime-openvino's environment")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "openvino_ep"))
    args = ap.parse_args()
    if not args.python.is_file():
        raise SystemExit(
            f"{args.python}: no such python; make the environment with `python -m pytest --full tests/integration/test_openvino_ep.py`"
        )
    spec = {"anchor": ANCHOR, "data_dir": str(args.data_dir.resolve()), "rounds": args.rounds, "tasks": {}}
    for task, art in artifacts(args).items():
        spec["tasks"][task] = {"art": str(art.resolve()), "graphs": {f: str(g.resolve()) for f, g in graphs(args, task, art).items()}}
    r = subprocess.run([str(args.python), __file__, "--inside"], input=json.dumps(spec), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{args.python} {__file__} --inside failed:\n{r.stderr[-3000:]}")
    render(args, json.loads(r.stdout.strip().splitlines()[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
