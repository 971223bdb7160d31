"""Graph forms x runtimes (issue 24): today's int8 graph, the qdq kernel's standard-ONNX graphs, ONNX Runtime's int8 model.

    python benchmarks/runtimes_qdq.py --data-dir ../shared/data/glue [--work runs/runtimes] [--tasks mrpc sst2] [--rounds 5]
        [--artifact mrpc=DIR ...]

Per task, a MiniLM-L6 4-bit artifact with the defaults (`--artifact TASK=DIR`, or one trained here: its first 2,000
training examples, 3 epochs, seed 0, as benchmarks/pareto.py trains). Its graph is re-exported as:
  int8                today's graph (ONNX Runtime contrib operators: QAttention, MatMulIntegerToFloat, ...)
  qdq (weight-only)   `compress export DIR --kernel qdq`: DequantizeLinear of INT4 codes -> MatMul, float activations
  qdq (static int8)   `... --kernel qdq --activations static`: plus QuantizeLinear/DequantizeLinear (int8) on activations
and ONNX Runtime's own int8 model of the same network (exporters.anchor: BERT fusions + quantize_dynamic per channel).
Each graph runs on ONNX Runtime's CPU provider and on OpenVINO's runtime (which reads standard ONNX only: the anchor and
today's graph are refused, and listed with the reason). Measured: size; the whole dev set's metric; batch 1 x 128 and
batch 32 x 128, every (graph, runtime) timed round-robin in one process; load time and memory in a fresh process per
(graph, runtime): resident memory after load and its peak (VmHWM), less the same process before loading (imports done).
Results: results/runtimes_qdq.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs
from pack_glue import compress, finished

FORMS = {"int8": ("int8", "static"), "qdq (weight-only)": ("qdq", "none"), "qdq (static int8)": ("qdq", "static")}  # kernel, activations
ANCHOR = "ORT int8 (quantize_dynamic)"
RUNTIMES = ("cpu", "openvino")

LOAD_SCRIPT = r"""
import json, sys, time
from compress.runtimes.session import open_session, run_logits
from compress.runtimes.bench import inputs
if sys.argv[2] == "openvino":  # imported before the baseline, and only where it runs: an app on ONNX Runtime has no openvino,
    import openvino  # and importing it slows ONNX Runtime's session creation and protobuf's import (a folded graph is read with it)
def status():
    with open("/proc/self/status") as f:
        s = dict(line.split(":", 1) for line in f)
    return int(s["VmRSS"].split()[0]) * 1024, int(s["VmHWM"].split()[0]) * 1024
mode = sys.argv[3] if len(sys.argv) > 3 else ""  # "fold": folded first; "pack:TASK": argv[1] is a pack, TASK opened by compress.Pack
if mode.startswith("pack:"):
    from compress import Pack
    pack = Pack(sys.argv[1], threads=2)  # its manifest read and every file verified before the baseline
    open_ = lambda: pack.session(mode.removeprefix("pack:"))
else:
    open_ = lambda: open_session(sys.argv[1], sys.argv[2], threads=2, fold_first=mode == "fold")
