"""A grid of runs (mode x bits x seed) in the layout of Wang 2020, Table 1: one command, resumable.

Every cell is an ordinary `compress run` artifact under OUT/cells/<mode>-<bits>bit-seed<k>/; a cell
whose artifact is complete (manifest.json verifies) is not run again, so an interrupted sweep resumes
where it stopped. Dense fine-tuning does not depend on the bit width: a `weights` cell below 32 bits
reuses its seed's 32-bit fine-tuning (`init_from`) and only quantizes and exports.

Outputs, each written atomically: sweep.json (every cell and the mean/SD per mode and bits),
table.md (mean +- SD over seeds, modes as rows, bits as columns, majority-class baseline) and
plot.png (metric vs bits, one line per mode, the majority baseline dashed).

Cells are independent: `parallel="ray"` runs them as Ray tasks (`pip install -e ".[ray]"`; a
cluster is joined via RAY_ADDRESS), the default runs them one after another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from compress import manifest as mf
from compress import quantize, staging
from compress.configs import RunConfig
from compress.errors import ArtifactError, CompressError

log = logging.getLogger(__name__)
MODES = ("weights", "structure")
PARALLEL = ("serial", "ray")


class SweepError(CompressError, ValueError):
    """A sweep that cannot run as configured."""


@dataclass(frozen=True)
class SweepConfig:
    run: RunConfig  # model, task, data and training options shared by every cell
    bits: tuple[int, ...] = (32, 8, 4, 2, 1)
    modes: tuple[str, ...] = MODES
    seeds: int = 3
    out: str = "runs/sweep"
    parallel: str = "serial"
    cpus_per_cell: int = 2  # Ray: CPUs reserved per cell (and torch / ORT threads)

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise SweepError(f"modes {bad or '(none)'}: use a comma-separated subset of {','.join(MODES)}")
        for b in self.bits:
            quantize.QuantConfig(bits=b)  # raises with the allowed values
        if self.seeds < 1:
            raise SweepError(f"seeds={self.seeds}: run at least 1")
        if self.parallel not in PARALLEL:
            raise SweepError(f"parallel '{self.parallel}' is not one of {PARALLEL}")


@dataclass(frozen=True, order=True)
class Cell:
    mode: str
    bits: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.bits}bit-seed{self.seed}"


def cells(cfg: SweepConfig) -> list[Cell]:
    """Every cell, seed by seed (a complete table for one seed comes first); a weights cell below
    32 bits comes after the 32-bit one it quantizes."""
    modes = [m for m in MODES if m in cfg.modes]  # weights first: its PTQ cells need the seed's fine-tuning
    seeds = seeds_of(cfg)
    out = [Cell(m, b, s) for s in seeds for m in modes for b in sorted(set(cfg.bits), reverse=True)]
    if "weights" in cfg.modes and 32 not in cfg.bits and any(b < 32 for b in cfg.bits):
        out = [Cell("weights", 32, s) for s in seeds] + out  # the fine-tuning the PTQ cells start from
    return out


def seeds_of(cfg: SweepConfig) -> range:
    """The training seeds: --seed, --seed + 1, ... (a cell's directory names its seed, so sweeps over
    disjoint seed ranges can share one OUT and a later sweep over the union collects them)."""
    return range(cfg.run.train.seed, cfg.run.train.seed + cfg.seeds)


def cell_dir(cfg: SweepConfig, cell: Cell) -> Path:
    return Path(cfg.out) / "cells" / cell.name


def cell_config(cfg: SweepConfig, cell: Cell):
    base = cfg.run
    init_from = None
    if cell.mode == "weights" and cell.bits < 32:
        init_from = str(cell_dir(cfg, Cell("weights", 32, cell.seed)))
    return dataclasses.replace(
        base,
        out=str(cell_dir(cfg, cell)),
        overwrite=True,
        bench=False,
        init_from=init_from,
        quant=quantize.default_config(cell.bits) if cell.bits <= 8 else quantize.QuantConfig(bits=cell.bits),
        train=dataclasses.replace(base.train, mode=cell.mode, seed=cell.seed),
        # a mask learns from the teacher and for the speed asked; dense fine-tuning (the comparison column) neither
        distill=base.distill if cell.mode == "structure" else None,
        speedup=base.speedup if cell.mode == "structure" else None,
    )


# Settings that may differ between a finished cell and the sweep that collects it: where it trained
# (GPU cells collected on a CPU machine), its seed and mode (its name fixes them), and what its mode ignores.
_NOT_COMPARED = {"device", "seed", "mode"}
_IGNORED_BY = {"weights": {"mask_lr", "head_lr", "head_warmup_steps"}, "structure": {"lr"}}


def _differences(cfg: SweepConfig, cell: Cell, manifest: mf.ArtifactManifest) -> list[str]:
    """Mask, training and quantization settings in which a finished cell differs from this sweep."""
    want = cell_config(cfg, cell)
    sections = ["train", "quant"] + (["mask"] if cell.mode == "structure" else [])
    skip = _NOT_COMPARED | _IGNORED_BY[cell.mode]
    out = []
    if want.speedup is not None:  # the kept fractions are what the speed asked for resolved to on the machine that trained
        skip = skip | {"ffn_keep", "heads_keep", "layers"}
        if (asked := manifest.speed.asked if manifest.speed else None) != want.speedup:
            out.append(f"speedup {asked!r} (sweep: {want.speedup!r})")
    if manifest.config.distill != want.distill:
        out.append(f"distill {manifest.config.distill!r} (sweep: {want.distill!r})")
    for section in sections:
        wanted, have = dataclasses.asdict(getattr(want, section)), dataclasses.asdict(getattr(manifest.config, section))
        out += [f"{section}.{k} {have[k]!r} (sweep: {v!r})" for k, v in wanted.items() if k not in skip and have[k] != v]
    return out


def done(cfg: SweepConfig, cell: Cell) -> mf.ArtifactManifest | None:
    """The cell's manifest if its artifact is complete, else None; a cell made with other settings is an error."""
    d = cell_dir(cfg, cell)
    if not (d / mf.FILE).is_file():
        return None
    try:
        manifest = mf.read(d, mf.ArtifactManifest)
    except ArtifactError as e:  # artifacts are published whole, so this is damage or an edit, not an interrupted write
        raise SweepError(f"cell {cell.name}: {str(e).splitlines()[0]}; delete {d} to train it again") from None
    if diff := _differences(cfg, cell, manifest):
        raise SweepError(
            f"{d} was made with other settings ({'; '.join(diff[:3])}): pass the settings it was made with, another --out, or delete {d}"
        )
    return manifest


