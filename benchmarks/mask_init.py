"""How much does the mask's starting point damage the pretrained encoder, before any training?

    python benchmarks/mask_init.py --data-dir ../shared/data/glue [--model minilm] [--bits 32 8 4 2]

For each bit width (the quantization `compress run --bits B` uses) and each score initialisation,
the frozen weights are quantized, masks are applied with that MaskConfig (masking.apply_masks_),
and the mean-pooled encoder output on the first 128 dev pairs is compared with the original fp32
encoder's: mean cosine similarity (1 = unchanged) and the fraction of weights the mask prunes.
Zhao et al. 2020's Uniform(-0.02, 0.58) with threshold 0.01 prunes a random 5% at the start; the
default, Uniform(0.01, 0.61), prunes nothing. CPU only, about a minute.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from _results import write  # benchmarks/ is on sys.path when a script here runs

INITS = {
    "default: Uniform(0.01, 0.61), nothing pruned": {},
    "Zhao et al.: Uniform(-0.02, 0.58), 5% pruned": {"init_low": -0.02, "init_high": 0.58},
}


def pooled(model, enc) -> torch.Tensor:
    with torch.no_grad():
        h = model.encoder(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def main():
    from compress import backbone, calibration, masking, models, quantize, tasks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 8, 4, 2])
    ap.add_argument("--examples", type=int, default=128)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "mask_init"))
    args = ap.parse_args()

    task = tasks.get_task("mrpc")
    splits = tasks.load_task(task, args.data_dir)
    clf, tok, _ = models.build_classifier(args.model, task.num_labels)
    dev = splits["dev"].subset(args.examples)
    enc = dict(tok(dev.text_a, dev.text_b, truncation=True, max_length=128, padding=True, return_tensors="pt"))
    reference = pooled(clf, enc)
    calib = calibration.tokens(tok, splits["train"], 128, 128)
    rows = []
    for bits in args.bits:
        quantized = copy.deepcopy(clf)
        if bits <= 8:
            backbone.quantize_(quantized, quantize.default_config(bits), calibration.batches(calib))
        for name, kw in [("no mask", None), *INITS.items()]:
            model = copy.deepcopy(quantized)
            if kw is not None:
                torch.manual_seed(0)
                masking.apply_masks_(model, masking.MaskConfig(**kw))
            cos = torch.nn.functional.cosine_similarity(pooled(model, enc), reference).mean().item()
            density = masking.densities(model)[1]
            rows.append({"bits": bits, "init": name, "cosine": cos, "pruned": 1 - density})
            print(f"{bits:>2}-bit  {name:<48} cosine {cos:.4f}  pruned {1 - density:.3f}", flush=True)
    table = "| weights | mask at the start | cosine to fp32 | pruned |\n|---|---|---|---|\n" + "\n".join(
        f"| {'fp32' if r['bits'] > 8 else str(r['bits']) + '-bit'} | {r['init']} | {r['cosine']:.4f} | {r['pruned']:.3f} |" for r in rows
    )
    write(args.results, f"Mask initialisation: damage to the pretrained {args.model} before training", rows, table)


if __name__ == "__main__":
    main()
