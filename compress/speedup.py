"""`--speedup S`: the layers, heads and FFN neurons to keep for a graph S times as fast as the unpruned one, and the speed
reached.

``plan`` reads the latency model of this machine (compress.latency): per depth (layers dropped from the top) the largest
fraction of both the heads and the FFN neurons of every kept layer that it predicts reaches S, and of those the plan that
keeps the most weights without overshooting S by more than 10%. ``calibrate`` checks that plan on whole graphs (random
weights at those counts, timed against the unpruned graph), corrects the latency model's error and bisects the fraction
kept where the plan still overshoots. The layers above the plan's depth leave the model before training; the mask learns
which heads and neurons to keep, along MaskConfig's schedule, which ends at exactly those counts. ``reached`` measures,
after export, what the shipped graph gives: against the model's full-depth unpruned graph, timed round-robin at batch 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from compress import latency
from compress import manifest as mf
from compress.configs import RunConfig
from compress.errors import ConfigError

log = logging.getLogger(__name__)


class SpeedupError(ConfigError):
    """A speed the model cannot reach by removing layers, heads and neurons."""


OVERSHOOT = 0.1  # a plan may be this much faster than asked (the speed reached should be within 10% of the speed asked)


@dataclass(frozen=True)
class Plan:
    heads: int  # per layer, of lm.shape.heads
    neurons: int  # per FFN, of lm.shape.neurons
    predicted: float  # speedup
    layers: int | None = None  # the first this many transformer layers kept (None: all)

    def depth(self, shape: latency.Shape) -> int:
        return shape.layers if self.layers is None else self.layers

    def kept(self, shape: latency.Shape) -> float:
        """The fraction of the transformer layers' weights the plan keeps (Q/K/V/output rows of the kept heads, both FFN
        projections of the kept neurons, in the kept layers)."""
        head_size = shape.hidden // shape.heads
        per_layer = (4 * self.heads * head_size + 2 * self.neurons) / (4 * shape.hidden + 2 * shape.neurons)
        return per_layer * self.depth(shape) / shape.layers

    def speed(self, lm: latency.LatencyModel, asked: float) -> mf.Speed:
        s = lm.shape
        layers = None if self.depth(s) == s.layers else self.layers
        return mf.Speed(asked, round(self.predicted, 4), self.heads / s.heads, self.neurons / s.neurons, cpu=lm.cpu, layers=layers)


def candidates(lm: latency.LatencyModel) -> list[tuple[int, int]]:
    """(heads, neurons) per layer keeping one fraction f of both (the --heads-keep / --ffn-keep design), f falling from 1."""
    s = lm.shape
    out = [(max(1, round(n / s.neurons * s.heads)), n) for n in range(s.neurons - s.neurons % 16 or s.neurons, 15, -16)]
    return list(dict.fromkeys(out))


def options(lm: latency.LatencyModel, asked: float) -> list[Plan]:
    """Per depth (every layer kept, then one fewer, ...), the plan keeping the largest fraction of the heads and neurons of
    each kept layer that the latency model predicts reaches `asked`; depths that cannot reach it have none."""
    out = []
    for layers in range(lm.shape.layers, 0, -1):
        for h, n in candidates(lm):
            predicted = lm.dense_ms / lm.predict(h, n, layers)
            if predicted >= asked:
                out.append(Plan(h, n, predicted, None if layers == lm.shape.layers else layers))
                break
    return out


def plan(lm: latency.LatencyModel, asked: float) -> Plan:
    """The plan that keeps the most weights among those the latency model predicts reach `asked` without overshooting it by more
    than OVERSHOOT (else the one nearest above `asked`).

    Within a layer, one fraction for heads and neurons: keeping the most weights there instead (a head holds 48 times a neuron's
    in MiniLM) chose 1 head of 12 for 2x, and the mask then lost 0.07 F1 on MRPC with a teacher. Across layers, whole layers go
    where a layer's fixed cost (norms, softmax, quantize ops) dominates what its heads and neurons cost, as on CPUs whose int8
    matmuls are fast (benchmarks/results/distill_speedup.md)."""
    found = options(lm, asked)
    if not found:
        fastest = _fastest(lm).predicted
        raise SpeedupError(
            f"--speedup {asked}: removing layers, heads and FFN neurons reaches at most {fastest:.2f}x on this machine "
            f"({lm.cpu}; one layer left); ask for {fastest:.2f} or less"
        )
    near = [p for p in found if p.predicted <= asked * (1 + OVERSHOOT)]
    if not near:
        return min(found, key=lambda p: p.predicted)
    return max(near, key=lambda p: (round(p.kept(lm.shape), 9), -p.predicted, p.depth(lm.shape)))  # ties: the deeper


def _fastest(lm: latency.LatencyModel) -> Plan:
    """One layer with the fewest heads and neurons: the fastest graph a plan can ask for."""
    h, n = candidates(lm)[-1]
    return Plan(h, n, lm.dense_ms / lm.predict(h, n, 1), None if lm.shape.layers == 1 else 1)


def calibrate(lm: latency.LatencyModel, asked: float, measure, tries: int = 4, tolerance: float = 0.05) -> Plan:
    """The plan, checked on the whole graph: `measure(heads, neurons, layers)` times the graph at those counts against the
    unpruned graph. While that is slower than `asked` or faster by more than `tolerance`, the latency model is asked for the
    speed that corrects its error (its one-layer graphs do not add up exactly to the whole graph's time); then, at the depth
    found, the fraction kept is bisected between the plans measured on either side of `asked`. -> the slowest plan measured at
    `asked` or faster (else the fastest measured, if within `tolerance` below `asked`), its `predicted` the measured speedup."""
    plan(lm, asked)  # beyond the latency model's reach: its error, before anything is measured
    timed: dict[tuple, Plan] = {}

    def time_plan(p: Plan) -> Plan:
        key = (p.heads, p.neurons, p.layers)
        if key not in timed:  # a plan asked again is not timed again
            timed[key] = dataclasses.replace(p, predicted=measure(*key))
            log.info(
                "--speedup %s: %s layers, %d heads, %d neurons per layer measure %.2fx",
                asked,
                p.layers or "all",
                *key[:2],
                timed[key].predicted,
            )
        return timed[key]

    target = asked
    for _ in range(tries):
        try:
            got = time_plan(plan(lm, target)).predicted
        except SpeedupError:  # a corrected target beyond the model's reach: the fastest graph it knows is measured, then no more
            time_plan(_fastest(lm))
            break
        if asked <= got <= asked * (1 + tolerance):
            break
        target = max(1.0, target * asked / got)
    if reaching := [p for p in timed.values() if p.predicted >= asked]:
        return _bisect(lm, asked, min(reaching, key=lambda p: p.predicted), time_plan, tolerance)
    best = max(timed.values(), key=lambda p: p.predicted)
    if best.predicted >= asked * (1 - tolerance):
        return best
    raise SpeedupError(
        f"--speedup {asked}: removing layers, heads and FFN neurons reaches at most {best.predicted:.2f}x on this machine, measured "
        f"on whole graphs ({lm.cpu}); ask for {best.predicted:.2f} or less"
    )


def _bisect(lm: latency.LatencyModel, asked: float, fast: Plan, time_plan, tolerance: float, steps: int = 6) -> Plan:
    """`fast` (measured at `asked` or faster) if within `tolerance` of it; else the slowest plan at its depth measured at `asked`
    or faster, found by bisecting the fraction kept between every head and neuron and `fast`'s (at most `steps` more graphs)."""
    cands = candidates(lm)
    lo, hi = -1, cands.index((fast.heads, fast.neurons))  # below `asked` (-1: not yet known), at `asked` or faster
    for _ in range(steps):
        if fast.predicted <= asked * (1 + tolerance) or hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        p = time_plan(Plan(*cands[mid], 0.0, fast.layers))
        if p.predicted >= asked:
            hi, fast = mid, p
        else:
            lo = mid
    return fast


def shape_of(cfg: RunConfig) -> latency.Shape:
    """The shapes and export settings the speed of cfg's graph depends on (the model's whole depth)."""
    from compress import models

    source = models.resolve(cfg.model)
    config = models.load_encoder(source)[0].config
    return latency.Shape(
        source.name,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        cfg.export.kernel,
        cfg.export.activations,
        cfg.quant.bits,
    )


def resolve(cfg: RunConfig, num_labels: int) -> tuple[RunConfig, mf.Speed | None]:
    """cfg with --speedup turned into MaskConfig's kept layers and fractions; -> (that config, what the manifest records)."""
    if cfg.speedup is None:
        return cfg, None
    shape = shape_of(cfg)
    lm = latency.model_for(shape, cfg.quant, cfg.export, num_labels, cfg.pooling, cfg.threads)
    p = _cached(lm, cfg.speedup, lambda: _calibrated(lm, cfg, num_labels))
    speed = p.speed(lm, cfg.speedup)
    log.info(
        "--speedup %s: %d of %d layers, %d of %d heads, %d of %d FFN neurons per layer (predicted %.2fx)",
        cfg.speedup,
        p.depth(shape),
        shape.layers,
        p.heads,
        shape.heads,
        p.neurons,
        shape.neurons,
        p.predicted,
    )
    mask = dataclasses.replace(cfg.mask, heads_keep=speed.heads_keep, ffn_keep=speed.ffn_keep, layers=speed.layers)
    return dataclasses.replace(cfg, mask=mask, speedup=None), speed


PLAN_RULE = 3  # of plan() and calibrate(): plans cached by an earlier rule are not used


def _cached(lm: latency.LatencyModel, asked: float, compute) -> Plan:
    """The calibrated plan for `asked` from the latency model's cache (beside it), computed and added there if it has none."""
    path = latency.cache_path(lm).with_suffix(".plans.json")
    plans = json.loads(path.read_text()) if path.is_file() else {}
    key = f"rule {PLAN_RULE}: {float(asked)!r}"
    if (hit := plans.get(key)) is not None:
        return Plan(*hit)
    p = compute()
    plans[key] = [p.heads, p.neurons, p.predicted, p.layers]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plans, indent=1))
    tmp.replace(path)
    return p


