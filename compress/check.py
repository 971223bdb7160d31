"""Accuracy regression check: a report's metrics against a committed baseline.

Reports and baselines are read alike, from any of:
  an artifact directory or its manifest.json  -> "onnx.f1", "torch.f1", "onnx.accuracy", ... and, made with --speedup,
                                                 "speedup" (the batch-1 speed reached over the unpruned graph's)
  a pack directory or its manifest.json       -> "mrpc.onnx.f1", "sst2.onnx.accuracy", ... (every task)
  bench.json (`compress bench DIR --json F`)   -> the same keys, when it was run with --data-dir
  sweep.json (`compress sweep`)                -> "structure.4bit.f1", ... (means over seeds)
  a plain {"metrics": {name: value}} file
A directory (or its manifest.json) is verified first: every file's SHA-256.
Every metric here is higher-is-better (GLUE's); a metric regresses when it falls more than
`max_drop` below its baseline. A baseline metric missing from the report fails too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from compress.errors import CompressError


class CheckError(CompressError, ValueError):
    """A report or baseline that cannot be read."""


@dataclass(frozen=True)
class Row:
    name: str
    baseline: float
    current: float | None
    max_drop: float

    @property
    def diff(self) -> float | None:
        return None if self.current is None else self.current - self.baseline

    @property
    def ok(self) -> bool:
        return self.current is not None and self.current >= self.baseline - self.max_drop - 1e-12


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _number(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{str(v)[:20]!r} is not a number")
    return float(v)


def read_metrics(path: str | Path) -> dict[str, float]:
    """{metric name: value} from an artifact, manifest.json, bench.json, sweep.json or {"metrics": {...}}."""
    from compress import manifest as mf

    path = Path(path)
    if path.is_dir():
        path = path / mf.FILE
    try:
        if path.name == mf.FILE and path.is_file():
            data = mf.read(path.parent).to_dict()  # verified
        else:
            data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckError(f"{path} does not exist: pass an artifact or pack directory, manifest.json, bench.json or sweep.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckError(f"{path} is not valid JSON ({e}): pass the file `compress run/bench/sweep` wrote") from None
    except mf.ManifestError as e:
        raise CheckError(str(e)) from None
    except OSError as e:
        raise CheckError(f"{path} cannot be read ({e.strerror or type(e).__name__}): pass a readable report") from None
    try:
        return _extract(data, path)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise CheckError(
            f"{path} does not have the layout of {'a ' + kind if isinstance(kind, str) else 'a metrics'} file "
            f"({type(e).__name__}: {str(e)[:80]}): pass the file `compress run/bench/sweep/pack` wrote"
        ) from None


def _extract(data, path: Path) -> dict[str, float]:
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "sweep":
        return {f"{c['mode']}.{c['bits']}bit.{k}": _number(v["mean"]) for c in data["summary"] for k, v in c["metrics"].items()}
    if kind == "pack":
        return {f"{name}.onnx.{k}": v for name, t in data["tasks"].items() for k, v in _numbers(t["metrics"]).items()}
    if kind == "bench" and "runs" in data:  # `compress bench DIR --provider A --provider B ...`: PROVIDER.onnx.METRIC
        return {f"{r['provider']}.{k}": v for r in data["runs"] for k, v in _extract(r, path).items()}
    if kind == "bench" and "tasks" in data:  # `compress bench PACK --data-dir D --json F`
        return {
            f"{name}.onnx.{k}": v for name, t in data["tasks"].items() for k, v in _numbers(t.get("metrics", {}).get("onnx", {})).items()
        }
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if isinstance(metrics, dict) and ("onnx" in metrics or "torch" in metrics):  # manifest.json or bench.json
        out = {}
        for side in ("onnx", "torch"):
            out.update(_numbers(metrics.get(side) or {}, f"{side}."))
        if isinstance(speed := data.get("speed"), dict) and speed.get("reached") is not None:
            out["speedup"] = _number(speed["reached"])  # higher is better, like the metrics: gated alike
        return out
    if isinstance(metrics, dict):
        return _numbers(metrics)
    raise CheckError(f'{path} has no metrics: expected an artifact manifest, bench.json, sweep.json or {{"metrics": {{...}}}}')


def compare(report: dict[str, float], baseline: dict[str, float], max_drop: float = 0.01) -> list[Row]:
    if not baseline:
        raise CheckError("the baseline has no metrics to check against")
    return [Row(name, value, report.get(name), max_drop) for name, value in sorted(baseline.items())]


def render(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'metric'.ljust(width)}  baseline   current      diff  status"]
    for r in rows:
        cur = "missing" if r.current is None else f"{r.current:.4f}"
        diff = "" if r.diff is None else f"{r.diff:+.4f}"
        status = "ok" if r.ok else ("MISSING" if r.current is None else f"REGRESSED (> {r.max_drop} below)")
        lines.append(f"{r.name.ljust(width)}  {r.baseline:8.4f}  {cur:>8}  {diff:>8}  {status}")
    return "\n".join(lines)
