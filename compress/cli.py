"""The `compress` command line. Each command parses options into configs and calls one function."""
from __future__ import annotations

import logging
import shlex
import sys

import click

BITS = ("1", "2", "4", "8", "16", "32")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean bad input or a failed check: one line, non-zero exit, no traceback."""
    from compress.artifact import ArtifactError
    from compress.exporters.verify import ExportValidationError
    from compress.exporters.weights import WeightMatchError
    from compress.models import ModelLoadError
    from compress.quantize import QuantConfigError
    from compress.tasks import TaskDataError

    return (ArtifactError, ExportValidationError, WeightMatchError, ModelLoadError, QuantConfigError, TaskDataError, ValueError)


def _fail(e: BaseException):
    raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool):
    """Fine-tune encoders by learning binary masks over low-bit frozen weights; export sparse quantized ONNX."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "onnxruntime", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@main.command()
@click.option("--model", default="minilm", show_default=True, help="Alias (minilm, bert-base, roberta-base, ...), hub id or local directory.")
@click.option("--task", default="mrpc", show_default=True, help="GLUE task: cola sst2 mrpc stsb qqp mnli qnli rte wnli.")
@click.option("--bits", type=click.Choice(BITS), default="4", show_default=True, help="Bits of the frozen weights (16/32: none).")
@click.option("--group-size", type=int, default=None, help="Scale per group of N inputs (default: per output channel).")
@click.option("--mode", type=click.Choice(["structure", "weights"]), default="structure", show_default=True,
              help="structure: learn a mask; weights: dense fine-tuning (then post-training quantization).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="GLUE_DIR", help="GLUE-layout directory (env GLUE_DIR); else `datasets` online.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Artifact directory [runs/MODEL-TASK-MODE-BITSbit].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--epochs", type=int, default=None, help="Training epochs.")
@click.option("--batch-size", type=int, default=None)
@click.option("--max-length", type=int, default=None, help="Tokens per example.")
@click.option("--mask-lr", type=float, default=None, help="Learning rate of the mask scores.")
@click.option("--head-lr", type=float, default=None, help="Learning rate of the classifier (and pooler) in structure mode.")
@click.option("--lr", type=float, default=None, help="Learning rate in weights mode.")
@click.option("--score-init", type=(float, float), default=None, help="Scores ~ Uniform(LOW, HIGH).")
@click.option("--threshold", type=float, default=None, help="Mask = score > threshold.")
@click.option("--select", type=click.Choice(["best", "last"]), default=None, help="Keep the best dev epoch or the last.")
@click.option("--seed", type=int, default=None)
@click.option("--pooling", type=click.Choice(["mean", "cls", "pooler"]), default=None, help="Override the checkpoint's pooling.")
@click.option("--kernel", type=click.Choice(["int8", "float"]), default="int8", show_default=True,
              help="int8: integer matmuls (fast); float: weights dequantized at load (exact).")
@click.option("--max-metric-drop", type=float, default=None, help="Fail if ONNX Runtime's dev metric trails PyTorch's by more.")
@click.option("--max-train-examples", type=int, default=None, help="Use only the first N training examples.")
@click.option("--max-eval-examples", type=int, default=None, help="Use only the first N dev examples.")
@click.option("--no-bench", is_flag=True, help="Skip the latency benchmark.")
@click.option("--no-bf16", is_flag=True, help="Train in fp32 instead of bf16 autocast.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime.")
def run(**o):
    """Quantize, learn the task mask, export ONNX and validate it: one artifact directory."""
    import dataclasses

    from compress import masking, quantize, train
    from compress.exporters.export import ExportConfig
    from compress.pipeline import RunConfig, run as run_pipeline

    def pick(cls, **kw):
        return cls(**{k: v for k, v in kw.items() if v is not None})

    try:
        bits = int(o["bits"])
        quant = pick(quantize.QuantConfig, bits=bits, group_size=o["group_size"])
        mask = pick(masking.MaskConfig, threshold=o["threshold"],
                    init_low=o["score_init"][0] if o["score_init"] else None, init_high=o["score_init"][1] if o["score_init"] else None)
        tr = pick(train.TrainConfig, mode=o["mode"], epochs=o["epochs"], batch_size=o["batch_size"], max_length=o["max_length"],
                  mask_lr=o["mask_lr"], head_lr=o["head_lr"], lr=o["lr"], select=o["select"], seed=o["seed"],
                  max_train_examples=o["max_train_examples"], max_eval_examples=o["max_eval_examples"],
                  bf16=False if o["no_bf16"] else None)
        exp = pick(ExportConfig, kernel=o["kernel"], max_metric_drop=o["max_metric_drop"])
        model_tag = o["model"].rstrip("/").split("/")[-1]
        out = o["out"] or f"runs/{model_tag}-{o['task']}-{o['mode']}-{bits}bit"
        cfg = RunConfig(model=o["model"], task=o["task"], out=out, data_dir=o["data_dir"], overwrite=o["overwrite"],
                        pooling=o["pooling"], quant=quant, mask=mask, train=tr, export=exp, bench=not o["no_bench"], threads=o["threads"])
        path, manifest = run_pipeline(cfg, command=shlex.join(["compress", *sys.argv[1:]]), progress=True)
    except _user_errors() as e:
        _fail(e)
    _print_summary(path, manifest)


def _print_summary(path, manifest) -> None:
    from compress.report import summary_rows

    rows = summary_rows(manifest)
    width = max(len(k) for k, _ in rows)
    click.echo(f"\n{path}")
    for k, v in rows:
        click.echo(f"  {k.ljust(width)}  {v}")


if __name__ == "__main__":
    main()