before, _ = status()
t0 = time.perf_counter()
sess = open_()
load = time.perf_counter() - t0
t0 = time.perf_counter()
run_logits(sess, inputs(1, 128))
first = time.perf_counter() - t0
rss, peak = status()
print(json.dumps({"load_ms": 1e3 * load, "first_ms": 1e3 * first, "rss_mb": (rss - before) / 1e6, "peak_mb": (peak - before) / 1e6}))
"""


def artifacts(args) -> dict[str, Path]:
    """task -> its artifact (given, or trained here once)."""
    given = dict(a.split("=", 1) for a in args.artifact)
    out = {}
    for task in args.tasks:
        d = Path(given[task]) if task in given else args.work / f"{task}-4bit"
        if task not in given and finished(d) is None:
            compress("run", "--task", task, "--data-dir", str(args.data_dir), "--max-train-examples", "2000", "--epochs", "3",
                     "--seed", "0", "--no-bench", "--out", str(d))  # fmt: skip
        out[task] = d
    return out


def graphs(args, task: str, art: Path) -> dict[str, Path]:
    """form -> onnx/model.onnx of a copy of the artifact re-exported in that form; the anchor's graph."""
    out = {}
    for form, (kernel, activations) in FORMS.items():
        d = args.work / task / form.replace(" ", "_").replace("(", "").replace(")", "")
        m = finished(d)
        if m is None or (m.config.export.kernel, m.config.export.activations) != (kernel, activations):
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(art, d)
            compress("export", str(d), "--kernel", kernel, "--activations", activations)
        out[form] = d / "onnx" / "model.onnx"
    anchor = args.work / task / "anchor" / "int8.onnx"
    if not anchor.is_file():
        _anchor(art, anchor.parent)
    out[ANCHOR] = anchor
    return out


def _anchor(art: Path, where: Path) -> None:
    from compress import manifest as mf
    from compress import restore
    from compress.exporters.anchor import ort_int8

    where.mkdir(parents=True, exist_ok=True)
    m = mf.read(art, mf.ArtifactManifest)
    model = restore.restore(art, m, restore.config_from_manifest(m)).model
    ort_int8(model, m.model.num_heads, m.model.hidden_size, where)


def dev_metric(task: str, art: Path, graph: Path, runtime: str, data_dir: Path) -> float | str:
    """The dev metric through `runtime`, or why it could not run the graph."""
    from compress import files, metrics, tasks
    from compress import manifest as mf
    from compress.errors import CompressError
    from compress.runtimes import evaluate
    from compress.runtimes.session import open_session

    t = tasks.get_task(task)
    dev = tasks.load_task(t, data_dir)["dev"]
    m = mf.read(art, mf.ArtifactManifest)
    try:
        sess = open_session(graph, runtime, threads=2)
    except CompressError as e:
        return str(e).split("): ", 1)[-1][:120]  # the reason and the fix, without the path
    logits = evaluate.texts_logits(sess, art / files.TOKENIZER, m.config.train.max_length, dev.text_a, dev.text_b, m.model.pad_token_id)
    return metrics.compute(t, logits, dev.labels)[t.metric]


def timings(runnable: dict[tuple, Path], rounds: int) -> dict[tuple, dict]:
    from compress.runtimes import bench
    from compress.runtimes.session import open_session

    sessions = {k: open_session(p, k[2], threads=2) for k, p in runnable.items()}
    b1, b32 = ({k: [] for k in sessions} for _ in range(2))
    for _ in range(rounds):
        for k, s in sessions.items():
            b1[k].append(bench.latency(s, batch=1, seq_len=128, warmup=3, runs=20).median_ms)
            b32[k].append(bench.latency(s, batch=32, seq_len=128, warmup=1, runs=3).median_ms)
    return {k: {"b1_ms": statistics.median(b1[k]), "b32_seq_s": 32e3 / statistics.median(b32[k])} for k in sessions}


def load(graph: Path, runtime: str, fold_first: bool = False, pack_task: str | None = None, fold_cache: Path | None = None) -> dict:
    """Load `graph` in a fresh process (fold_first: compress.runtimes.staged_fold, as compress.Pack and compress bench do;
    pack_task: `graph` is a pack, and that task's session is opened by compress.Pack; fold_cache: the cache directory
    compress.runtimes.fold_cache reads and writes folded graphs in, None: the cache off, every load folds in memory)."""
    mode = f"pack:{pack_task}" if pack_task else "fold" if fold_first else ""
    argv = [sys.executable, "-c", LOAD_SCRIPT, str(graph), runtime, *([mode] if mode else [])]
    env = os.environ | ({"COMPRESS_CACHE": str(fold_cache)} if fold_cache else {"COMPRESS_FOLD_CACHE": "0"})
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"loading {graph} on {runtime} failed: {r.stderr.strip().splitlines()[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cached_loads(graph: Path, repeats: int, pack_task: str | None = None) -> tuple[list[dict], list[dict]]:
    """-> (first loads: each into an empty fold cache, later loads: from a cache the first load filled), `repeats` each."""
    with tempfile.TemporaryDirectory() as tmp:
        first = [first_load(graph, Path(tmp) / f"first{k}", pack_task, keep=k == 0) for k in range(repeats)]
        later = [load(graph, "cpu", True, pack_task, Path(tmp) / "first0") for _ in range(repeats)]
    return first, later


