"""Distillation and --speedup against the dense teacher and ONNX Runtime's int8 model of it (issue 23), MiniLM-L6.

    python benchmarks/distill_speedup.py train  --data-dir ../shared/data/glue --out runs/distill [--tasks mrpc stsb] [--seeds 2]
    python benchmarks/distill_speedup.py report --data-dir ../shared/data/glue --out runs/distill [--rounds 5]
    python benchmarks/distill_speedup.py cost   --data-dir ../shared/data/glue --out runs/distill   (training time per loss)

`train` runs, per seed and task (the seeds outermost, so that a partial run still gives whole tables), every row below
as an ordinary `compress run` artifact (compress.sweep's cells under OUT/<task>/<row>/cells/: a finished cell is not
run again, an interrupted one resumes from its checkpoint; so the benchmark resumes where it stopped). Every row trains
at the defaults' budget (5 epochs, batch 32), on the same training sample per task (OUT/data: MRPC, STS-B and CoLA whole,
SST-2 a seeded 20,000-sentence sample: `--max-train`); the teacher of a seed is that seed's dense fine-tuning.

`report` measures every artifact's dev metric through ONNX Runtime, builds ORT's int8 model of each seed's teacher
(exporters.anchor: ORT's BERT fusions + dynamic per-channel int8), times every graph of every task in one round-robin
loop (batch 1 x 128 latency, batch 32 x 128 throughput, medians over --rounds rounds) and writes
benchmarks/results/distill_speedup.{md,json} and a Pareto plot per task. Metrics are means (and SD) over the seeds
finished; timings and sizes are seed 0's graphs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from _results import verdict, write  # benchmarks/ is on sys.path when a script here runs
from pareto import _summary, sample_data

TASKS = ("mrpc", "stsb", "sst2", "cola")
TEACHER = "dense"


@dataclass(frozen=True)
class Row:
    label: str
    distill: bool = False
    speedup: float | None = None
    mask: tuple = ()  # MaskConfig fields that differ from the defaults
    hidden: float = 0.0  # layerwise hidden-state loss weight


ROWS = {
    "default": Row("compress 4-bit (defaults)"),
    "distill": Row("defaults + distillation", distill=True),
    "distill-hidden": Row("defaults + distillation (logits + hidden states)", distill=True, hidden=1.0),
    "speedup1.5": Row("--speedup 1.5 + distillation", distill=True, speedup=1.5),
    "speedup2": Row("--speedup 2 + distillation", distill=True, speedup=2.0),
    "speedup3": Row("--speedup 3 + distillation", distill=True, speedup=3.0),
    "speedup2-hidden": Row("--speedup 2 + distillation (logits + hidden states)", distill=True, speedup=2.0, hidden=1.0),
    "fast": Row("--ffn-keep 0.5 --heads-keep 0.5 (no teacher)", mask=(("ffn_keep", 0.5), ("heads_keep", 0.5))),
}
ORDER = (
    "default",
    "distill",
    "speedup2",
    "fast",
    "speedup1.5",
    "speedup3",
    "speedup2-hidden",
    "distill-hidden",
)  # what a short sitting runs first


def teacher_dir(out: Path, task: str, seed: int) -> Path:
    return out / task / TEACHER / "cells" / f"weights-32bit-seed{seed}"


def sweep_config(task: str, row: str, out: Path, data: Path, seed: int):
    from compress import configs, sweep

    if row == TEACHER:
        run = configs.RunConfig(task=task, data_dir=str(data), train=configs.TrainConfig(epochs=5, seed=0))
        return sweep.SweepConfig(run=run, bits=(32,), modes=("weights",), seeds=seed + 1, out=str(out / task / TEACHER))
    r = ROWS[row]
    distill = configs.DistillConfig(str(teacher_dir(out, task, seed)), hidden=r.hidden) if r.distill else None
    run = configs.RunConfig(
        task=task,
        data_dir=str(data),
        mask=configs.MaskConfig(**dict(r.mask)),
        train=configs.TrainConfig(epochs=5, seed=0),
        distill=distill,
        speedup=r.speedup,
    )
    # one directory per seed: the teacher (hence the config) differs between seeds
    return sweep.SweepConfig(run=run, bits=(4,), modes=("structure",), seeds=seed + 1, out=str(out / task / row / f"seed{seed}"))


def cmd_train(args) -> int:
    from compress import sweep

    data = sample_data(Path(args.data_dir), args.out, args.max_train)
    for seed in range(args.seeds):
        for task in args.tasks:
            for row in (TEACHER, *[r for r in ORDER if r in args.rows]):
                cfg = sweep_config(task, row, args.out, data, seed)
                cell = sweep.Cell("weights" if row == TEACHER else "structure", 32 if row == TEACHER else 4, seed)
                rec = sweep.run_cell(cfg, cell)
                logging.info("%s %s seed %d: %s (%.0f s)", task, row, seed, rec["metrics"], rec["seconds"])
    return 0


def _cell(args, task: str, row: str, seed: int) -> Path:
    from compress import sweep

    cfg = sweep_config(task, row, args.out, args.out / "data", seed)
    return sweep.cell_dir(cfg, sweep.Cell("weights" if row == TEACHER else "structure", 32 if row == TEACHER else 4, seed))


def measure_task(args, task_name: str, work: Path) -> tuple[dict, dict]:
    """-> (rows: name -> {metrics per seed, mb, speed, epoch seconds}, graphs to time: name -> seed 0's .onnx)."""
    from export_vs_ort import build_anchors
    from pareto import _evaluate

    from compress import manifest as mf
    from compress import tasks

    task = tasks.get_task(task_name)
    dev = tasks.load_task(task, args.out / "data")["dev"]
    rows, graphs = {}, {}

    def add(name: str, seed: int, metric: float, graph: Path | None, **extra):
        r = rows.setdefault(name, {"metrics": {}, **extra})
        r["metrics"][seed] = metric
        if seed == 0 and graph is not None:
            r["mb"] = graph.stat().st_size / 1e6
            graphs[name] = graph
        if seed == 0:
            r.update(extra)

    for seed in range(args.seeds):
        teacher = teacher_dir(args.out, task_name, seed)
        if not (teacher / "manifest.json").is_file():
            continue
        tm = mf.read(teacher, mf.ArtifactManifest)
        add("dense fine-tuning: the teacher (PyTorch)", seed, tm.metrics.torch[task.metric], None, epoch_s=_epoch_s(tm))
        (work / f"{task_name}-anchors-{seed}").mkdir(parents=True, exist_ok=True)
        anchors = build_anchors(teacher, work / f"{task_name}-anchors-{seed}")
        add(
            "ORT int8 of the teacher",
            seed,
            _evaluate(anchors["ORT int8 dynamic"], teacher, task, dev),
            anchors["ORT int8 dynamic"],
            anchor=True,
        )
        for key in ROWS:
            cell = _cell(args, task_name, key, seed)
            if not (cell / "manifest.json").is_file():
                continue
            _add_artifact(add, ROWS[key].label, cell, task, dev, key, seed)
    for spec in args.extra:  # TASK:LABEL=DIR, seed 0 artifacts made otherwise (e.g. by an earlier version of a rule)
        where, _, path = spec.partition("=")
        t, _, label = where.partition(":")
        if t == task_name and (Path(path) / "manifest.json").is_file():
            _add_artifact(add, label, Path(path), task, dev, "extra")
    return rows, graphs


def _add_artifact(add, label: str, cell: Path, task, dev, key: str, seed: int = 0) -> None:
    from pareto import _evaluate

    from compress import manifest as mf

    m = mf.read(cell, mf.ArtifactManifest)
    graph = cell / "onnx" / "model.onnx"
    mask = m.config.mask
    kept = f"{mask.layers or 'all'} / {mask.heads_keep or 1:.2f} / {mask.ffn_keep or 1:.2f}"  # layers / heads / FFN neurons
    extra = {"torch": m.metrics.torch[task.metric], "epoch_s": _epoch_s(m), "row": key, "kept": kept}
    if m.speed is not None:
        extra |= {"asked": m.speed.asked, "predicted": m.speed.predicted, "reached": m.speed.reached}
        extra |= {"heads_keep": m.speed.heads_keep, "ffn_keep": m.speed.ffn_keep}
    add(label, seed, m.metrics.onnx.get(task.metric) or _evaluate(graph, cell, task, dev), graph, **extra)


def _epoch_s(m) -> float:
    return statistics.fmean(e.seconds for e in m.training.history) if m.training.history else 0.0


def cmd_report(args) -> int:
    import tempfile

    from export_vs_ort import latencies

    data = {}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        for t in args.tasks:
            (Path(tmp) / t).mkdir()
            data[t], g = measure_task(args, t, Path(tmp) / t)
            graphs.update({f"{t}|{name}": path for name, path in g.items()})
        timed = latencies(graphs, args.rounds)  # one round-robin over every graph of every task
    for t in args.tasks:
        for name, r in data[t].items():
            r.update(timed.get(f"{t}|{name}", {}))
    data["command"] = "python " + " ".join(sys.argv)
    return render(args, data)


def render(args, data: dict) -> int:
    from pareto import plot

    from compress import tasks

    sections, targets, matched = [], [], {}
    for t in args.tasks:
        rows, metric = data.get(t, {}), tasks.get_task(t).metric
        ref, teacher = rows.get("ORT int8 of the teacher"), rows.get("dense fine-tuning: the teacher (PyTorch)")
        if ref is None or teacher is None:
            continue
        lines = [
            f"### {t.upper()} (dev {metric} through ONNX Runtime; seeds: {', '.join(map(str, sorted(teacher['metrics'])))})",
            "",
            f"| model | dev {metric} mean ± SD (seeds) | b1x128 ms | x int8 | b32x128 seq/s | x int8 | MB | x int8 | speedup asked / "
            "predicted / reached | layers / heads / FFN neurons kept | s per epoch |",
            "|---" * 11 + "|",
        ]
        for name, r in rows.items():
            mean, sd, n = _summary(r["metrics"])
            timing = " | | | | | "
            if "b1_ms" in r:
                timing = (
                    f"{r['b1_ms']:.2f} | {r['b1_ms'] / ref['b1_ms']:.2f} | "
                    f"{r['b32_seq_s']:.0f} | {r['b32_seq_s'] / ref['b32_seq_s']:.2f} | {r['mb']:.1f} | {r['mb'] / ref['mb']:.2f}"
                )
            speed = f"{r['asked']:g} / {r['predicted']:.2f} / {r['reached']:.2f}" if r.get("reached") else ""
            lines.append(f"| {name} | {mean:.4f} ± {sd:.4f} ({n}) | {timing} | {speed} | {r.get('kept', '')} | {r.get('epoch_s', 0):.0f} |")
        sections.append("\n".join(lines))
        plot(t, metric, rows, Path(args.results).parent / f"distill_speedup_{t}.png")
        targets += _targets(t, rows, ref, teacher["metrics"])
        distilled = rows.get(ROWS["distill"].label)
        if distilled:
            matched[t] = _gap(distilled["metrics"], teacher["metrics"]) >= 0
    head = [
        "| task | row | b1 latency x int8 (<= 0.5) | b32 throughput x int8 (>= 2) | size x int8 (<= 0.4) | metric - teacher (same seeds) | "
        "reached / asked (within 10%) |",
        "|---" * 7 + "|",
    ]
    write(
        args.results,
        "Distillation and --speedup against the dense teacher and ORT int8 (MiniLM-L6)",
        data,
        "\n\n".join([*sections, "### Targets (this run)\n\n" + "\n".join(head + targets) + _matched(matched)]),
        command=data.get("command"),
    )
    return 0


def _gap(metrics: dict, teacher: dict) -> float:
    """A row's metric less the teacher's, paired by seed (each seed's teacher taught that seed's row), averaged over the seeds
    both have (JSON keys are strings once the results are read back)."""
    teacher = {str(k): v for k, v in teacher.items()}
    return statistics.fmean(v - teacher[str(k)] for k, v in metrics.items() if str(k) in teacher)


def _targets(task: str, rows: dict, ref: dict, teacher: dict) -> list[str]:
    out = []
    for name, r in rows.items():
        key = r.get("row")
        if key not in ("distill", "speedup2", "default") or "b1_ms" not in r:
            continue
        gap = _gap(r["metrics"], teacher)
        need = -0.01 if key == "speedup2" else 0.0
        acc = f"{gap:+.4f}" + (f" (missed by {need - gap:.4f})" if gap < need else " (met)")
        speed = ""
        if r.get("reached"):
            ratio = r["reached"] / r["asked"]
            speed = f"{ratio:.2f}" + (" (met)" if abs(ratio - 1) <= 0.1 else f" (missed by {abs(ratio - 1) - 0.1:.2f})")
        if key == "speedup2":
            cols = [
                verdict(r["b1_ms"] / ref["b1_ms"], 0.5, True),
                verdict(r["b32_seq_s"] / ref["b32_seq_s"], 2.0, False),
                verdict(r["mb"] / ref["mb"], 0.4, True),
            ]
        else:
            cols = [f"{r['b1_ms'] / ref['b1_ms']:.2f}", f"{r['b32_seq_s'] / ref['b32_seq_s']:.2f}", f"{r['mb'] / ref['mb']:.2f}"]
        out.append(f"| {task} | {name} | {' | '.join(cols)} | {acc} | {speed} |")
    return out


def _matched(matched: dict[str, bool]) -> str:
    """The defaults + distillation target: the dense teacher's dev metric matched (mean over seeds) on 3 of the 4 tasks."""
    if not matched:
        return ""
    met = [t for t, ok in matched.items() if ok]
    verdict_ = "met" if len(met) >= 3 else f"missed by {3 - len(met)} task{'s' * (3 - len(met) > 1)}"
    return (
        f"\n\nDefaults + distillation >= the teacher (mean over seeds, paired): {len(met)} of {len(matched)} tasks run "
        f"({', '.join(met) or 'none'}); target 3 of 4: {verdict_}."
    )


def cmd_cost(args) -> int:
    """Seconds per training step without a teacher, with the teacher's logits (computed once, counted here) and with its hidden
    states too: the same 320 MRPC examples (10 steps of 32), one epoch each, round-robin over --rounds rounds, medians."""
    import time

    from compress import build, configs, tasks, teacher, train

    task = tasks.get_task("mrpc")
    data = tasks.load_task(task, args.out / "data")
    tr, dev = data["train"].subset(320), data["dev"].subset(32)
    kinds = {"no teacher": None, "logits": 0.0, "logits + hidden states": 1.0}
    times = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for name, hidden in kinds.items():
            cfg = configs.RunConfig(task="mrpc", train=configs.TrainConfig(epochs=1, seed=0))
            built = build.build(cfg, task, tr)
            tch = (
                None
                if hidden is None
                else teacher.load(configs.DistillConfig(str(teacher_dir(args.out, "mrpc", 0)), hidden=hidden), "mrpc", "minilm")
            )
            t0 = time.perf_counter()
            train.fit(built.model, task, tr, dev, built.tokenizer, cfg.train, teacher=tch)
            times[name].append((time.perf_counter() - t0) / 10)
    rows = {k: statistics.median(v) for k, v in times.items()}
    base = rows["no teacher"]
    table = "\n".join(
        ["| loss | s per step (batch 32, incl. the teacher's pass) | x no teacher |", "|---|---|---|"]
        + [f"| {k} | {v:.3f} | {v / base:.2f} |" for k, v in rows.items()]
    )
    write(Path(args.results).with_name("distill_cost"), "What distillation costs in training time (MiniLM-L6, MRPC)", rows, table)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["train", "report", "cost"])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/distill"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--rows", nargs="+", default=list(ORDER), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=20000, help="training examples per task (a seeded sample; SST-2 has 67,349)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra", nargs="*", default=[], help="TASK:LABEL=DIR: a seed-0 artifact made otherwise, as a row of its own")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "distill_speedup"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return {"train": cmd_train, "report": cmd_report, "cost": cmd_cost}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
