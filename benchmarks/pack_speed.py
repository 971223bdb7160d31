"""A pack of four `--speedup 2` tasks on one backbone: does each task run at its standalone artifact's speed? (issue 23)

    python benchmarks/pack_speed.py --data-dir ../shared/data/glue [--work runs/pack_speed] [--rounds 5]

Speed does not depend on how well a mask is trained, only on the layers, heads and FFN neurons it removes, which
`--speedup` decides before training (the layers are removed before it starts; its controller reaches the heads' and
neurons' fractions by mid-training). So every task trains briefly (its first 512
training examples, 2 epochs, 256 dev examples): the dev metrics are not the point here and are not reported.

1. `compress quantize --model minilm --bits 4`: the shared backbone.
2. MRPC, SST-2, CoLA and STS-B: `compress run --backbone B --speedup 2` (a mask: --mode structure), and one MRPC run with no
   speedup (the unpruned graph on the same backbone, what the speedup is measured against).
3. `compress pack` of the four `--speedup 2` artifacts.
4. One round-robin over every graph: each task's graph in the pack, its standalone graph, and the unpruned graph,
   at batch 1 x 128 (median ms) and batch 32 x 128 (sequences/s); and whether ONNX Runtime, after its load-time
   optimizations, runs the same kernels on the same weight shapes for the pack's graph as for the standalone one
   (then any difference in time is the machine's noise).
Each step is skipped when a previous sitting finished it (resumes). Results: results/pack_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs
from export_vs_ort import latencies
from pack_glue import compress, finished

TASKS = ("mrpc", "sst2", "cola", "stsb")
BRIEF = ["--max-train-examples", "512", "--max-eval-examples", "256", "--epochs", "2", "--no-bench", "--seed", "0"]


def build(args) -> tuple[Path, dict[str, Path], Path]:
    """-> (the pack, task -> its standalone artifact, the unpruned artifact)."""
    w = args.work
    if finished(w / "backbone") is None:
        compress("quantize", "--model", "minilm", "--bits", "4", "--out", str(w / "backbone"))
    common = ["--backbone", str(w / "backbone"), "--data-dir", str(args.data_dir), *BRIEF]
    arts = {t: w / f"{t}-speedup2" for t in TASKS}
    for t, d in arts.items():
        if finished(d) is None:
            compress("run", "--task", t, *common, "--speedup", "2", "--out", str(d))
    dense = w / "mrpc-unpruned"
    if finished(dense) is None:
        compress("run", "--task", "mrpc", *common, "--out", str(dense))
    pack = w / "pack"
    if finished(pack) is None:
        compress("pack", str(pack), *map(str, arts.values()), "--allow-failed-guard")
    return pack, arts, dense


def main() -> int:
    from compress import files
    from compress import manifest as mf

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("runs/pack_speed"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "pack_speed"))
    args = ap.parse_args()
    pack, arts, dense = build(args)
    pm = mf.read(pack, mf.PackManifest)
    graphs = {"unpruned (mrpc, same backbone)": files.graph_path(dense)}
    for t, d in arts.items():
        graphs[f"{t} standalone"] = files.graph_path(d)
        graphs[f"{t} in the pack"] = pack / pm.tasks[t].onnx
    timed = latencies(graphs, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        same = {t: _kernels(graphs[f"{t} in the pack"], Path(tmp)) == _kernels(graphs[f"{t} standalone"], Path(tmp)) for t in arts}
    base = timed["unpruned (mrpc, same backbone)"]
    lines = [
        "| task | layers kept | heads kept (of the kept layers') | FFN neurons kept | speedup asked / reached (manifest) | "
        "standalone b1 ms | pack b1 ms | "
        "pack / standalone b1 | pack x unpruned b1 | standalone b32 seq/s | pack b32 seq/s | pack / standalone b32 | same kernels and "
        "shapes after load | own bytes in the pack |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {"unpruned": base, "tasks": {}}
    for t, d in arts.items():
        m, pt = mf.read(d, mf.ArtifactManifest), pm.tasks[t]
        alone, packed = timed[f"{t} standalone"], timed[f"{t} in the pack"]
        lines.append(
            f"| {t} | {m.speed.layers or 'all'} | {_kept(pt.attention_heads)} | {_kept(pt.ffn_neurons)} | "
            f"{m.speed.asked:g} / {m.speed.reached:.2f} | "
            f"{alone['b1_ms']:.2f} | {packed['b1_ms']:.2f} | {packed['b1_ms'] / alone['b1_ms']:.2f} | "
            f"{base['b1_ms'] / packed['b1_ms']:.2f} | {alone['b32_seq_s']:.0f} | {packed['b32_seq_s']:.0f} | "
            f"{packed['b32_seq_s'] / alone['b32_seq_s']:.2f} | {'yes' if same[t] else 'no'} | {pt.bytes / 1e3:.0f} kB |"
        )
        rows["tasks"][t] = {
            "standalone": alone,
            "pack": packed,
            "same_kernels": same[t],
            "heads": pt.attention_heads,
            "layers": m.speed.layers,
            "bytes": pt.bytes,
        }
    lines += [
        "",
        f"Unpruned graph on the same backbone: {base['b1_ms']:.2f} ms at batch 1, {base['b32_seq_s']:.0f} seq/s at batch 32. "
        f"Timed round-robin, medians of {args.rounds} rounds, on {_cpu()}.",
    ]
    write(args.results, "A pack of four --speedup 2 tasks: each task's speed in the pack vs standalone (MiniLM-L6)", rows, "\n".join(lines))
    return 0


def _kernels(path: Path, tmp: Path) -> list[tuple]:
    """The graph ONNX Runtime runs after its load-time optimizations: each node's operator and its weights' shapes."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    return sorted((n.op_type, tuple(shapes.get(x, ()) for x in n.input)) for n in g.node)


def _kept(counts: dict[str, list[int]]) -> str:
    return "{} of {}".format(*map(sum, zip(*counts.values()))) if counts else "all"


def _cpu() -> str:
    from compress.latency import cpu_name

    return cpu_name()


if __name__ == "__main__":
    sys.exit(main())
