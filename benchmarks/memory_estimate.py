"""Does `compress run`'s memory estimate (compress.resources) cover what training really takes?

    python benchmarks/memory_estimate.py [--shapes minilm:32x128 minilm:8x384 bert-base:32x128 bert-base:8x384]

Each shape runs in its own process: build the classifier (bert-base: random weights from its config, the hub being
unreachable here), apply the masks, then three bf16 training steps of mask learning with AdamW while a thread samples
the resident memory every 10 ms. Printed: the growth of resident memory over the loaded model during the steps (what
the estimate predicts, less its best-epoch and checkpoint copies, which these steps do not make) against the
estimate with and without its safety margin.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs

CHILD = r"""
import json, sys, tempfile, threading, time
import psutil, torch
from compress import masking, models, resources, train
name, b, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if name == "bert-base":
    from transformers import AutoTokenizer, BertConfig, BertModel
    d = tempfile.mkdtemp()
    BertModel(BertConfig()).save_pretrained(d)
    AutoTokenizer.from_pretrained(models.embedded_dir()).save_pretrained(d)
    name = d
torch.manual_seed(0)
clf, tok, _ = models.build_classifier(name, 2, seed=0)
masking.apply_masks_(clf, masking.MaskConfig())
groups, _ = train._param_groups(clf, train.TrainConfig())
opt = torch.optim.AdamW(groups)
proc = psutil.Process()
base = peak = proc.memory_info().rss
done = False
def watch():
    global peak
    while not done:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.01)
t = threading.Thread(target=watch)
t.start()
clf.train()
ids, am = torch.randint(1000, 2000, (b, s)), torch.ones(b, s, dtype=torch.long)
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = clf(input_ids=ids, attention_mask=am).float().sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
done = True
t.join()
e = resources.estimate(clf, b, s)
print(json.dumps({"loaded_gb": base / 1e9, "growth_gb": (peak - base) / 1e9, "estimate_gb": e.total / 1e9,
                  "estimate_no_margin_gb": (e.trainable + e.masks + e.activations) / 1e9,
                  "copies_gb": 2 / 5 * e.trainable / 1e9}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["minilm:32x128", "minilm:8x384", "bert-base:32x128", "bert-base:8x384"])
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "memory_estimate"))
    a = ap.parse_args()
    rows = []
    for shape in a.shapes:
        model, bs = shape.split(":")
        b, s = bs.split("x")
        out = subprocess.run([sys.executable, "-c", CHILD, model, b, s], capture_output=True, text=True, check=True)
        rows.append({"model": model, "batch": int(b), "seq_len": int(s), **json.loads(out.stdout.strip().splitlines()[-1])})
    lines = [
        "| model | batch x tokens | loaded model GB | measured growth GB (+ best/checkpoint copies) | estimate GB (no margin) | "
        "estimate GB | estimate / measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        need = r["growth_gb"] + r["copies_gb"]
        lines.append(
            f"| {r['model']} | {r['batch']} x {r['seq_len']} | {r['loaded_gb']:.2f} | {r['growth_gb']:.2f} (+{r['copies_gb']:.2f}) "
            f"| {r['estimate_no_margin_gb']:.2f} | {r['estimate_gb']:.2f} | {r['estimate_gb'] / need:.2f}x |"
        )
    write(
        a.results,
        "Memory estimate before training against measured peak (CPU, bf16 autocast, 3 mask-learning steps)",
        rows,
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
