"""The command line's shared options and the helpers its commands use: options into configs, the command as typed, the summary."""

from __future__ import annotations

import shlex

import click

BITS = ("1", "2", "4", "8", "16", "32")
PREFOLD = click.option(
    "--prefold/--no-prefold",
    default=None,
    help="int8 kernel: store the int8 weights as ONNX Runtime runs them, so nothing is folded when a session loads (no "
    "transient memory: ~1x ORT int8's peak instead of ~10x); 8 bits per linear weight on disk instead of the packed width [no].",
)
ACTIVATIONS = click.option(
    "--activations",
    type=click.Choice(["token", "tensor", "static", "none"]),
    default=None,
    help="Activation scales of the int8 and qdq kernels [static]: fixed at export from the calibration text's ranges (fewest "
    "operators; a sequence's prediction does not depend on its batch-mates or padding; values beyond the calibrated range are "
    "clipped); token (int8): one per token at run time (batch-independent too, never clips, slower); tensor (int8): one per "
    "padded batch (ONNX Runtime's fused DynamicQuantizeMatMul/QAttention, batch-dependent); none (qdq): float activations, "
    "weight-only.",
)
DEVICE = click.option(
    "--device", type=str, default=None, help="Training device: auto (a CUDA GPU if torch sees one), cpu, cuda, cuda:N [auto]."
)
LEARNING = (  # how the mask (and the head, or the weights) are learned: shared by run and sweep
    click.option("--mask-lr", type=float, default=None, help="Learning rate of the mask scores."),
    click.option("--head-lr", type=float, default=None, help="Learning rate of the classifier (and pooler) in structure mode."),
    click.option("--lr", type=float, default=None, help="Learning rate in weights mode."),
    click.option(
        "--score-init", type=(float, float), default=None, help="Scores ~ Uniform(LOW, HIGH) [0.01 0.61: nothing pruned at the start]."
    ),
    click.option("--threshold", type=float, default=None, help="Mask = score > threshold [0.01]."),
    click.option(
        "--sparsity",
        type=click.Choice(["unstructured", "2:4"]),
        default="unstructured",
        show_default=True,
        help="2:4: keep the best 2 of every 4 inputs (NVIDIA sparse tensor cores).",
    ),
    click.option("--select", type=click.Choice(["best", "last"]), default=None, help="Keep the best dev epoch or the last."),
    click.option(
        "--ffn-keep",
        type=float,
        default=None,
        help="Structured pruning: keep this fraction of every FFN's neurons (e.g. 0.6); the rest leave the graph (faster).",
    ),
    click.option(
        "--heads-keep",
        type=float,
        default=None,
        help="Structured pruning: keep this fraction of every layer's attention heads (e.g. 0.75); the rest leave the graph.",
    ),
    click.option(
        "--layers",
        type=int,
        default=None,
        help="Structured pruning: keep only the first this many transformer layers; the layers above leave the graph whole.",
    ),
    click.option(
        "--speedup",
        type=float,
        default=None,
        help="Run this many times as fast as the unpruned graph at batch 1 (e.g. 2): the layers, heads and FFN neurons to remove are "
        "chosen from ONNX Runtime's latency on this machine (measured once, cached); the speed reached is measured and recorded.",
    ),
    click.option(
        "--teacher",
        type=click.Path(file_okay=False),
        default=None,
        help="Distil from this dense fine-tuned model of the task (a `compress run --mode weights` artifact).",
    ),
    click.option(
        "--distill-alpha", type=float, default=None, help="Weight of the teacher's soft targets; the task loss gets 1 - it [0.9]."
    ),
    click.option("--distill-temperature", type=float, default=None, help="Softmax temperature of the soft targets [2]."),
    click.option(
        "--distill-hidden",
        type=float,
        default=None,
        help="Weight of the layerwise hidden-state loss against the teacher [0: logits only, the teacher run once per example].",
    ),
)


def learning_options(f):
    for option in reversed(LEARNING):
        f = option(f)
    return f


def mask_config(o: dict):
    from compress.configs import MaskConfig

    low, high = o["score_init"] or (None, None)
    return pick(
        MaskConfig,
        threshold=o["threshold"],
        nm=(2, 4) if o["sparsity"] == "2:4" else None,
        init_low=low,
        init_high=high,
        ffn_keep=o["ffn_keep"],
        heads_keep=o["heads_keep"],
        layers=o["layers"],
    )


