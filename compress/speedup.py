"""`--speedup S`: the heads and FFN neurons to keep for a graph S times as fast as the unpruned one, and the speed reached.

``plan`` reads the latency model of this machine (compress.latency) and keeps the largest fraction of both the heads and
the FFN neurons of every layer that it predicts reaches S; ``calibrate`` checks that plan on whole graphs (the model's
full depth, random weights at those counts, timed against the unpruned graph) and corrects the latency model's error.
The mask then learns which heads and neurons those are, along MaskConfig's schedule, which ends at exactly those
counts. ``reached`` measures, after export, what the shipped graph gives: against the same model exported unpruned,
timed round-robin at batch 1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from compress import latency
from compress import manifest as mf
from compress.configs import RunConfig
from compress.errors import ConfigError

log = logging.getLogger(__name__)


class SpeedupError(ConfigError):
    """A speed the model cannot reach by removing heads and neurons."""


@dataclass(frozen=True)
class Plan:
    heads: int  # per layer, of lm.shape.heads
    neurons: int  # per FFN, of lm.shape.neurons
    predicted: float  # speedup

    def speed(self, lm: latency.LatencyModel, asked: float) -> mf.Speed:
        return mf.Speed(asked, round(self.predicted, 4), self.heads / lm.shape.heads, self.neurons / lm.shape.neurons, cpu=lm.cpu)


def candidates(lm: latency.LatencyModel) -> list[tuple[int, int]]:
    """(heads, neurons) per layer keeping one fraction f of both (the --heads-keep / --ffn-keep design), f falling from 1."""
    s = lm.shape
    out = [(max(1, round(n / s.neurons * s.heads)), n) for n in range(s.neurons - s.neurons % 16 or s.neurons, 15, -16)]
    return list(dict.fromkeys(out))


def plan(lm: latency.LatencyModel, asked: float) -> Plan:
    """The largest fraction kept of both heads and FFN neurons whose graph the latency model predicts reaches `asked`.

    One fraction for both: keeping the most weights instead (a head holds 48 times a neuron's in MiniLM) chose 1 head of 12
    for 2x, and the mask then lost 0.07 F1 on MRPC with a teacher (benchmarks/results/distill_speedup.md)."""
    options = [Plan(h, n, lm.dense_ms / lm.predict(h, n)) for h, n in candidates(lm)]
    for p in options:
        if p.predicted >= asked:
            return p
    fastest = max(options, key=lambda p: p.predicted)
    raise SpeedupError(
        f"--speedup {asked}: removing heads and FFN neurons reaches at most {fastest.predicted:.2f}x on this machine "
        f"({lm.cpu}; {lm.shape.layers} layers stay); ask for {fastest.predicted:.2f} or less"
    )


def calibrate(lm: latency.LatencyModel, asked: float, measure, tries: int = 3, tolerance: float = 0.05) -> Plan:
    """The plan, checked on the whole graph: `measure(heads, neurons)` times the model's full depth at those counts against
    the unpruned graph; while that misses `asked` by more than `tolerance`, the latency model is asked for the speed that
    corrects its error (its one-layer graphs do not add up exactly to the whole graph's time). -> the plan whose measured
    speed is nearest `asked` from above (or the fastest tried), its `predicted` the measured speedup."""
    target, tried = asked, []
    for _ in range(tries):
        try:
            p = plan(lm, target)
        except SpeedupError:
            break
        got = measure(p.heads, p.neurons)
        tried.append(Plan(p.heads, p.neurons, got))
        log.info(
            "--speedup %s: %d heads, %d neurons per layer measure %.2fx (the latency model said %.2fx)",
            asked,
            p.heads,
            p.neurons,
            got,
            p.predicted,
        )
        if abs(got / asked - 1) <= tolerance:
            break
        target = max(1.0, target * asked / got)
    if not tried:
        return plan(lm, asked)  # raises: out of reach
    reaching = [p for p in tried if p.predicted >= asked * (1 - tolerance)]
    if reaching:
        return min(reaching, key=lambda p: p.predicted)
    h, n = candidates(lm)[-1]
    fastest = max(measure(h, n), *(p.predicted for p in tried))
    if fastest >= asked * (1 - tolerance):
        return Plan(h, n, fastest)
    raise SpeedupError(
        f"--speedup {asked}: removing heads and FFN neurons reaches at most {fastest:.2f}x on this machine, measured on whole graphs "
        f"({lm.cpu}; {lm.shape.layers} layers stay); ask for {fastest:.2f} or less"
    )


def resolve(cfg: RunConfig, num_labels: int) -> tuple[RunConfig, mf.Speed | None]:
    """cfg with --speedup turned into MaskConfig's kept fractions; -> (that config, what the manifest records)."""
    if cfg.speedup is None:
        return cfg, None
    from compress import models

    source = models.resolve(cfg.model)
    config = models.load_encoder(source)[0].config
    shape = latency.Shape(
        source.name,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        cfg.export.kernel,
        cfg.export.activations,
        cfg.quant.bits,
    )
    lm = latency.model_for(shape, cfg.quant, cfg.export, num_labels, cfg.pooling, cfg.threads)
    p = _cached(lm, cfg.speedup, lambda: _calibrated(lm, cfg, num_labels))
    speed = p.speed(lm, cfg.speedup)
    log.info(
        "--speedup %s: %d of %d heads, %d of %d FFN neurons per layer (predicted %.2fx)",
        cfg.speedup,
        p.heads,
        shape.heads,
        p.neurons,
        shape.neurons,
        p.predicted,
    )
    mask = dataclasses.replace(cfg.mask, heads_keep=speed.heads_keep, ffn_keep=speed.ffn_keep)
    return dataclasses.replace(cfg, mask=mask, speedup=None), speed


def _cached(lm: latency.LatencyModel, asked: float, compute) -> Plan:
    """The calibrated plan for `asked` from the latency model's cache (beside it), computed and added there if it has none."""
    path = latency.cache_path(lm).with_suffix(".plans.json")
    plans = json.loads(path.read_text()) if path.is_file() else {}
    if (hit := plans.get(repr(float(asked)))) is not None:
        return Plan(*hit)
    p = compute()
    plans[repr(float(asked))] = [p.heads, p.neurons, p.predicted]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plans, indent=1))
    tmp.replace(path)
    return p