def _calibrated(lm: latency.LatencyModel, cfg: RunConfig, num_labels: int) -> Plan:
    with latency.Prober(lm.shape, cfg.quant, cfg.export, num_labels, cfg.pooling, cfg.threads) as probe:
        return calibrate(lm, cfg.speedup, probe.speedup)


def reached(speed: mf.Speed, graph: Path, cfg: RunConfig, num_labels: int) -> mf.Speed:
    """The shipped graph's batch-1 speed against the same model exported unpruned (every layer, head and neuron), timed
    round-robin on this machine. The unpruned graph is the latency model's (the model's own shapes and export settings; its
    weights rounded to nearest: speed does not depend on the codes), since the trained model no longer holds the removed layers."""
    with latency.Prober(shape_of(cfg), cfg.quant, cfg.export, num_labels, cfg.pooling, cfg.threads) as probe:
        dense_ms, pruned_ms = probe.against_dense(graph)
    got = dense_ms / pruned_ms
    log.info(
        "speedup asked %.2fx, predicted %.2fx, reached %.2fx (%.2f -> %.2f ms)", speed.asked, speed.predicted, got, dense_ms, pruned_ms
    )
    return dataclasses.replace(speed, reached=round(got, 4), dense_ms=round(dense_ms, 4), pruned_ms=round(pruned_ms, 4))