def distill_config(o: dict):
    """DistillConfig from --teacher and its options (None without a teacher)."""
    from compress.configs import DistillConfig

    extra = [k for k in ("distill_alpha", "distill_temperature", "distill_hidden") if o[k] is not None]
    if o["teacher"] is None:
        if extra:
            raise click.UsageError(f"--{extra[0].replace('_', '-')} needs --teacher DIR (the dense fine-tuned model to distil from)")
        return None
    return pick(
        DistillConfig, teacher=o["teacher"], alpha=o["distill_alpha"], temperature=o["distill_temperature"], hidden=o["distill_hidden"]
    )


def train_config(o: dict, **kw):
    """TrainConfig from the options run and sweep share, plus the command's own (kw)."""
    from compress.configs import TrainConfig

    return pick(
        TrainConfig,
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        max_length=o["max_length"],
        mask_lr=o["mask_lr"],
        head_lr=o["head_lr"],
        lr=o["lr"],
        select=o["select"],
        seed=o["seed"],
        max_train_examples=o["max_train_examples"],
        max_eval_examples=o["max_eval_examples"],
        device=o["device"],
        **kw,
    )


# the packages only the command line needs (the reader-only install has none of them): a command that imports one says
# which extra brings it instead of a traceback
def sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: temporary outputs are removed and training saves a checkpoint."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)


def run_config(o: dict):
    """`compress run`'s options as a RunConfig (options left unset take the configs' defaults)."""
    from compress import quantize
    from compress.configs import CheckpointConfig, ExportConfig, RunConfig

    bits = int(o["bits"])
    quant = quantize.default_config(
        bits, o["group_size"], o["symmetric"], o["quantizer"], **({"calibration": o["calibration"]} if o["calibration"] else {})
    )
    exp = pick(
        ExportConfig,
        kernel=o["kernel"],
        max_metric_drop=o["max_metric_drop"],
        max_logit_diff=o["max_logit_diff"],
        activations=o["activations"],
        prefold=o["prefold"],
    )
    model_tag = (o["backbone"] or o["model"]).rstrip("/").split("/")[-1]
    out = o["out"] or (f"runs/{model_tag}-{o['task']}" if o["backbone"] else f"runs/{model_tag}-{o['task']}-{o['mode']}-{bits}bit")
    return RunConfig(
        model=o["model"],
        task=o["task"],
        out=out,
        data_dir=o["data_dir"],
        overwrite=o["overwrite"],
        pooling=o["pooling"],
        quant=quant,
        mask=mask_config(o),
        train=train_config(o, mode=o["mode"], bf16=False if o["no_bf16"] else None),
        export=exp,
        bench=not o["no_bench"],
        threads=o["threads"],
        init_from=o["init_from"],
        backbone=o["backbone"],
        checkpoint=pick(CheckpointConfig, every=o["checkpoint_every"], resume=o["resume"]),
        distill=distill_config(o),
        speedup=o["speedup"],
    )


def refuse_with_backbone(*options: str) -> None:
    """With --backbone the model and its quantization are the backbone's: giving them again is an error."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params if p.opts[0] in options and ctx.get_parameter_source(p.name) != ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(
            f"{', '.join(given)} cannot be combined with --backbone: the model and its quantization are the backbone's "
            "(`compress quantize` makes another), and it learns a mask (--mode structure)"
        )


def pick(cls, **kw):
    """cls(**kw) without the options the user left unset (their defaults live in the config class)."""
    return cls(**{k: v for k, v in kw.items() if v is not None})


def int_list(value: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers, e.g. 32,8,4,2,1", param_hint=option) from None


def write_json(path, data) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    import json

    from compress.staging import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def command_line() -> str:
    """The command as the user gave it (explicit options only), rebuilt from click's parsed parameters."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    parts = ctx.command_path.split()
    for p in ctx.command.params:
        value = ctx.params[p.name]
        if ctx.get_parameter_source(p.name) in (ParameterSource.DEFAULT, None) or value in (None, False, ()):
            continue
        if isinstance(p, click.Argument):
            parts += map(str, value if isinstance(value, tuple) else (value,))
        elif p.is_flag:
            parts.append(p.opts[-1])
        else:
            parts += [p.opts[-1], *map(str, value if isinstance(value, tuple) else (value,))]
    return shlex.join(parts)


def print_summary(path, manifest) -> None:
    from compress.report import summary_rows

    rows = summary_rows(manifest)
    width = max(len(k) for k, _ in rows)
    click.echo(f"\n{path}")
    for k, v in rows:
        click.echo(f"  {k.ljust(width)}  {v}")