def first_load(graph: Path, cache: Path, pack_task: str | None = None, keep: bool = False) -> dict:
    """A load into the empty fold cache `cache`, which is then deleted unless kept: a cache left on disk holds its
    written graph in the page cache, and on a virtual machine the next first load then writes into memory the machine
    has never touched, which costs several times as much as memory it has used before (the loads of every other row
    reuse what the previous process freed). Deleted, every first load writes into memory as used as theirs."""
    row = load(graph, "cpu", True, pack_task, cache)
    if not keep:
        shutil.rmtree(cache, ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("runs/runtimes"))
    ap.add_argument("--tasks", nargs="+", default=["mrpc", "sst2"])
    ap.add_argument("--artifact", nargs="*", default=[], help="TASK=DIR: an existing 4-bit artifact of that task")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "runtimes_qdq"))
    args = ap.parse_args()
    rows, runnable = {}, {}
    for task, art in artifacts(args).items():
        for form, graph in graphs(args, task, art).items():
            for runtime in RUNTIMES:
                metric = dev_metric(task, art, graph, runtime, args.data_dir)
                rows[(task, form, runtime)] = {"mb": graph.stat().st_size / 1e6, "metric": metric}
                if not isinstance(metric, str):
                    runnable[(task, form, runtime)] = graph
    for k, t in timings(runnable, args.rounds).items():
        rows[k] |= t | load(runnable[k], k[2])
    return render(args, rows)


def _ratio(r: dict, a: dict, key: str) -> str:
    return f"{r[key] / a[key]:.2f}" if key in r and key in a else ""


def render(args, rows: dict[tuple, dict]) -> int:
    from compress.latency import cpu_name

    lines = [
        "| task | graph | runtime | MB | x anchor | dev metric | vs int8 on cpu | b1 ms | x anchor | b32 seq/s | x anchor | "
        "load ms | x anchor | peak MB at load | x anchor | resident MB | x anchor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, form, runtime), r in rows.items():
        a, ours = rows[(task, ANCHOR, "cpu")], rows[(task, "int8", "cpu")]
        if isinstance(r["metric"], str):
            lines.append(f"| {task} | {form} | {runtime} | {r['mb']:.1f} | | not run: {r['metric']} | | | | | | | | | | | |")
            continue
        x = lambda key: _ratio(r, a, key)
        lines.append(
            f"| {task} | {form} | {runtime} | {r['mb']:.1f} | {r['mb'] / a['mb']:.2f} | {r['metric']:.4f} | "
            f"{r['metric'] - ours['metric']:+.4f} | {r['b1_ms']:.2f} | {x('b1_ms')} | {r['b32_seq_s']:.0f} | {x('b32_seq_s')} | "
            f"{r['load_ms']:.0f} | {x('load_ms')} | {r['peak_mb']:.0f} | {x('peak_mb')} | {r['rss_mb']:.0f} | {x('rss_mb')} |"
        )
    lines += ["", f"{cpu_name()}, 2 threads; timings round-robin in one process, medians of {args.rounds} rounds."]
    data = {" | ".join(k): v for k, v in rows.items()}
    write(args.results, "Graph forms x runtimes: today's int8, qdq (standard ONNX), ORT int8 (MiniLM-L6)", data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
