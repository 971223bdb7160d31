"""The first load of a default graph, two exports of it side by side: how long folding its weights takes, and its first
load (into an empty fold cache, deleted after it is measured: runtimes_qdq.first_load) and later loads against ONNX
Runtime's int8 model, all round-robin in one run (issue 24's target: load time <= 1.5x ORT int8's). For a change to
what the graph folds at load, measured against the graph the previous version exported from the same checkpoint
(`compress export DIR` of a copy, with each version).

    python benchmarks/first_load.py --graph before=DIR --graph after=DIR [--pack-task NAME=PACK:TASK] --anchor ORT_INT8.onnx
                                    [--rounds 5]

fold ms: compress.runtimes.staged_fold.fold of the graph in this process (warm: its first call not counted), the work a
first load adds; all rounds of it before the loads. first / later load ms: a fresh process each
(benchmarks/runtimes_qdq.py's LOAD_SCRIPT: the session created, one batch-1 x 128 run), the first into an empty fold
cache each time, the later ones from the cache a first filled. Medians over --rounds. Results:
results/first_load.{md,json} (--results).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs
from runtimes_qdq import first_load, load

ANCHOR = "ORT int8 (quantize_dynamic)"


def fold_ms(graph: Path) -> float:
    from compress.runtimes import staged_fold

    t = time.perf_counter()
    staged_fold.fold(graph)
    return 1e3 * (time.perf_counter() - t)


@dataclass(frozen=True)
class Graph:
    path: Path  # an artifact's onnx/model.onnx, or a pack's directory
    task: str | None = None  # a pack's task (opened by compress.Pack; its fold not timed alone)

    @property
    def mb(self) -> float:
        return (self.path / f"{self.task}.onnx" if self.task else self.path).stat().st_size / 1e6


def measure(graphs: dict[str, Graph], anchor_path: Path, rounds: int) -> dict:
    """{name: {fold_ms, first_ms, first_peak_mb, later_ms, mb}} and the anchor's load and peak, each a median of `rounds`
    taken round-robin (the folds first, then the loads)."""
    from compress.runtimes.session import release_freed_memory

    runs: dict[str, dict[str, list]] = {name: {"fold_ms": [], "first_ms": [], "first_peak_mb": [], "later_ms": []} for name in graphs}
    anchor = {"load_ms": [], "peak_mb": [], "mb": anchor_path.stat().st_size / 1e6}
    folded = {name: g.path for name, g in graphs.items() if g.task is None}
    for g in folded.values():
        fold_ms(g)  # warm: imports, the file in the page cache
    for _ in range(rounds):
        for name, g in folded.items():
            runs[name]["fold_ms"].append(fold_ms(g))
    # the folds' heap back to the system before the loads: a process holding it slows the loads' fresh processes
    release_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, g in graphs.items():
                first = first_load(g.path, Path(tmp) / f"{name}{r}", g.task, keep=r == 0)
                runs[name]["first_ms"].append(first["load_ms"])
                runs[name]["first_peak_mb"].append(first["peak_mb"])
                runs[name]["later_ms"].append(load(g.path, "cpu", True, g.task, Path(tmp) / f"{name}0")["load_ms"])
            row = load(anchor_path, "cpu")
            anchor["load_ms"].append(row["load_ms"])
            anchor["peak_mb"].append(row["peak_mb"])
    rows = {name: {k: statistics.median(v) if v else None for k, v in r.items()} | {"mb": graphs[name].mb} for name, r in runs.items()}
    return rows | {ANCHOR: {k: statistics.median(v) if isinstance(v, list) else v for k, v in anchor.items()}}


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def main() -> int:
    from compress.latency import cpu_name

    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", action="append", default=[], help="NAME=DIR: an artifact (its onnx/model.onnx)")
    ap.add_argument("--pack-task", action="append", default=[], help="NAME=PACK_DIR:TASK: a pack's task, opened by compress.Pack")
    ap.add_argument("--anchor", required=True, type=Path, help="ONNX Runtime's int8 model of the same network")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "first_load"))
    args = ap.parse_args()
    graphs = {name: Graph(Path(d) / "onnx" / "model.onnx") for name, d in (g.split("=", 1) for g in args.graph)}
    graphs |= {name: Graph(Path(d.rsplit(":", 1)[0]), d.rsplit(":", 1)[1]) for name, d in (g.split("=", 1) for g in args.pack_task)}
    rows = measure(graphs, args.anchor, args.rounds)
    a, ap_ = rows[ANCHOR]["load_ms"], rows[ANCHOR]["peak_mb"]
    lines = [
        "| graph | MB | fold ms | first load ms (x ORT int8, target <= 1.5) | first load peak MB (x, target <= 1.5) | later loads ms (x) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {r['mb']:.1f} | {_ms(r['fold_ms'])} | {r['first_ms']:.0f} ({r['first_ms'] / a:.2f}) | "
            f"{r['first_peak_mb']:.0f} ({r['first_peak_mb'] / ap_:.2f}) | {r['later_ms']:.0f} ({r['later_ms'] / a:.2f}) |"
            for name, r in rows.items()
            if name != ANCHOR
        ),
        f"| {ANCHOR} | {rows[ANCHOR]['mb']:.1f} | | {a:.0f} (1.00) | {ap_:.0f} (1.00) | |",
        "",
        f"{cpu_name()}, 2 threads; medians of {args.rounds} rounds, round-robin (fresh processes for the loads). A pack's task: "
        "MB of its own graph (it reads the backbone's file), its fold not timed alone.",
    ]
    write(args.results, "First load of a graph: what its fold costs, against ONNX Runtime's int8 model", {"rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
