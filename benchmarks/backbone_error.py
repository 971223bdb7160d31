"""What does quantizing without the task's data cost, before any training?

    python benchmarks/backbone_error.py --data-dir ../shared/data/glue [--model minilm] [--bits 4] [--tasks mrpc sst2 cola stsb]

For each task, the encoder is quantized three ways and its mean-pooled output on the first 256 dev
inputs compared with the fp32 encoder's (mean cosine similarity; 1 = unchanged):
  rtn             round to nearest (task-independent)
  gptq general    GPTQ calibrated on the package's general text (task-independent: a shared backbone)
  gptq task       GPTQ calibrated on the task's first 128 training inputs (today's per-task default)
The backbones of the first two are the same for every task. CPU only, a few minutes.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from _results import write  # benchmarks/ is on sys.path when a script here runs
from mask_init import pooled

CALIBRATIONS = {"rtn": dict(method="rtn"), "gptq general": dict(calibration="general"), "gptq task": dict(calibration="task")}


def main():
    from compress import backbone, calibration, models, quantize, tasks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--tasks", nargs="+", default=["mrpc", "sst2", "cola", "stsb"])
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "backbone_error"))
    args = ap.parse_args()

    clf, tok, _ = models.build_classifier(args.model, 2)
    shared = {}
    for name in ("rtn", "gptq general"):
        shared[name] = copy.deepcopy(clf)
        cfg = quantize.default_config(args.bits, **CALIBRATIONS[name])
        backbone.quantize_(shared[name], cfg, calibration.batches(backbone.calibration_tokens(tok, cfg, 128)))
    rows = []
    for t in args.tasks:
        task = tasks.get_task(t)
        splits = tasks.load_task(task, args.data_dir)
        dev = splits["dev"].subset(args.examples)
        enc = dict(tok(dev.text_a, dev.text_b, truncation=True, max_length=128, padding=True, return_tensors="pt"))
        reference = pooled(clf, enc)
        own = copy.deepcopy(clf)
        cfg = quantize.default_config(args.bits, **CALIBRATIONS["gptq task"])
        task_tokens = calibration.tokens(tok, splits["train"], 128, 128)
        backbone.quantize_(own, cfg, calibration.batches(backbone.calibration_tokens(tok, cfg, 128, task_tokens)))
        row = {"task": task.name}
        for name, model in (*shared.items(), ("gptq task", own)):
            row[name] = torch.nn.functional.cosine_similarity(pooled(model, enc), reference).mean().item()
        rows.append(row)
        print(row, flush=True)
    names = list(CALIBRATIONS)
    table = (
        f"| task | {' | '.join(names)} |\n|---"
        + "|---" * len(names)
        + "|\n"
        + "\n".join(f"| {r['task']} | " + " | ".join(f"{r[n]:.4f}" for n in names) + " |" for r in rows)
    )
    write(args.results, f"{args.model} {args.bits}-bit: mean-pooled output cosine to fp32 on dev inputs, by calibration", rows, table)


if __name__ == "__main__":
    main()