def _calibrated(lm: latency.LatencyModel, cfg: RunConfig, num_labels: int) -> Plan:
    with latency.Prober(lm.shape, cfg.quant, cfg.export, num_labels, cfg.pooling, cfg.threads) as probe:
        return calibrate(lm, cfg.speedup, probe.speedup)


def reached(speed: mf.Speed, model, qweights, graph: Path, cfg: RunConfig, sample, calib) -> mf.Speed:
    """The shipped graph's batch-1 speed against the same model exported unpruned (every head and neuron back), timed
    round-robin on this machine."""
    from compress import build, masking
    from compress.exporters.export import export
    from compress.runtimes.session import open_session

    dense = copy.deepcopy(model)
    masking.set_keep_(dense, 0.0)  # the schedules' start: every head and neuron kept
    with tempfile.TemporaryDirectory() as tmp:
        linears, embedding = build.prepare(dense, qweights)
        export(dense, linears, embedding, Path(tmp) / "unpruned.onnx", cfg.export, sample, calib)
        sessions = {
            "dense": open_session(Path(tmp) / "unpruned.onnx", threads=cfg.threads),
            "pruned": open_session(graph, threads=cfg.threads),
        }
        ms = latency.time_round_robin(sessions, speed.seq_len)
    got = ms["dense"] / ms["pruned"]
    log.info(
        "speedup asked %.2fx, predicted %.2fx, reached %.2fx (%.2f -> %.2f ms)",
        speed.asked,
        speed.predicted,
        got,
        ms["dense"],
        ms["pruned"],
    )
    return dataclasses.replace(speed, reached=round(got, 4), dense_ms=round(ms["dense"], 4), pruned_ms=round(ms["pruned"], 4))
