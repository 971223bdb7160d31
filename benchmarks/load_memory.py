"""What loading a graph costs: peak and resident memory and load time, per graph form, at MiniLM and bert-base shapes
(issue 24). Several tasks of a pack open in one app: benchmarks/pack_memory.py.

    python benchmarks/load_memory.py --data-dir ../shared/data/glue [--work runs/load_memory] [--repeats 3]

Per shape (MiniLM-L6: the embedded pretrained model; bert-base: built from its config with random weights, as
benchmarks/scale.py does: memory and speed do not depend on the weights' values), one 4-bit artifact with the defaults
(`compress run --task mrpc`, 64 training pairs, 1 epoch: what is measured is loading, not accuracy), re-exported as:
  int8 (default)    the packed 4-bit codes, unpacked and re-rounded to int8 by ONNX Runtime's constant folding at load
  int8 --prefold    the int8 weights stored as the kernels take them (`compress export DIR --prefold`)
  qdq               `compress export DIR --kernel qdq` (standard ONNX, weight-only), on ONNX Runtime and on OpenVINO
and ONNX Runtime's own int8 model of the same weights. The default graph loads three ways with its weights folded first
(compress.runtimes.staged_fold): in memory (the fold cache off, as a pack's task loads), and through the fold cache
(compress.runtimes.fold_cache): its first load (into an empty cache, each time) and later loads (from the cache the first
filled). Each (graph, runtime) loads in a fresh process --repeats times
(benchmarks/runtimes_qdq.py's LOAD_SCRIPT: the session created, one batch-1 x 128 run; resident memory and its peak,
less the process's before loading); medians.
Results: results/load_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs
from pack_glue import compress, finished
from runtimes_qdq import cached_loads, load
from scale import anchor, model_dir

SHAPES = ("minilm", "bert-base")
FOLDED = "cpu, folded first in memory"  # compress.runtimes.staged_fold, the fold cache off (as a pack's task loads)
FIRST, CACHED = "cpu, fold cache: first load", "cpu, fold cache: later loads"  # compress.runtimes.fold_cache
FORMS = {"int8 (default)": (), "int8 --prefold": ("--prefold",), "qdq (weight-only)": ("--kernel", "qdq")}


def graphs(args, shape: str) -> dict[tuple[str, str], Path]:
    """(form, runtime) -> graph, for one shape."""
    model = model_dir(shape, args.work)
    art = args.work / f"{shape}-4bit"
    if finished(art) is None:
        compress("run", "--model", model, "--task", "mrpc", "--data-dir", str(args.data_dir), "--max-train-examples", "64",
                 "--max-eval-examples", "64", "--epochs", "1", "--no-bench", "--out", str(art))  # fmt: skip
    out = {}
    for form, flags in FORMS.items():
        d = args.work / shape / form.split()[0] / ("prefold" if "--prefold" in flags else "")
        if flags and finished(d) is None:
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(art, d)
            compress("export", str(d), *flags)
        graph = (d if flags else art) / "onnx" / "model.onnx"
        out[(form, "cpu")] = graph
        if not flags:  # the same graph, its weights folded before ONNX Runtime loads the rest (compress.Pack, compress bench)
            out |= {(form, FOLDED): graph, (form, FIRST): graph, (form, CACHED): graph}
        if "qdq" in flags:
            out[(form, "openvino")] = graph
    out[("ORT int8 (quantize_dynamic)", "cpu")] = anchor(model, args.work, shape)
    return out


def measure(graph: Path, runtime: str, repeats: int, cached: dict) -> dict:
    """Medians over `repeats` fresh processes; cached: the fold cache's (first loads, later loads) of each graph."""
    if runtime in (FIRST, CACHED):
        runs = cached.setdefault(graph, cached_loads(graph, repeats))[runtime == CACHED]
    else:
        runs = [load(graph, runtime.split(",")[0], fold_first=runtime == FOLDED) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"mb": graph.stat().st_size / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("runs/load_memory"))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "load_memory"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows, cached = {}, {}
    for shape in args.shapes:
        for (form, runtime), graph in graphs(args, shape).items():
            rows[f"{shape} | {form} | {runtime}"] = measure(graph, runtime, args.repeats, cached)
    return render(args, rows)


def render(args, rows: dict) -> int:
    from compress.latency import cpu_name

    lines = [
        "| shape | graph | runtime | MB (x ORT int8) | load ms (x) | peak MB at load (x) | resident MB (x) | batch-1 x 128 ms, first run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        a = rows[f"{key.split(' | ')[0]} | ORT int8 (quantize_dynamic) | cpu"]
        lines.append(
            f"| {key} | {r['mb']:.1f} ({r['mb'] / a['mb']:.2f}) | {r['load_ms']:.0f} ({r['load_ms'] / a['load_ms']:.2f}) | "
            f"{r['peak_mb']:.0f} ({r['peak_mb'] / a['peak_mb']:.2f}) | {r['rss_mb']:.0f} ({r['rss_mb'] / a['rss_mb']:.2f}) | "
            f"{r['first_ms']:.1f} |"
        )
    lines += ["", f"{cpu_name()}, 2 threads; medians of {args.repeats} fresh processes per row; memory less the process before loading."]
    title = "Loading a graph: memory and time per form, MiniLM-L6 and bert-base shapes"
    write(args.results, title, {"rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
