"""Accuracy against speed and size on several GLUE tasks: this project's variants vs ONNX Runtime's own exports.

    python benchmarks/pareto.py train  --data-dir ../shared/data/glue --out runs/pareto [--seeds 2] [--max-train 2000] [--epochs 3]
    python benchmarks/pareto.py report --data-dir ../shared/data/glue --out runs/pareto [--rounds 5]
    python benchmarks/pareto.py render --data-dir ../shared/data/glue --out runs/pareto   (tables again from pareto.json)

`train` runs, for each task (MRPC, SST-2, CoLA, STS-B) and seed, every variant below as an ordinary `compress run`
artifact under OUT/<task>/<variant>/cells/ (compress.sweep's cells: a finished cell is not run again, so the
training resumes across sittings; interrupted cells resume from their checkpoints). Every task's training set is
the same seeded random sample of at most --max-train examples (OUT/data/, dev sets whole), every variant trains
--epochs epochs: one budget for all, so that the variants are compared at equal cost, not at their best.

`report` re-exports every artifact with the current exporter (`compress export`), builds the anchors from each
seed's dense fine-tuning (ORT fp32 + BERT fusions, ORT int8 dynamic per channel with fusions, ORT MatMulNBits
4-bit), measures every graph's dev metric through ONNX Runtime, then times every graph of every task in one
round-robin loop (batch 1 x 128 latency, batch 32 x 128 throughput; medians over --rounds rounds) and writes
benchmarks/results/pareto.{md,json} and one PNG per task (metric vs batch-1 latency, marker size = file size).
Metrics are means (and SD) over the seeds; timings and sizes are seed 0's graphs (their shapes do not depend on
the seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _results import command_of, verdict, write  # benchmarks/ is on sys.path when a script here runs

TASKS = ("mrpc", "sst2", "cola", "stsb")


@dataclass(frozen=True)
class Variant:
    label: str
    mode: str  # "weights" (dense fine-tuning) or "structure" (mask)
    bits: int
    mask: dict = field(default_factory=dict)  # MaskConfig fields that differ from the defaults


VARIANTS = {
    "dense": Variant("dense fine-tuning (fp32, PyTorch)", "weights", 32),
    "default": Variant("compress 4-bit (defaults)", "structure", 4),
    "fast": Variant("compress 4-bit --ffn-keep 0.5 --heads-keep 0.5", "structure", 4, {"ffn_keep": 0.5, "heads_keep": 0.5}),
    "ffn05": Variant("compress 4-bit --ffn-keep 0.5", "structure", 4, {"ffn_keep": 0.5}),
}
TRAINED = ("dense", "default", "fast")  # what `train` runs unless --variants says otherwise


def sample_data(data_dir: Path, out: Path, max_train: int) -> Path:
    """OUT/data: each task's train.tsv as a seeded random sample of at most max_train rows (header kept), dev.tsv whole."""
    from compress import tasks

    for name in TASKS:
        t = tasks.get_task(name)
        src, dst = data_dir / t.folder, out / "data" / t.folder
        if (dst / "dev.tsv").is_file():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        head, rows = (lines[:1], lines[1:]) if t.header else ([], lines)
        rows = random.Random(0).sample(rows, min(max_train, len(rows)))
        (dst / "train.tsv").write_text("".join(head + rows), encoding="utf-8")
        (dst / "dev.tsv").write_text((src / "dev.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    return out / "data"


def sweep_config(task: str, variant: str, out: Path, data: Path, seeds: int, epochs: int):
    from compress import configs, sweep

    v = VARIANTS[variant]
    run = configs.RunConfig(
        task=task, data_dir=str(data), mask=configs.MaskConfig(**v.mask), train=configs.TrainConfig(epochs=epochs, seed=0)
    )
    return sweep.SweepConfig(run=run, bits=(v.bits,), modes=(v.mode,), seeds=seeds, out=str(out / task / variant))


def cmd_train(args) -> int:
    from compress import sweep

    data = sample_data(Path(args.data_dir), args.out, args.max_train)
    for seed in range(args.seeds):  # a whole seed of every task first: a partial run still gives a full table
        for task in args.tasks:
            for variant in args.variants:
                cfg = sweep_config(task, variant, args.out, data, args.seeds, args.epochs)
                cell = sweep.Cell(VARIANTS[variant].mode, VARIANTS[variant].bits, seed)
                rec = sweep.run_cell(cfg, cell)
                logging.info("%s %s seed %d: %s (%.0f s)", task, variant, seed, rec["metrics"], rec["seconds"])
    return 0


ACTIVATIONS = ("token", "static")  # each variant's cells are exported both ways


def _evaluate(graph: Path, cell: Path, task, dev) -> float:
    from export_vs_ort import accuracy

    from compress import manifest as mf

    m = mf.read(cell, mf.ArtifactManifest)
    return accuracy(graph, task, dev, cell / "tokenizer.json", m.config.train.max_length, m.model.pad_token_id)["metric"]


def measure_task(args, task_name: str, work: Path) -> tuple[dict, dict]:
    """-> (rows: name -> {metric per seed, mb, ...}, graphs to time: name -> seed 0's .onnx)."""
    import shutil

    from export_vs_ort import build_anchors

    from compress import manifest as mf
    from compress import tasks
    from compress.reexport import reexport

    task = tasks.get_task(task_name)
    dev = tasks.load_task(task, args.out / "data")["dev"]
    rows, graphs = {}, {}

    def add(name: str, seed: int, metric: float, graph: Path, **extra):
        r = rows.setdefault(name, {"metrics": {}, **extra})
        r["metrics"][seed] = metric
        if seed == 0:
            r["mb"] = graph.stat().st_size / 1e6
            graphs[name] = graph

    for seed in range(args.seeds):
        dense = args.out / task_name / "dense" / "cells" / f"weights-32bit-seed{seed}"
        if not (dense / "manifest.json").is_file():
            continue
        rows.setdefault("dense fine-tuning (PyTorch)", {"metrics": {}})["metrics"][seed] = mf.read(
            dense, mf.ArtifactManifest
        ).metrics.torch[task.metric]
        (work / f"{task_name}-anchors-{seed}").mkdir(parents=True, exist_ok=True)
        for name, path in build_anchors(dense, work / f"{task_name}-anchors-{seed}").items():
            add(name, seed, _evaluate(path, dense, task, dev), path, anchor=True)
        for key in [v for v in args.variants if VARIANTS[v].mode == "structure"]:
            cell = args.out / task_name / key / "cells" / f"structure-4bit-seed{seed}"
            if not (cell / "manifest.json").is_file():
                continue
            for act in ACTIVATIONS:
                copy = work / f"{task_name}-{key}-{act}-{seed}"
                shutil.copytree(cell, copy)
                m = reexport(copy, activations=act)  # the current exporter, with these activation scales
                add(
                    f"{VARIANTS[key].label}, {act} activations",
                    seed,
                    _evaluate(copy / "onnx" / "model.onnx", copy, task, dev),
                    copy / "onnx" / "model.onnx",
                    variant=key,
                    activations=act,
                    torch_metric=m.metrics.torch[task.metric],
                    heads=m.attention_heads,
                    ffn=m.ffn_neurons,
                )
    return rows, graphs


def _summary(values: dict) -> tuple[float, float, int]:
    v = list(values.values())
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def cmd_report(args) -> int:
    import tempfile

    from export_vs_ort import latencies

    data = {}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        for t in args.tasks:
            data[t], g = measure_task(args, t, Path(tmp))
            graphs.update({(t, name): path for name, path in g.items()})
        timed = latencies({f"{t}|{name}": p for (t, name), p in graphs.items()}, args.rounds)  # one round-robin over every graph
    for t in args.tasks:
        for name, r in data[t].items():
            r.update(timed.get(f"{t}|{name}", {}))
    return render(args, data | {"command": "python " + " ".join(sys.argv)})


def render(args, data: dict) -> int:
    """Tables, targets and plots from measured rows (`report` measures them; `render` reads them back from the JSON)."""
    from compress import tasks
    from compress.exporters.export import ExportConfig

    default = f"{VARIANTS['default'].label}, {ExportConfig().activations} activations"
    sections, targets = [], []
    for t in args.tasks:
        rows, metric = data.get(t, {}), tasks.get_task(t).metric
        ref = rows.get("ORT int8 dynamic")
        if ref is None:
            continue
        lines = [
            f"### {t.upper()} (dev {metric}; seeds: {', '.join(map(str, sorted(ref['metrics'])))})",
            "",
            f"| model | dev {metric} mean ± SD (seeds) | b1x128 ms | x int8 | b32x128 seq/s | x int8 | MB | x int8 |",
            "|---" * 8 + "|",
        ]
        for name, r in rows.items():
            mean, sd, n = _summary(r["metrics"])
            timing = (
                (
                    f"{r['b1_ms']:.2f} | {r['b1_ms'] / ref['b1_ms']:.2f} | "
                    f"{r['b32_seq_s']:.0f} | {r['b32_seq_s'] / ref['b32_seq_s']:.2f} | "
                    f"{r['mb']:.1f} | {r['mb'] / ref['mb']:.2f}"
                )
                if "b1_ms" in r
                else " | | | | | "
            )
            lines.append(f"| {name}{' **(defaults)**' if name == default else ''} | {mean:.4f} ± {sd:.4f} ({n}) | {timing} |")
        sections.append("\n".join(lines))
        plot(t, metric, rows, Path(args.results).parent / f"pareto_{t}.png")
        if default in rows and "dense fine-tuning (PyTorch)" in rows:
            d, dense = rows[default], _summary(rows["dense fine-tuning (PyTorch)"]["metrics"])[0]
            gap = _summary(d["metrics"])[0] - dense
            targets.append(
                f"| {t} | {verdict(d['b1_ms'] / ref['b1_ms'], 0.8, True)} | {verdict(d['b32_seq_s'] / ref['b32_seq_s'], 1.2, False)} | "
                f"{verdict(d['mb'] / ref['mb'], 0.5, True)} | {gap:+.4f}"
                + (f" (missed by {-0.005 - gap:.4f})" if gap < -0.005 else " (met)")
                + " |"
            )
    head = [
        "| task | default b1 latency x int8 (target <= 0.8) | b32 throughput x int8 (>= 1.2) | size x int8 (<= 0.5) | "
        "dev metric - dense (>= -0.005) |",
        "|---" * 5 + "|",
    ]
    write(
        args.results,
        "Accuracy against speed and size, four GLUE tasks (MiniLM-L6)",
        data,
        "\n\n".join(sections + ["### Targets (the defaults against ORT int8, this run)\n\n" + "\n".join(head + targets), _why(args, data)]),
        command=data.get("command"),
    )
    return 0


def _why(args, data: dict) -> str:
    """Where the defaults' misses come from: the size split from seed 0's default artifact, the time split from the profile."""
    lines = ["### Why the misses", ""]
    cell = next(
        (
            args.out / t / "default" / "cells" / "structure-4bit-seed0"
            for t in args.tasks
            if (args.out / t / "default" / "cells" / "structure-4bit-seed0" / "manifest.json").is_file()
        ),
        None,
    )
    ref = next((data[t]["ORT int8 dynamic"]["mb"] for t in args.tasks if "ORT int8 dynamic" in data.get(t, {})), None)
    if cell is not None and ref is not None:
        from compress import manifest as mf

        s = mf.read(cell, mf.ArtifactManifest).sizes
        mb = {k: getattr(s, k) / 1e6 for k in ("weights", "embeddings", "scales", "other")}
        lines.append(
            f"- **Size**: the 4-bit codes alone are {mb['weights']:.2f} MB (encoder linears) + {mb['embeddings']:.2f} MB (word "
            f"embedding table) = {(mb['weights'] + mb['embeddings']) / ref:.2f}x ORT int8's {ref:.1f} MB; the rest is scales "
            f"({mb['scales']:.2f} MB) and float tensors ({mb['other']:.2f} MB: position embeddings in fp32, biases, LayerNorms) "
            "and the graph. At 4 bits the floor is about 0.5x; below it needs fewer weights (--ffn-keep/--heads-keep) or "
            "fewer bits."
        )
    lines += [
        "- **Batch-1 latency and batch-32 throughput**: at run time the 4-bit weights are int8 (unpacked at session load), "
        "so the integer matmuls and attention cost what ORT int8's do (`profile_ops.md`: MatMulIntegerToFloat + QAttention "
        "5.7 ms vs DynamicQuantizeMatMul + QAttention 5.7 ms at batch 1). The static graph adds a smoothing Mul (18 in MiniLM-L6: "
        "the attention output's factors are folded into V) and a QuantizeLinear (24) per quantized activation, which ORT's "
        "DynamicQuantizeMatMul does inside its kernel (in `profile_ops.md`, before the fold, 24 Divs and 24 QuantizeLinear "
        "took about 1.1 ms of 9.4 at batch 1). 0.8x / 1.2x need about a fifth of the arithmetic gone: only structured pruning does that "
        "here (the --ffn-keep 0.5 --heads-keep 0.5 rows), and at this training budget it loses accuracy on every task, so "
        "it is not the default. The defaults' graph has the same shape on every task: a task whose ratio stands apart "
        "from the others is that run's timing noise, not a met target.",
        "- **Accuracy**: means over 2 seeds trained on the CPU (no GPU was lent for this issue), each task's training set "
        "a 2,000-example sample, 3 epochs for every variant; CoLA does not learn at this budget (MCC < 0.05 for every "
        "model), so its row says nothing about quantization.",
    ]
    return "\n".join(lines)


def cmd_render(args) -> int:
    """The tables again from pareto.json, under the command that measured them (older JSON: the one the .md names)."""
    data = json.loads(Path(args.results).with_suffix(".json").read_text())
    if "command" not in data:
        data["command"] = command_of(args.results)
    return render(args, data)


def plot(task: str, metric: str, rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in rows.items():
        if "b1_ms" not in r:
            continue
        mean, sd, _ = _summary(r["metrics"])
        ax.errorbar(
            r["b1_ms"],
            mean,
            yerr=sd,
            fmt="s" if r.get("anchor") else "o",
            markersize=4 + r["mb"] / 6,
            capsize=3,
            label=f"{name} ({r['mb']:.0f} MB)",
        )
    if "dense fine-tuning (PyTorch)" in rows:
        ax.axhline(
            _summary(rows["dense fine-tuning (PyTorch)"]["metrics"])[0], color="grey", linestyle="--", label="dense fine-tuning (PyTorch)"
        )
    ax.set_xlabel("batch 1 x 128 latency, ms (2-core CPU, ONNX Runtime)")
    ax.set_ylabel(f"dev {metric} (mean over seeds)")
    ax.set_title(f"MiniLM-L6 / {task}: marker size = file size")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["train", "report", "render"])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/pareto"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--variants", nargs="+", default=list(TRAINED), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "pareto"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return {"train": cmd_train, "report": cmd_report, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
