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
Speed: benchmarks/pack_glue.latency, each task through the shared pack and through its standalone artifact,
round-robin, batch 1 and batch 32 x 128 tokens. Results: results/pack_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _results import verdict, write  # benchmarks/ is on sys.path when a script here runs
from pack_glue import compress, finished, latency

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
    for kind, (pack, arts) in packs(args).items():
        rows[kind] = {
            "shared": memory(pack, True, args.repeats),
            "not shared": memory(pack, False, args.repeats),
            "latency": latency(pack, {t: arts[t] for t in TASKS}, args.rounds),
        }
    return render(args, rows)


def render(args, rows: dict) -> int:
    from compress.latency import cpu_name

    lines = [
        "Resident MB of an app process with 0-4 task sessions open, each run on one batch of 32 x 128 tokens (0: compress.Pack "
        "imported, nothing open), and what 4 tasks cost against 1 (both less the empty process):",
        "",
        "| pack | sessions | 0 | 1 | 2 | 3 | 4 | each further task (MB) | 4 tasks / 1 task (target <= 1.5) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in rows.items():
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
    for kind, r in rows.items():
        for t in TASKS:
            a, p = r["latency"][f"{t}/standalone"], r["latency"][f"{t}/pack"]
            lines.append(
                f"| {kind} | {t} | {a['b1_ms']:.2f} | {p['b1_ms']:.2f} | {p['b1_ms'] / a['b1_ms']:.2f} | {a['b32_ms']:.0f} | "
                f"{p['b32_ms']:.0f} | {p['b32_ms'] / a['b32_ms']:.2f} |"
            )
    lines += ["", f"{cpu_name()}; memory: medians of {args.repeats} fresh processes; latency: medians of {args.rounds} rounds."]
    title = "Several tasks of one pack in one app: resident memory, shared and not, and speed (MiniLM-L6)"
    write(args.results, title, rows, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
