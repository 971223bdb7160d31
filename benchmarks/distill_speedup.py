"""Distillation and --speedup against the dense teacher and ONNX Runtime's int8 model of it (issue 23), MiniLM-L6.

    python benchmarks/distill_speedup.py train  --data-dir ../shared/data/glue --out runs/distill [--tasks mrpc stsb] [--seeds 2]
    python benchmarks/distill_speedup.py report --data-dir ../shared/data/glue --out runs/distill [--rounds 5]
    python benchmarks/distill_speedup.py seeds  --data-dir ../shared/data/glue --out runs/distill --seeds 3   (more seeds)
    python benchmarks/distill_speedup.py cost   --data-dir ../shared/data/glue --out runs/distill   (training time per loss)

`train` runs, per seed and task (the seeds outermost, so that a partial run still gives whole tables), every row below
as an ordinary `compress run` artifact (compress.sweep's cells under OUT/<task>/<row>/cells/: a finished cell is not
run again, an interrupted one resumes from its checkpoint; so the benchmark resumes where it stopped). Every row trains
at the defaults' budget (5 epochs, batch 32), on the same training sample per task (OUT/data: MRPC, STS-B and CoLA whole,
SST-2 a seeded 20,000-sentence sample: `--max-train`); the teacher of a seed is that seed's dense fine-tuning, trained
first when a row asked distils from it (or `--rows dense` asks for it). `--first-seed N` starts at seed N.

`report` measures every artifact's dev metric through ONNX Runtime, builds ORT's int8 model of each seed's teacher
(exporters.anchor: ORT's BERT fusions + dynamic per-channel int8), times every graph of every task in one round-robin
loop (batch 1 x 128 latency, batch 32 x 128 throughput, medians over --rounds rounds) and writes
benchmarks/results/distill_speedup.{md,json} and a Pareto plot per task. Metrics are means (and SD) over the seeds
finished; timings and sizes are seed 0's graphs.

`seeds` adds seeds to the report without timing anything: per task the dev metric of the teacher, the defaults,
defaults + distillation (and dense fine-tuning of the first 3 layers), each seed the report has from its JSON (--base)
and each it lacks from what `train --first-seed` left under --out, with the gaps to the teacher paired by seed
(benchmarks/results/distill_seeds.{md,json}). These rows do not depend on the machine; the --speedup rows do (the plan
follows the machine's latency model) and are seeds of the report only.
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
TEACHER_LABEL = "dense fine-tuning: the teacher (PyTorch)"


@dataclass(frozen=True)
class Row:
    label: str
    distill: bool = False
    speedup: float | None = None
    mask: tuple = ()  # MaskConfig fields that differ from the defaults
    hidden: float = 0.0  # layerwise hidden-state loss weight
    dense: bool = False  # dense fine-tuning (--mode weights, 32-bit), as the teacher, of the model as `mask` leaves it


ROWS = {
    "default": Row("compress 4-bit (defaults)"),
    "distill": Row("defaults + distillation", distill=True),
    "distill-hidden": Row("defaults + distillation (logits + hidden states)", distill=True, hidden=1.0),
    "speedup1.5": Row("--speedup 1.5 + distillation", distill=True, speedup=1.5),
    "speedup2": Row("--speedup 2 + distillation", distill=True, speedup=2.0),
    "speedup3": Row("--speedup 3 + distillation", distill=True, speedup=3.0),
    "speedup2-hidden": Row("--speedup 2 + distillation (logits + hidden states)", distill=True, speedup=2.0, hidden=1.0),
    "fast": Row("--ffn-keep 0.5 --heads-keep 0.5 (no teacher)", mask=(("ffn_keep", 0.5), ("heads_keep", 0.5))),
    # what a model this shallow scores when every weight trains: whether a shallow 2x plan's loss is the mask's or the depth's
    "dense-layers3": Row("dense fine-tuning of the first 3 layers (no teacher)", mask=(("layers", 3),), dense=True),
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
    "dense-layers3",
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
    cell = _sweep_cell(row, seed)
    return sweep.SweepConfig(run=run, bits=(cell.bits,), modes=(cell.mode,), seeds=seed + 1, out=str(out / task / row / f"seed{seed}"))


def _sweep_cell(row: str, seed: int):
    """The sweep cell a row trains: dense fine-tuning at 32 bits (the teacher, dense rows), else a 4-bit mask."""
    from compress import sweep

    dense = row == TEACHER or ROWS[row].dense
    return sweep.Cell("weights", 32, seed) if dense else sweep.Cell("structure", 4, seed)


def cmd_train(args) -> int:
    from compress import sweep

    data = sample_data(Path(args.data_dir), args.out, args.max_train)
    for seed in range(args.first_seed, args.seeds):
        for task in args.tasks:
            for row in _train_order(args.rows):
                cfg = sweep_config(task, row, args.out, data, seed)
                rec = sweep.run_cell(cfg, _sweep_cell(row, seed))
                logging.info("%s %s seed %d: %s (%.0f s)", task, row, seed, rec["metrics"], rec["seconds"])
    return 0


def _train_order(rows: list[str]) -> list[str]:
    """The rows asked, in ORDER, after the teacher when it is asked or a row distils from it."""
    asked = [r for r in ORDER if r in rows]
    return ([TEACHER] if TEACHER in rows or any(ROWS[r].distill for r in asked) else []) + asked


def _cell(args, task: str, row: str, seed: int) -> Path:
    from compress import sweep

    cfg = sweep_config(task, row, args.out, args.out / "data", seed)
    return sweep.cell_dir(cfg, _sweep_cell(row, seed))


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
        add(TEACHER_LABEL, seed, tm.metrics.torch[task.metric], None, epoch_s=_epoch_s(tm))
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
    for label, path in _extras(args, task_name):
        _add_artifact(add, label, path, task, dev, "extra")
    return rows, graphs


def _extras(args, task_name: str) -> list[tuple[str, Path]]:
    """--extra TASK:LABEL=DIR: the task's seed-0 artifacts made otherwise (by an earlier rule, on another machine's plan)."""
    out = []
    for spec in args.extra:
        where, _, path = spec.partition("=")
        t, _, label = where.partition(":")
        if t == task_name and (Path(path) / "manifest.json").is_file():
            out.append((label, Path(path)))
    return out


def _add_artifact(add, label: str, cell: Path, task, dev, key: str, seed: int = 0) -> None:
    from pareto import _evaluate

    from compress import manifest as mf

    m = mf.read(cell, mf.ArtifactManifest)
    graph = cell / "onnx" / "model.onnx"
    extra = {"torch": m.metrics.torch[task.metric], "epoch_s": _epoch_s(m), "row": key, "kept": _kept(m)}
    if m.speed is not None:
        extra |= {"asked": m.speed.asked, "predicted": m.speed.predicted, "reached": m.speed.reached}
        extra |= {"heads_keep": m.speed.heads_keep, "ffn_keep": m.speed.ffn_keep}
    add(label, seed, m.metrics.onnx.get(task.metric) or _evaluate(graph, cell, task, dev), graph, **extra)


def _kept(m) -> str:
    """An artifact's structure: 'layers / heads / FFN neurons kept' (fractions of each kept layer's)."""
    mask = m.config.mask
    return f"{mask.layers or 'all'} / {mask.heads_keep or 1:.2f} / {mask.ffn_keep or 1:.2f}"


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
        ref, teacher = rows.get("ORT int8 of the teacher"), rows.get(TEACHER_LABEL)
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
        if (ok := _distilled_meets(rows, teacher["metrics"])) is not None:
            matched[t] = ok
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


def _distilled_meets(rows: dict, teacher: dict) -> bool | None:
    """Whether defaults + distillation reach the teacher (paired by seed, mean over seeds); None where that row did not run."""
    distilled = rows.get(ROWS["distill"].label)
    return None if distilled is None else _gap(distilled["metrics"], teacher) >= 0


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


SEED_ROWS = ("default", "distill", "dense-layers3")  # rows whose structure does not depend on the machine's latency model


def cmd_seeds(args) -> int:
    """Dev metric per seed of the teacher, the defaults and defaults + distillation: the report's (--base, its JSON) and, for
    the seeds it lacks, those trained under --out (another sitting, maybe another machine: metrics only, no timings). Each
    row's gap to the teacher is paired by seed; the defaults + distillation target is counted over every seed either has."""
    import json

    base = json.loads(Path(args.base).read_text())
    data, lines, matched, gains = {}, [], {}, []
    for t in args.tasks:
        rows = {label: _seed_metrics(args, t, key, base.get(t, {}).get(label, {})) for key, label in _seed_labels()}
        data[t] = {label: r for label, r in rows.items() if r["metrics"]}
        data[t] |= _seed_extra(args, t)
        teacher = data[t].get(TEACHER_LABEL)
        if teacher is None:
            continue
        for label, r in data[t].items():
            lines.append(_seed_line(args.seeds, t, label, r, teacher["metrics"]))
        if (ok := _distilled_meets(data[t], teacher["metrics"])) is not None:
            matched[t] = ok
        distilled, default = (data[t].get(ROWS[k].label) for k in ("distill", "default"))
        if distilled and default:
            gains.append(f"{t} {_gap(distilled['metrics'], default['metrics']):+.4f}")
    head = ["| task | model | " + " | ".join(f"seed {s}" for s in range(args.seeds))]
    head[0] += " | mean ± SD | - teacher (paired) | layers / heads / FFN neurons kept | speedup reached |"
    head.append("|---" * (args.seeds + 6) + "|")
    note = "\n\n\\* trained under --out in this sitting; the other seeds are the report's (" + Path(args.base).name + ")."
    write(
        args.results,
        "Dev metric over seeds: teacher, defaults, defaults + distillation (MiniLM-L6)",
        data,
        "\n".join(head + lines)
        + note
        + _matched(matched)
        + "\n\nDefaults + distillation - defaults (paired by seed): "
        + ", ".join(gains)
        + ".",
    )
    return 0


