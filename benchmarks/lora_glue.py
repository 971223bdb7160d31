"""The alternative every reviewer asks about: per-task LoRA adapters on the same frozen 4-bit backbone.

Used by benchmarks/pack_glue.py (which writes the results); on its own:

    python benchmarks/lora_glue.py --backbone runs/pack_glue/backbone --task mrpc --data-dir ../shared/data/glue [--seed 0] [--epochs 3]

PEFT LoRA, rank 8 (alpha 16, dropout 0.1) on the same linears the masks cover (Q, K, V, attention
output, both FFN projections of every layer), the classifier trained densely, on the backbone's
dequantized 4-bit weights, frozen. The training loop is compress's own (AdamW, 10% warm-up then
linear decay, bf16 autocast, batch 32, the best dev epoch kept), only the trained parameters differ.
Reported: dev metric in PyTorch; the bytes a task costs (adapters and head in float16); and serving:
(a) unmerged, every linear runs two extra rank-8 matmuls (FLOPs counted, latency measured in ONNX
Runtime as fp32 graphs with and without the adapters); (b) merged, W + BA is a new weight per task that
must be quantized again: no shared backbone, each task a full model (its 4-bit dev metric measured).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"


def lora_model(backbone_dir: str, num_labels: int, seed: int, rank: int = 8):
    from peft import LoraConfig, get_peft_model

    from compress import backbone

    clf, tok, _, _ = backbone.load(backbone_dir).classifier(num_labels, seed=seed)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=TARGETS, modules_to_save=["classifier"])
    return get_peft_model(clf, cfg), tok


def train(
    backbone_dir: str,
    task_name: str,
    data_dir: str,
    seed: int = 0,
    epochs: int = 3,
    max_train: int | None = None,
    lr: float = 5e-4,
    head_lr: float = 1e-3,
    batch_size: int = 32,
    max_length: int = 128,
) -> dict:
    from compress import metrics, tasks
    from compress import train as tr

    task = tasks.get_task(task_name)
    splits = tasks.load_task(task, data_dir)
    train_split, dev = splits["train"].subset(max_train), splits["dev"]
    model, tok = lora_model(backbone_dir, task.num_labels, seed)
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    opt = torch.optim.AdamW([{"params": lora, "lr": lr, "weight_decay": 0.0}, {"params": head, "lr": head_lr, "weight_decay": 0.01}])
    steps = math.ceil(len(train_split) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, tr._lr_lambda(steps * epochs, int(0.1 * steps * epochs)))
    pad = tok.pad_token_id or 0
    enc, dev_enc = tr.encode(tok, train_split, max_length), tr.encode(tok, dev, max_length)
    y = tr.labels_tensor(task, train_split.labels)
    loss_fn = torch.nn.MSELoss() if task.is_regression else torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    best, best_state, history, t0 = -math.inf, None, [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train_split))
        for b in range(steps):
            idx = order[b * batch_size : (b + 1) * batch_size]
            with tr._autocast(torch.device("cpu"), True):
                out = model(**tr.collate(enc, idx, pad)).float()
            target = y[torch.from_numpy(idx)]
            loss = loss_fn(out.squeeze(-1), target) if task.is_regression else loss_fn(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        dev_metrics = metrics.compute(task, tr.predict(model, dev_enc, pad), dev.labels)
        history.append({"epoch": epoch, "dev": dev_metrics})
        print(f"  lora {task.name} seed {seed} epoch {epoch}: {dev_metrics}", flush=True)
        if dev_metrics[task.metric] > best:
            best = dev_metrics[task.metric]
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, v in best_state.items():
            params[n].copy_(v)
    adapters = sum(p.numel() for p in lora)
    head_n = sum(p.numel() for p in head)
    return {
        "task": task.name,
        "seed": seed,
        "epochs": epochs,
        "metric": task.metric,
        "history": history,
        "dev": metrics.compute(task, tr.predict(model, dev_enc, pad), dev.labels),
        "adapter_params": adapters,
        "head_params": head_n,
        "bytes_fp16": 2 * (adapters + head_n),
        "seconds": time.perf_counter() - t0,
        "merged_4bit": merged_requantized(model, backbone_dir, task, dev_enc, dev, pad),
    }


def merged_requantized(model, backbone_dir: str, task, dev_enc, dev, pad: int) -> dict:
    """Merge W + BA into each weight and quantize it again as the backbone was (4-bit GPTQ on the general text):
    a task-specific full model, no longer sharing the backbone. Its dev metric in PyTorch."""
    from compress import backbone, calibration, metrics
    from compress import train as tr

    bb = backbone.load(backbone_dir)
    merged = model.merge_and_unload()
    cfg = bb.manifest.quant
    tok_calib = backbone.calibration_tokens(_tokenizer(backbone_dir), cfg, 128)
    backbone.quantize_(merged, cfg, calibration.batches(tok_calib))
    return {"metrics": metrics.compute(task, tr.predict(merged, dev_enc, pad), dev.labels), "quant": cfg.method + "/" + cfg.calibration}


def _tokenizer(backbone_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(backbone_dir)


def serving_overhead(backbone_dir: str, rounds: int = 5, seq_len: int = 128) -> dict:
    """Unmerged adapters at run time: FLOPs of the rank-8 matmuls against the linears', and ONNX Runtime latency
    (batch 1 x seq_len, fp32 graphs, medians of round-robin rounds) with and without them."""
    import tempfile

    from compress.runtimes import bench
    from compress.runtimes.session import open_session

    model, _ = lora_model(backbone_dir, 2, seed=0)
    with torch.no_grad():  # non-zero B, as after training (PEFT starts B at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    model.eval()
    linear_flops = adapter_flops = 0
    for _, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            w = mod.base_layer.weight
            linear_flops += w.numel()
            adapter_flops += mod.lora_A["default"].weight.numel() + mod.lora_B["default"].weight.numel()
    with tempfile.TemporaryDirectory() as tmp:
        with_lora = _export(model.base_model.model, Path(tmp) / "lora.onnx")
        base, _ = lora_model(backbone_dir, 2, seed=0)
        without = _export(base.unload(), Path(tmp) / "base.onnx")
        sessions = {"with adapters": open_session(with_lora), "without": open_session(without)}
        times = {k: [] for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                times[k].append(bench.latency(s, batch=1, seq_len=seq_len, runs=20).median_ms)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "adapter_flops_per_linear_flops": adapter_flops / linear_flops,
        "b1_ms": med,
        "latency_ratio": med["with adapters"] / med["without"],
        "seq_len": seq_len,
    }


def _export(model, path: Path) -> Path:
    import warnings

    from compress.exporters.onnx_graph import input_names

    names = input_names(model)
    dummy = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            dummy,
            str(path),
            input_names=names,
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
        )
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-train-examples", type=int, default=None)
    args = ap.parse_args()
    print(json.dumps(train(args.backbone, args.task, args.data_dir, args.seed, args.epochs, args.max_train_examples), indent=1))


if __name__ == "__main__":
    main()
