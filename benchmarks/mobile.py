"""Mobile packages: the .ort that `compress export DIR --format ort` writes against the ONNX artifact and ONNX Runtime's
own int8 model converted to .ort, at 8, 4 and 2 bits (MiniLM-L6).

    python benchmarks/mobile.py --data-dir ../shared/data/glue --pareto runs/pareto --out runs/mobile [--rounds 5]

Artifacts: the 4-bit ones are benchmarks/pareto.py's default cells (every task and seed trained there: MRPC, SST-2,
CoLA, STS-B, its sampled training sets, 3 epochs); the 8- and 2-bit ones are trained here the same way for MRPC, seed 0
(compress.sweep cells under OUT: a finished cell is not trained again). ORT's int8 model is quantize_dynamic (per
channel, BERT fusions) of the same seed's dense fine-tuning, converted with the same converter and target.

For every artifact: a copy is re-exported with --format ort; the dev metric of onnx/model.onnx and of onnx/model.ort
through ONNX Runtime's Python package (which reads the .ort format the mobile packages read). MRPC seed 0's graphs are
then timed in one round-robin loop on this machine's CPU (x86-64 with AVX-512; no ARM device was available, so these are
not phone timings): session load time (median of --rounds loads) and batch-1 x 128 latency.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs

TRAINED_HERE = (8, 2)  # bit widths trained for this benchmark (MRPC, seed 0); 4 bits come from pareto.py's cells


def train(args) -> dict[int, Path]:
    from compress import configs, sweep

    cfg = sweep.SweepConfig(
        run=configs.RunConfig(task="mrpc", data_dir=str(args.pareto / "data"), train=configs.TrainConfig(epochs=3, seed=0)),
        bits=TRAINED_HERE,
        modes=("structure",),
        seeds=1,
        out=str(args.out / "mrpc"),
    )
    out = {}
    for bits in TRAINED_HERE:
        rec = sweep.run_cell(cfg, sweep.Cell("structure", bits, 0))
        logging.info("mrpc %d-bit: %s (%.0f s)", bits, rec["metrics"], rec["seconds"])
        out[bits] = args.out / "mrpc" / "cells" / f"structure-{bits}bit-seed0"
    return out


def measure(cell: Path, work: Path, task, dev) -> dict:
    """A copy of the artifact re-exported with --format ort: sizes, and both graphs' dev metric."""
    from export_vs_ort import accuracy

    from compress import manifest as mf
    from compress.reexport import reexport

    copy = work / f"{cell.parent.parent.parent.name}-{cell.parent.parent.name}-{cell.name}"
    shutil.copytree(cell, copy)
    t0 = time.perf_counter()
    m = reexport(copy, fmt="ort")
    seconds = time.perf_counter() - t0
    src = mf.read(cell, mf.ArtifactManifest)
    args = (task, dev, copy / "tokenizer.json", m.config.train.max_length, m.model.pad_token_id)
    return {
        "artifact": str(cell),
        "bits": src.config.quant.bits,
        "onnx": str(copy / "onnx" / "model.onnx"),
        "ort": str(copy / "onnx" / "model.ort"),
        "onnx_mb": m.sizes.onnx_total / 1e6,
        "ort_mb": m.sizes.ort_total / 1e6,
        "export_ort_s": seconds,
        "onnx_metric": accuracy(copy / "onnx" / "model.onnx", *args)["metric"],
        "ort_metric": accuracy(copy / "onnx" / "model.ort", *args)["metric"],
        "ort_max_abs_diff": m.validation.ort_max_abs_diff,
    }


def anchor(dense: Path, work: Path, task, dev) -> dict:
    """ORT's own int8 model of the dense fine-tuning, as .onnx and as .ort; the int8 artifact graph converted as it is."""
    from export_vs_ort import accuracy, build_anchors

    from compress import manifest as mf
    from compress.exporters import ort_format

    d = work / "anchor"
    d.mkdir()
    int8 = build_anchors(dense, d)["ORT int8 dynamic"]
    ort = next(p for p in ort_format.to_ort(int8, d) if p.suffix == ".ort")
    m = mf.read(dense, mf.ArtifactManifest)
    metric = accuracy(ort, task, dev, dense / "tokenizer.json", m.config.train.max_length, m.model.pad_token_id)["metric"]
    return {
        "onnx": str(int8),
        "ort": str(ort),
        "onnx_mb": int8.stat().st_size / 1e6,
        "ort_mb": ort.stat().st_size / 1e6,
        "ort_metric": metric,
    }


def timings(paths: dict[str, Path], rounds: int) -> dict[str, dict]:
    """Round-robin: per round, each graph loaded once (timed) and timed at batch 1 x 128; medians over rounds."""
    from compress.runtimes import bench
    from compress.runtimes.session import open_session

    load = {k: [] for k in paths}
    b1 = {k: [] for k in paths}
    for _ in range(rounds):
        for k, p in paths.items():
            t0 = time.perf_counter()
            sess = open_session(p)
            load[k].append(time.perf_counter() - t0)
            b1[k].append(bench.latency(sess, batch=1, seq_len=128, warmup=3, runs=20, max_seconds=0).median_ms)
            del sess
    return {k: {"load_ms": 1e3 * statistics.median(load[k]), "b1_ms": statistics.median(b1[k])} for k in paths}