def _seed_labels() -> list[tuple[str, str]]:
    return [(TEACHER, TEACHER_LABEL)] + [(k, ROWS[k].label) for k in SEED_ROWS]


def _seed_metrics(args, task_name: str, key: str, reported: dict) -> dict:
    """{metrics: seed -> dev metric, here: the seeds trained under --out}: the report's seeds, then the others found here."""
    from compress import manifest as mf
    from compress import tasks

    metric = tasks.get_task(task_name).metric
    got, here = {str(s): v for s, v in reported.get("metrics", {}).items()}, []
    kept = reported.get("kept", "")
    for seed in range(args.seeds):
        cell = _cell(args, task_name, key, seed)
        if str(seed) in got or not (cell / "manifest.json").is_file():
            continue
        m = mf.read(cell, mf.ArtifactManifest)
        got[str(seed)] = (m.metrics.torch if key == TEACHER else m.metrics.onnx)[metric]
        here.append(str(seed))
        kept = kept or ("" if key == TEACHER else _kept(m))
    return {"metrics": got, "here": here, "kept": kept, "reached": reported.get("reached")}


def _seed_extra(args, task_name: str) -> dict:
    """--extra: each artifact as a seed-0 row of its own, trained here."""
    from compress import manifest as mf
    from compress import tasks

    metric = tasks.get_task(task_name).metric
    out = {}
    for label, path in _extras(args, task_name):
        m = mf.read(path, mf.ArtifactManifest)
        reached = m.speed.reached if m.speed else None
        out[label] = {"metrics": {"0": m.metrics.onnx[metric]}, "here": ["0"], "kept": _kept(m), "reached": reached}
    return out


