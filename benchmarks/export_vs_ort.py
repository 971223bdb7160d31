"""This project's exports against what a user would otherwise ship, measured in one run.

    python benchmarks/export_vs_ort.py --data-dir ../shared/data/glue \
        --dense runs/bench/weights-4bit --artifacts runs/bench/structure-8bit runs/bench/structure-4bit

Anchors, built here from the dense fine-tuned artifact (`--dense`, a `compress run --mode weights`
directory): fp32 ONNX with ONNX Runtime's BERT fusions; ORT dynamic int8 quantization (per channel)
of that graph; ORT MatMulNBits 4-bit (block 32, symmetric). Then each `--artifacts` directory's
model.onnx, and with `--kernels int8 nbits` also each artifact re-exported with MatMulNBits
(accuracy_level 4) on the same packed codes. For each: dev metric through ONNX Runtime, file MB, median latency at batch 1 x 128,
throughput at batch 32 x 128 (timed round-robin over all models, median of --rounds rounds),
and each as a ratio to the int8 anchor.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import onnx
from _results import write  # benchmarks/ is on sys.path when a script here runs

from compress.files import graph_path


def build_anchors(dense_dir: Path, work: Path) -> dict[str, Path]:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from compress import manifest as mf
    from compress import quantize, restore
    from compress.exporters.anchor import ort_int8

    manifest = mf.read(dense_dir, mf.ArtifactManifest)
    if manifest.config.train.mode != "weights":
        raise SystemExit(f"--dense {dense_dir} is not a `--mode weights` artifact")
    cfg = dataclasses.replace(restore.config_from_manifest(manifest), quant=quantize.QuantConfig(bits=32))
    model = restore.restore(dense_dir, manifest, cfg).model  # the fp32 fine-tuned weights
    fp32, int8 = ort_int8(model, manifest.model.num_heads, manifest.model.hidden_size, work)
    out = {"fp32 + fusions": fp32, "ORT int8 dynamic": int8, "ORT MatMulNBits 4-bit": work / "nbits4.onnx"}
    q = MatMulNBitsQuantizer(onnx.load(str(out["fp32 + fusions"])), bits=4, block_size=32, is_symmetric=True)
    q.process()
    q.model.save_model_to_file(str(out["ORT MatMulNBits 4-bit"]))
    return out


def accuracy(path: Path, task, dev, tokenizer_json: Path, max_length: int, pad_id: int) -> dict:
    from compress import metrics
    from compress.runtimes import evaluate
    from compress.runtimes.session import open_session

    logits = evaluate.texts_logits(open_session(path), tokenizer_json, max_length, dev.text_a, dev.text_b, pad_id)
    return {"metric": metrics.compute(task, logits, dev.labels)[task.metric], "mb": path.stat().st_size / 1e6}


def reexported(d: Path, kernel: str, work: Path) -> Path:
    """A copy of artifact `d` re-exported with another kernel (`compress export DIR --kernel K`)."""
    import shutil

    from compress.reexport import reexport

    copy = work / f"{d.name}-{kernel}"
    shutil.copytree(d, copy)
    reexport(copy, kernel=kernel)
    return copy


def latencies(paths: dict[str, Path], rounds: int) -> dict[str, dict]:
    """Round-robin over the models so that the machine's drifting load hits them all alike; medians over rounds."""
    import numpy as np

    from compress.runtimes import bench
    from compress.runtimes.session import open_session

    sessions = {name: open_session(p) for name, p in paths.items()}
    b1 = {n: [] for n in paths}
    b32 = {n: [] for n in paths}
    for _ in range(rounds):
        for name, sess in sessions.items():
            b1[name].append(bench.latency(sess, batch=1, seq_len=128, warmup=3, runs=20).median_ms)
            b32[name].append(bench.latency(sess, batch=32, seq_len=128, warmup=1, runs=3).median_ms)
    return {n: {"b1_ms": float(np.median(b1[n])), "b32_seq_s": float(32e3 / np.median(b32[n]))} for n in paths}


def main() -> int:
    from compress import manifest as mf
    from compress import tasks

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dense", required=True, type=Path)
    ap.add_argument("--artifacts", nargs="+", type=Path, default=[])
    ap.add_argument("--rounds", type=int, default=7, help="round-robin timing rounds")
    ap.add_argument(
        "--kernels",
        nargs="+",
        default=["int8"],
        choices=["int8", "float", "nbits"],
        help="export each artifact with these kernels (int8: as it is)",
    )
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "export_vs_ort"))
    args = ap.parse_args()
    manifest = mf.read(args.dense, mf.ArtifactManifest)
    task = tasks.get_task(manifest.task.name)
    dev = tasks.load_task(task, args.data_dir)["dev"]
    max_length, pad = manifest.config.train.max_length, manifest.model.pad_token_id
    rows, paths = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in build_anchors(args.dense, Path(tmp)).items():
            rows[name], paths[name] = accuracy(path, task, dev, args.dense / "tokenizer.json", max_length, pad), path
        for d, kernel in [(d, k) for d in args.artifacts for k in args.kernels]:
            c = mf.read(d, mf.ArtifactManifest).config
            q = c.quant
            name = (
                f"compress {q.bits}-bit"
                + (f" g{q.group_size}" if q.group_size else "")
                + ("" if q.symmetric else " asym")
                + (" 2:4" if c.mask.nm else "")
                + (f" ffn-keep {c.mask.ffn_keep}" if c.mask.ffn_keep else "")
                + f" {c.train.mode}"
                + ("" if kernel == c.export.kernel else f" ({kernel})")
            )
            if kernel != c.export.kernel:
                d = reexported(d, kernel, Path(tmp))
            rows[name], paths[name] = accuracy(graph_path(d), task, dev, d / "tokenizer.json", max_length, pad), graph_path(d)
            rows[name]["torch_metric"] = mf.read(d, mf.ArtifactManifest).metrics.torch[task.metric]
        for name, lat in latencies(paths, args.rounds).items():
            rows[name].update(lat)
    ref = rows["ORT int8 dynamic"]
    lines = [f"| model | dev {task.metric} | PyTorch {task.metric} | MB | x int8 | b1 ms | x int8 | b32 seq/s | x int8 |", "|---" * 9 + "|"]
    for name, r in rows.items():
        torch_metric = f"{r['torch_metric']:.4f}" if "torch_metric" in r else ""
        lines.append(
            f"| {name} | {r['metric']:.4f} | {torch_metric} | {r['mb']:.1f} | {r['mb'] / ref['mb']:.2f} | {r['b1_ms']:.2f} | "
            f"{r['b1_ms'] / ref['b1_ms']:.2f} | {r['b32_seq_s']:.0f} | {r['b32_seq_s'] / ref['b32_seq_s']:.2f} |"
        )
    write(args.results, "Exports vs ONNX Runtime's own quantizers, one run", rows, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
