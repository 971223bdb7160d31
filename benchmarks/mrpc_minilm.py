"""Full pipeline on MiniLM / MRPC: masked 8-bit, masked 4-bit, dense fine-tuning (+4-bit PTQ export).

    python benchmarks/mrpc_minilm.py --data-dir ../shared/data/glue [--out runs/bench] [--epochs N]

Runs the real CLI for each configuration and prints dev F1 / accuracy, mask density, wall time,
file size and ONNX Runtime latency; writes benchmarks/results/mrpc_minilm.{json,md}.
Targets (2-core CPU): masked 4-bit F1 >= 0.86, masked 8-bit F1 >= 0.86, the 4-bit run <= 15 min.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs

CONFIGS = [("structure", 8), ("structure", 4), ("weights", 4)]
TARGETS = {("structure", 8): 0.86, ("structure", 4): 0.86}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--extra", default="", help="extra flags for every `compress run`")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "mrpc_minilm"))
    args = ap.parse_args()
    rows = []
    for mode, bits in CONFIGS:
        out = Path(args.out) / f"{mode}-{bits}bit"
        cmd = [
            "compress",
            "run",
            "--model",
            "minilm",
            "--task",
            "mrpc",
            "--mode",
            mode,
            "--bits",
            str(bits),
            "--data-dir",
            args.data_dir,
            "--out",
            str(out),
            "--overwrite",
            *shlex.split(args.extra),
        ]
        print("$", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wall = time.perf_counter() - t0
        print(proc.stdout, flush=True)
        if proc.returncode:
            print(f"FAILED ({proc.returncode})", flush=True)
            return proc.returncode
        from compress import manifest as mf

        m = mf.read(out, mf.ArtifactManifest)
        rows.append(
            {
                "mode": mode,
                "bits": bits,
                "f1_torch": m.metrics.torch["f1"],
                "acc_torch": m.metrics.torch["accuracy"],
                "f1_onnx": m.metrics.onnx["f1"],
                "acc_onnx": m.metrics.onnx["accuracy"],
                "agreement": m.validation.agreement,
                "density": m.density,
                "best_epoch": m.training.best_epoch,
                "train_s": m.training.seconds,
                "wall_s": wall,
                "onnx_mb": m.sizes.onnx_total / 1e6,
                "b1_ms": m.bench["batch1"].median_ms,
                "b32_seq_s": m.bench["batch32"].throughput_seq_s,
                "command": shlex.join(cmd),
            }
        )
    head = "| mode | bits | dev F1 torch | dev F1 ORT | acc ORT | agree | density | best ep | wall min | MB | b1 ms | b32 seq/s | target |"
    lines = [head, "|---" * 13 + "|"]
    for r in rows:
        t = TARGETS.get((r["mode"], r["bits"]))
        verdict = "" if t is None else ("PASS" if r["f1_onnx"] >= t else "MISS") + f" (>= {t})"
        if r["mode"] == "structure" and r["bits"] == 4:
            verdict += f", wall {'PASS' if r['wall_s'] <= 900 else 'MISS'} (<= 15 min)"
        lines.append(
            f"| {r['mode']} | {r['bits']} | {r['f1_torch']:.4f} | {r['f1_onnx']:.4f} | {r['acc_onnx']:.4f} | {r['agreement']:.3f} | "
            f"{r['density']:.4f} | {r['best_epoch']} | {r['wall_s'] / 60:.1f} | {r['onnx_mb']:.1f} | {r['b1_ms']:.1f} | "
            f"{r['b32_seq_s']:.0f} | {verdict} |"
        )
    write(args.results, "MiniLM / MRPC", rows, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