def record(cell: Cell, m: mf.ArtifactManifest) -> dict:
    return {
        **dataclasses.asdict(cell),
        "dir": cell.name,
        "metrics": m.metrics.onnx,
        "torch_metrics": m.metrics.torch,
        "density": m.density,
        "onnx_bytes": m.sizes.onnx_total,
        "seconds": m.seconds,
        "majority": m.metrics.majority,
        "validation_passed": m.passed,
        "speedup": m.speed.reached if m.speed else None,  # --speedup: measured against the unpruned graph
    }


def run_cell(cfg: SweepConfig, cell: Cell, progress: bool = False) -> dict:
    from compress.exporters.verify import AccuracyDriftError
    from compress.run import run

    if (m := done(cfg, cell)) is None:
        try:
            run(cell_config(cfg, cell), command=f"compress sweep (cell {cell.name})", progress=progress)
        except AccuracyDriftError as e:  # the artifact is kept and its metrics count; the sweep goes on
            log.warning("%s: %s", cell.name, e)
        m = mf.read(cell_dir(cfg, cell), mf.ArtifactManifest)
    return record(cell, m)


def _run_ray(cfg: SweepConfig, todo: list[Cell], bar) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise SweepError("parallel 'ray' needs Ray: pip install -e \".[ray]\" (or run serially)") from None
    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, log_to_driver=False)
    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, threads=cfg.cpus_per_cell))
    remote = ray.remote(num_cpus=cfg.cpus_per_cell)(run_cell)
    out = []
    # PTQ cells wait for their fine-tuning: two waves
    for wave in ([c for c in todo if c.mode != "weights" or c.bits >= 32], [c for c in todo if c.mode == "weights" and c.bits < 32]):
        pending = [remote.remote(run_cfg, c) for c in wave]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            out.append(ray.get(ready[0]))
            bar.update()
    return out