def _seed_line(seeds: int, task: str, label: str, r: dict, teacher: dict) -> str:
    star = "\\*"  # Markdown's literal asterisk: trained here
    cells = [f"{r['metrics'][str(s)]:.4f}{star * (str(s) in r['here'])}" if str(s) in r["metrics"] else "" for s in range(seeds)]
    mean, sd, n = _summary(r["metrics"])
    gap = "" if label == TEACHER_LABEL else f"{_gap(r['metrics'], teacher):+.4f}"
    reached = f"{r['reached']:.2f}x" if r.get("reached") else ""
    return f"| {task} | {label} | {' | '.join(cells)} | {mean:.4f} ± {sd:.4f} ({n}) | {gap} | {r.get('kept', '')} | {reached} |"


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
    ap.add_argument("command", choices=["train", "report", "seeds", "cost"])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/distill"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--rows", nargs="+", default=[TEACHER, *ORDER], choices=[TEACHER, *ROWS])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="train: start at this seed (the earlier ones trained elsewhere)")
    ap.add_argument("--max-train", type=int, default=20000, help="training examples per task (a seeded sample; SST-2 has 67,349)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra", nargs="*", default=[], help="TASK:LABEL=DIR: a seed-0 artifact made otherwise, as a row of its own")
    ap.add_argument("--results", default=None, help="where the tables go (default: results/distill_speedup, or distill_seeds)")
    ap.add_argument("--base", default=str(Path(__file__).parent / "results" / "distill_speedup.json"), help="seeds: the report's JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    name = "distill_seeds" if args.command == "seeds" else "distill_speedup"
    args.results = args.results or str(Path(__file__).parent / "results" / name)
    return {"train": cmd_train, "report": cmd_report, "seeds": cmd_seeds, "cost": cmd_cost}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