def main() -> int:
    import tempfile

    from compress import tasks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--pareto", type=Path, default=Path("runs/pareto"), help="benchmarks/pareto.py's --out (its 4-bit and dense cells)")
    ap.add_argument("--out", type=Path, default=Path("runs/mobile"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "mobile"))
    ap.add_argument("--render", action="store_true", help="only write the tables again from the results JSON")
    args = ap.parse_args()
    if args.render:
        return render(args, json.loads(Path(args.results).with_suffix(".json").read_text()))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cells = {(bits, "mrpc", 0): c for bits, c in train(args).items()}
    for t in ("mrpc", "sst2", "cola", "stsb"):
        for seed in (0, 1):
            c = args.pareto / t / "default" / "cells" / f"structure-4bit-seed{seed}"
            if (c / "manifest.json").is_file():
                cells[(4, t, seed)] = c
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        devs = {t: tasks.load_task(tasks.get_task(t), args.pareto / "data")["dev"] for t in {t for _, t, _ in cells}}
        for (_, t, seed), c in sorted(cells.items(), key=lambda kv: (kv[0][1] != "mrpc", kv[0])):
            rows.append({"task": t, "seed": seed, **measure(c, work, tasks.get_task(t), devs[t])})
            logging.info("%s", rows[-1])
        ref = anchor(args.pareto / "mrpc" / "dense" / "cells" / "weights-32bit-seed0", work, tasks.get_task("mrpc"), devs["mrpc"])
        mrpc = {r["bits"]: r for r in rows if r["task"] == "mrpc" and r["seed"] == 0}
        paths = {"ORT int8 .onnx": Path(ref["onnx"]), "ORT int8 .ort": Path(ref["ort"])}
        for bits, r in sorted(mrpc.items(), reverse=True):
            paths[f"{bits}-bit .onnx"], paths[f"{bits}-bit .ort"] = Path(r["onnx"]), Path(r["ort"])
        timed = timings(paths, args.rounds)
    return render(args, {"rows": rows, "anchor": ref, "timings": timed, "command": "python " + " ".join(sys.argv)})


def render(args, data: dict) -> int:
    """The tables from measured rows (`--render`: again from the results JSON, under the command that measured them)."""
    from compress import tasks

    rows, ref, t = data["rows"], data["anchor"], data["timings"]
    mrpc = {r["bits"]: r for r in rows if r["task"] == "mrpc" and r["seed"] == 0}
    lines = [
        "Sizes and times (MiniLM-L6, MRPC seed 0; x86-64 CPU, 2 cores, ONNX Runtime's Python package, which reads the "
        "same .ort format as its Android/iOS packages; no ARM device was available to time: phone timings will differ):",
        "",
        "| model | .onnx MB | .ort MB | .ort x ORT int8 .ort | load ms .onnx / .ort | b1x128 ms .onnx / .ort | dev F1 .onnx / .ort |",
        "|---|---|---|---|---|---|---|",
    ]
    lines.append(
        f"| ORT int8 dynamic (per channel, fusions) | {ref['onnx_mb']:.1f} | {ref['ort_mb']:.1f} | 1.00 | "
        f"{t['ORT int8 .onnx']['load_ms']:.0f} / {t['ORT int8 .ort']['load_ms']:.0f} | "
        f"{t['ORT int8 .onnx']['b1_ms']:.2f} / {t['ORT int8 .ort']['b1_ms']:.2f} | — / {ref['ort_metric']:.4f} |"
    )
    for bits, r in sorted(mrpc.items(), reverse=True):
        o, m = t[f"{bits}-bit .onnx"], t[f"{bits}-bit .ort"]
        lines.append(
            f"| compress {bits}-bit | {r['onnx_mb']:.1f} | {r['ort_mb']:.1f} | {r['ort_mb'] / ref['ort_mb']:.2f} | "
            f"{o['load_ms']:.0f} / {m['load_ms']:.0f} | {o['b1_ms']:.2f} / {m['b1_ms']:.2f} | "
            f"{r['onnx_metric']:.4f} / {r['ort_metric']:.4f} |"
        )
    lines += [
        "",
        "Dev metric of the .ort against the ONNX artifact (every artifact; the .onnx uses the int8 kernel with static "
        "activation scales, the .ort MatMulNBits and GatherBlockQuantized with int8 activation blocks):",
        "",
        "| task | bits | seed | metric | .onnx | .ort | .ort - .onnx |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['bits']} | {r['seed']} | {tasks.get_task(r['task']).metric} | {r['onnx_metric']:.4f} | "
            f"{r['ort_metric']:.4f} | {r['ort_metric'] - r['onnx_metric']:+.4f} |"
        )
    four = mrpc.get(4)
    if four:
        worst = {b: max(abs(r["ort_metric"] - r["onnx_metric"]) for r in rows if r["bits"] == b) for b in sorted({r["bits"] for r in rows})}
        lines += [
            "",
            f"Target (MiniLM 4-bit): .ort <= 13 MB and <= 0.55x ORT int8's .ort: {four['ort_mb']:.2f} MB, "
            f"{four['ort_mb'] / ref['ort_mb']:.3f}x; dev metric within 0.005 of the ONNX artifact: worst |.ort - .onnx| "
            f"over the {sum(r['bits'] == 4 for r in rows)} 4-bit artifacts above {worst[4]:.4f} "
            f"(" + ", ".join(f"{b}-bit: {w:.4f}" for b, w in worst.items() if b != 4) + ").",
        ]
    write(args.results, "Mobile .ort packages: size, load time and latency (MiniLM-L6)", data, "\n".join(lines), command=data["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
