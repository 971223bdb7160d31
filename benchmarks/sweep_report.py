"""A sweep's results file, written from its sweep.json alone (no hand-edited tables).

    python benchmarks/sweep_report.py SWEEP_JSON --results benchmarks/results/NAME

Writes NAME.png (`compress sweep`'s plot), NAME.md (the command that made the sweep, as its config records it; the table through
ONNX Runtime and in
PyTorch, as `compress sweep` renders it: mean ± SD over the cells that passed their accuracy guard, failed cells
counted apart; then every cell) and NAME.json (the sweep data with the summary recomputed that way).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compress.masking import MaskConfig
from compress.sweep import plot, summarize, tables
from compress.train import TrainConfig


def sweep_command(data: dict) -> str:
    """The `compress sweep` options that differ from the defaults, as recorded in sweep.json's config."""
    c, run = data["config"], data["config"]["run"]
    parts = [
        "compress sweep",
        f"--model {run['model']}",
        f"--task {run['task']}",
        f"--bits {','.join(map(str, c['bits']))}",
        f"--modes {','.join(c['modes'])}",
        f"--seeds {c['seeds']}",
    ]
    train_defaults, mask_defaults = TrainConfig(), MaskConfig()
    flags = {
        "epochs": "--epochs",
        "batch_size": "--batch-size",
        "max_length": "--max-length",
        "mask_lr": "--mask-lr",
        "head_lr": "--head-lr",
        "lr": "--lr",
        "select": "--select",
        "max_train_examples": "--max-train-examples",
    }
    parts += [f"{flag} {run['train'][k]}" for k, flag in flags.items() if run["train"].get(k) != getattr(train_defaults, k)]
    if run["mask"].get("ffn_keep") is not None:
        parts.append(f"--ffn-keep {run['mask']['ffn_keep']}")
    if (run["mask"]["init_low"], run["mask"]["init_high"]) != (mask_defaults.init_low, mask_defaults.init_high):
        parts.append(f"--score-init {run['mask']['init_low']} {run['mask']['init_high']}")
    return " ".join(parts) + " --data-dir GLUE_DIR"


def render(data: dict, sweep_json: str) -> str:
    metric = data["metric"]
    lines = [
        f"# {data['model']} / {data['task']}: `compress sweep` results",
        "",
        f"`python benchmarks/sweep_report.py {sweep_json}` from the sweep made by:",
        "",
        f"    {sweep_command(data)}",
        "",
        tables(data),
        "Every cell (dev metric through ONNX Runtime / in PyTorch; guard: ONNX Runtime within the run's max_metric_drop of PyTorch):",
        "",
        "| mode | bits | seed | ONNX Runtime | PyTorch | density | MB | guard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in data["cells"]:
        lines.append(
            f"| {c['mode']} | {c['bits']} | {c['seed']} | {c['metrics'][metric]:.4f} | {c['torch_metrics'][metric]:.4f} | "
            f"{c['density']:.4f} | {c['onnx_bytes'] / 1e6:.1f} | {'passed' if c['validation_passed'] is not False else 'FAILED'} |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep_json")
    ap.add_argument("--results", required=True, help="output path without suffix")
    a = ap.parse_args()
    data = json.loads(Path(a.sweep_json).read_text())
    data["summary"] = summarize(data["cells"])
    text = render(data, a.sweep_json)
    print(text)
    Path(a.results).with_suffix(".md").write_text(text)
    Path(a.results).with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, Path(a.results).with_suffix(".png"))


if __name__ == "__main__":
    main()