def summarize(records: list[dict]) -> list[dict]:
    """Mean and SD over seeds of every metric, per (mode, bits), over the cells that passed their accuracy guard (a cell whose
    ONNX graph trails PyTorch is a failed export, not a sample of the method); ``failed`` counts the others."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["mode"], r["bits"]), []).append(r)
    out = []
    for (mode, bits), rs in sorted(groups.items(), key=lambda kv: (MODES.index(kv[0][0]), -kv[0][1])):
        ok = [r for r in rs if r.get("validation_passed") is not False]
        out.append(
            {
                "mode": mode,
                "bits": bits,
                "n": len(ok),
                "failed": len(rs) - len(ok),
                "metrics": _mean_sd(ok, "metrics"),
                "torch_metrics": _mean_sd(ok, "torch_metrics"),
                "density": statistics.fmean(r["density"] for r in ok) if ok else None,
                "onnx_mb": statistics.fmean(r["onnx_bytes"] for r in ok) / 1e6 if ok else None,
            }
        )
    return out


def _mean_sd(records: list[dict], key: str) -> dict[str, dict[str, float]]:
    if not records:
        return {}
    names = records[0][key].keys()
    return {
        k: {
            "mean": statistics.fmean(r[key][k] for r in records),
            "sd": statistics.stdev(r[key][k] for r in records) if len(records) > 1 else 0.0,
        }
        for k in names
    }


SOURCES = {"metrics": "through ONNX Runtime (the exported model.onnx)", "torch_metrics": "in PyTorch (the paper's protocol)"}
ROW_NAMES = {
    "weights": "fine-tune weights (dense; post-training quantized below 32 bits)",
    "structure": "fine-tune structure (mask on frozen quantized weights)",
}


def table(data: dict, source: str = "metrics") -> str:
    """Markdown: modes as rows, bits as columns, mean +- SD of the task metric over seeds, as measured
    through ONNX Runtime (source="metrics") or in PyTorch ("torch_metrics")."""
    metric, summary = data["metric"], data["summary"]
    bits = sorted({s["bits"] for s in summary}, reverse=True)
    cells_ = {(s["mode"], s["bits"]): s for s in summary}
    lines = [
        f"{data['model']} on {data['task']}: dev {metric} {SOURCES[source]}, mean ± SD over {data['seeds']} seeds",
        "",
        "| | " + " | ".join(f"{b}-bit" if b <= 8 else "fp32" for b in bits) + " |",
        "|---" * (len(bits) + 1) + "|",
    ]
    for mode in [m for m in MODES if any(k[0] == m for k in cells_)]:
        row = []
        for b in bits:
            s = cells_.get((mode, b))
            row.append("" if s is None else _cell_text(s, source, metric))
        lines.append(f"| {ROW_NAMES[mode]} | " + " | ".join(row) + " |")
    lines.append(f"| majority class | {data['majority']:.3f} |" + " |" * (len(bits) - 1))
    if any(s.get("failed") for s in summary):
        lines += [
            "",
            "Cells that failed their accuracy guard (ONNX Runtime's dev metric trailing PyTorch's by more than "
            "--max-metric-drop) are left out of mean and SD, and counted in the cell.",
        ]
    return "\n".join(lines) + "\n"


def _cell_text(s: dict, source: str, metric: str) -> str:
    failed = s.get("failed", 0)
    if not s["n"]:
        return f"all {failed} failed their guard"
    text = f"{s[source][metric]['mean']:.3f} ± {s[source][metric]['sd']:.3f}"
    return text + (f" ({s['n']} seeds; {failed} failed its guard)" if failed else "")


def tables(data: dict) -> str:
    """table.md: the table through ONNX Runtime, then the same cells in PyTorch."""
    return table(data) + "\n" + table(data, "torch_metrics")


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = data["metric"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in MODES:
        rows = sorted((s for s in data["summary"] if s["mode"] == mode and s.get("n", 1)), key=lambda s: s["bits"])
        if rows:
            xs = [min(s["bits"], 16) for s in rows]  # fp32 drawn at 16 on the log axis
            ax.errorbar(
                xs,
                [s["metrics"][metric]["mean"] for s in rows],
                yerr=[s["metrics"][metric]["sd"] for s in rows],
                marker="o",
                capsize=3,
                label=ROW_NAMES[mode].split(" (")[0],
            )
    ax.axhline(data["majority"], color="grey", linestyle="--", label="majority class")
    ticks = sorted({min(s["bits"], 16) for s in data["summary"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [("fp32" if t == 16 else str(t)) for t in ticks])
    ax.set_xlabel("bits of the frozen weights")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{data['model']} / {data['task']}, {data['seeds']} seeds")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_outputs(cfg: SweepConfig, records: list[dict]) -> dict:
    from compress import tasks

    task = tasks.get_task(cfg.run.task)
    records = sorted(records, key=lambda r: (MODES.index(r["mode"]), -r["bits"], r["seed"]))
    data = {
        "kind": "sweep",
        "model": cfg.run.model,
        "task": task.name,
        "metric": task.metric,
        "seeds": cfg.seeds,
        "majority": records[0]["majority"][task.metric],
        "cells": records,
        "summary": summarize(records),
        "config": {"bits": list(cfg.bits), "modes": list(cfg.modes), "seeds": cfg.seeds, "run": _jsonable(cfg)},
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    staging.atomic_write(out / "sweep.json", lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))
    staging.atomic_write(out / "table.md", lambda p: p.write_text(tables(data)))
    staging.atomic_write(out / "plot.png", lambda p: plot(data, p))
    return data


def _jsonable(cfg: SweepConfig) -> dict:
    """The shared run config, with the quantization each bit width's cells use instead of the base's."""
    d = dataclasses.asdict(cfg.run)
    for k in ("out", "overwrite", "bench", "init_from", "quant"):
        d.pop(k, None)
    d["quant_by_bits"] = {str(b): dataclasses.asdict(cell_config(cfg, Cell("structure", b, 0)).quant) for b in cfg.bits}
    return d


def sweep(cfg: SweepConfig, progress: bool = False) -> dict:
    from tqdm.auto import tqdm

    all_cells = cells(cfg)
    finished = {c: m for c in all_cells if (m := done(cfg, c)) is not None}
    records = [record(c, m) for c, m in finished.items()]
    todo = [c for c in all_cells if c not in finished]
    log.info("sweep: %d cells, %d already done", len(all_cells), len(finished))
    with tqdm(total=len(all_cells), initial=len(finished), desc="sweep", unit="cell", disable=not progress) as bar:
        if cfg.parallel == "ray" and todo:
            records += _run_ray(cfg, todo, bar)
        else:
            for c in todo:
                bar.set_postfix_str(c.name)
                records.append(run_cell(cfg, c, progress=progress))
                bar.update()
                write_outputs(cfg, records)  # partial results are readable while the sweep runs
    return write_outputs(cfg, records)
