"""Several tasks of one pack resident in one app: memory with 0-4 task sessions open, shared or not, and each task's
speed in the shared pack against its standalone artifact (issue 24, item 5).

    python benchmarks/pack_memory.py --data-dir ../shared/data/glue [--work runs/pack_memory] [--repeats 3] [--rounds 5]

Two packs of four tasks (MRPC, SST-2, CoLA, STS-B) on the MiniLM-L6 4-bit backbone of benchmarks/pack_speed.py
(`compress quantize`; made there when missing):
  default       `compress run --backbone B --task T` with the defaults, trained briefly (64 examples, 1 epoch: memory
                and speed do not depend on how well a mask is trained)
  speedup 2     pack_speed.py's four `--speedup 2` artifacts (18 of 72 heads, 2592 of 9216 FFN neurons kept)
each packed by this version of `compress pack`. Memory: compress.pack_writer.resident_memory, a fresh process per count
of task sessions that runs each task on one batch of 32 texts at 128 tokens (the arena an app serving batch 32 needs),
with compress.Pack's default (the backbone file mapped once for all sessions, one shared memory arena) and with
`Pack(share_backbone=False)` (each session its own arena and its own mappings); medians of --repeats processes.
Speed: each task through the shared pack and through its standalone artifact, round-robin between the two, batch 1
and batch 32 x 128 tokens. Loading one task: the default pack's MRPC opened through compress.Pack (its weights folded
before ONNX Runtime loads the rest: compress.runtimes.staged_fold), and taken out of the pack with `compress materialize`,
as is (loaded by ONNX Runtime alone, and folded first) and with --prefold, each in fresh processes (--repeats each)
beside ONNX Runtime's int8 model of MiniLM. Results: results/pack_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _results import verdict, write  # benchmarks/ is on sys.path when a script here runs
from pack_glue import compress, finished

TASKS = ("mrpc", "sst2", "cola", "stsb")
BRIEF = ["--max-train-examples", "64", "--max-eval-examples", "64", "--epochs", "1", "--no-bench", "--seed", "0"]


def packs(args) -> dict[str, tuple[Path, dict[str, Path]]]:
    """kind -> (pack directory, task -> artifact), made where missing."""
    import pack_speed

    speed_args = argparse.Namespace(data_dir=args.data_dir, work=args.speed_work)
    _, speedup, _ = pack_speed.build(speed_args)  # the backbone and the --speedup 2 artifacts (resumes)
    backbone = args.speed_work / "backbone"
    default = {}
    for t in TASKS:
        default[t] = args.work / f"{t}-default"
        if finished(default[t]) is None:
            compress("run", "--backbone", str(backbone), "--task", t, "--data-dir", str(args.data_dir), *BRIEF, "--out", str(default[t]))
    out = {}
    for kind, arts in (("default", default), ("speedup 2", speedup)):
        pack = args.work / f"pack-{kind.replace(' ', '')}"
        if finished(pack) is None:
            compress("pack", str(pack), *map(str, arts.values()), "--allow-failed-guard", "--overwrite")
        out[kind] = (pack, arts)
    return out


def latency(pack: Path, arts: dict[str, Path], rounds: int) -> dict[str, dict]:
    """Each task through a fresh compress.Pack and through its standalone artifact, round-robin between the two only (other
    sessions' idle thread pools, spinning after their runs, would take the 2 cores), batch 1 and 32 x 128 tokens, medians."""
    import numpy as np

    from compress import Pack
    from compress.files import graph_path
    from compress.runtimes import bench
    from compress.runtimes.session import open_session

    out = {}
    for t in TASKS:
        sessions = {"pack": Pack(pack).session(t), "standalone": open_session(graph_path(arts[t]))}
        times = {k: {1: [], 32: []} for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                for b in (1, 32):
                    times[k][b].append(bench.latency(s, batch=b, seq_len=128, runs=20 if b == 1 else 5).median_ms)
        out |= {f"{t}/{k}": {f"b{b}_ms": float(np.median(v)) for b, v in d.items()} for k, d in times.items()}
        del sessions
    return out


def memory(pack: Path, share: bool, repeats: int) -> list[float]:
    """Resident MB with 0 .. 4 task sessions open: medians over fresh processes."""
    from compress.pack_writer import resident_memory

    runs = [resident_memory(pack, list(TASKS), share=share) for _ in range(repeats)]
    if any(r is None for r in runs):
        raise SystemExit(f"{pack}: the memory measurement failed (see the warning above)")
    return [statistics.median(r.rss[n] for r in runs) / 1e6 for n in range(len(TASKS) + 1)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("runs/pack_memory"))
    ap.add_argument("--speed-work", type=Path, default=Path("runs/pack_speed"), help="pack_speed.py's --work (backbone, --speedup 2 tasks)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "pack_memory"))
    args = ap.parse_args()
    rows = {}
    made = packs(args)
    for kind, (pack, arts) in made.items():
        rows[kind] = {
            "shared": memory(pack, True, args.repeats),
            "not shared": memory(pack, False, args.repeats),
            "latency": latency(pack, {t: arts[t] for t in TASKS}, args.rounds),
        }
    rows["materialized"] = materialized(args, made["default"][0])
    return render(args, rows)


def materialized(args, pack: Path) -> dict[str, dict]:
    """Loading MRPC taken out of the pack, as is and --prefold, and ORT's int8 MiniLM: medians of fresh processes."""
    from runtimes_qdq import cached_loads, load
    from scale import anchor

    graphs = {}
    for name, flags in (("materialized", ()), ("materialized --prefold", ("--prefold",))):
        d = args.work / name.replace(" --", "-")
        if finished(d) is None:
            compress("materialize", str(pack), "mrpc", "--out", str(d), "--overwrite", *flags)
        graphs[name] = d / "onnx" / "model.onnx"
    graphs["ORT int8 (quantize_dynamic)"] = anchor("minilm", args.work, "minilm")
    median = lambda runs: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out = {}
    for name, graph in graphs.items():
        out[name] = median([load(graph, "cpu") for _ in range(args.repeats)]) | {"mb": graph.stat().st_size / 1e6}
    in_memory = [load(graphs["materialized"], "cpu", fold_first=True) for _ in range(args.repeats)]
    first, later = cached_loads(graphs["materialized"], args.repeats)
    for how, runs in (("folded first in memory", in_memory), ("fold cache: first load", first), ("fold cache: later loads", later)):
        out[f"materialized, {how}"] = out["materialized"] | median(runs)
    own = {"mb": sum(f.stat().st_size for f in pack.glob("mrpc.*")) / 1e6}
    in_memory = [load(pack, "cpu", pack_task="mrpc") for _ in range(args.repeats)]
    first, later = cached_loads(pack, args.repeats, pack_task="mrpc")
    for how, runs in (("folded in memory", in_memory), ("fold cache: first load", first), ("fold cache: later loads", later)):
        out[f"pack task (compress.Pack), {how}"] = median(runs) | own
    return out


def render(args, rows: dict) -> int:
    from compress.latency import cpu_name

    lines = [
        "Resident MB of an app process with 0-4 task sessions open, each run on one batch of 32 x 128 tokens (0: compress.Pack "
        "imported, nothing open), and what 4 tasks cost against 1 (both less the empty process):",
        "",
        "| pack | sessions | 0 | 1 | 2 | 3 | 4 | each further task (MB) | 4 tasks / 1 task (target <= 1.5) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tasks_rows = {k: v for k, v in rows.items() if k != "materialized"}
    for kind, r in tasks_rows.items():
        for how in ("not shared", "shared"):
            rss = r[how]
            one, four = rss[1] - rss[0], rss[4] - rss[0]
            lines.append(
                f"| {kind} | {how} | " + " | ".join(f"{x:.0f}" for x in rss) + f" | {(four - one) / 3:.1f} | {verdict(four / one, 1.5)} |"
            )
    lines += [
        "",
        "Each task through the shared pack (compress.Pack) against its standalone artifact, round-robin (target: within 10%):",
        "",
        "| pack | task | standalone b1 ms | pack b1 ms | pack / standalone b1 | standalone b32 ms | pack b32 ms | pack / standalone b32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in tasks_rows.items():
        for t in TASKS:
            a, p = r["latency"][f"{t}/standalone"], r["latency"][f"{t}/pack"]
            lines.append(
                f"| {kind} | {t} | {a['b1_ms']:.2f} | {p['b1_ms']:.2f} | {p['b1_ms'] / a['b1_ms']:.2f} | {a['b32_ms']:.0f} | "
                f"{p['b32_ms']:.0f} | {p['b32_ms'] / a['b32_ms']:.2f} |"
            )
    mat, ort8 = rows["materialized"], rows["materialized"]["ORT int8 (quantize_dynamic)"]
    lines += [
        "",
        "MRPC of the default pack, opened through compress.Pack, and taken out of the pack (`compress materialize`), loaded in a "
        "fresh process (session created, one batch-1 x 128 run; memory less the process before loading; MB: the task's own "
        "files, or the graph) against ONNX Runtime's int8 MiniLM (targets: peak and load time <= 1.5x):",
        "",
        "| graph | MB (x ORT int8) | load ms (x) | peak MB at load (x) | resident MB (x) |",
        "|---|---|---|---|---|",
    ]
    for name, r in mat.items():
        lines.append(
            f"| {name} | {r['mb']:.1f} ({r['mb'] / ort8['mb']:.2f}) | {r['load_ms']:.0f} ({r['load_ms'] / ort8['load_ms']:.2f}) | "
            f"{r['peak_mb']:.0f} ({r['peak_mb'] / ort8['peak_mb']:.2f}) | {r['rss_mb']:.0f} ({r['rss_mb'] / ort8['rss_mb']:.2f}) |"
        )
    lines += ["", f"{cpu_name()}; memory: medians of {args.repeats} fresh processes; latency: medians of {args.rounds} rounds."]
    title = "Several tasks of one pack in one app: resident memory, shared and not, and speed (MiniLM-L6)"
    write(args.results, title, rows, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
