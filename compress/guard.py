"""The accuracy guard's rule: does a graph's dev metric trail a reference's by more than `max_metric_drop`, as far as the
dev sample can tell?

Both predictors are scored on the same bootstrap resamples of the dev examples (a paired bootstrap: multinomial weights
per example, so every metric, F1, MCC and Pearson included, is computed as it is on the whole set). The drop's
one-sided lower confidence bound must not exceed `max_metric_drop`. One prediction flipped in 64 examples (an observed
drop of 0.0156) is what chance gives and passes; the same rate over 6,400 examples is a real drop and fails. The rule
judges any pair of predictors on the same examples: PyTorch against the exported graph, or a provider against the CPU
graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress import metrics
from compress.tasks import Task

CONFIDENCE = 0.95  # one-sided
ROUNDS = 2000


@dataclass(frozen=True)
class Drop:
    """The reference's dev metric minus the candidate's, on the same examples."""

    observed: float
    low: float  # the one-sided lower confidence bound of the drop: the least drop the sample shows
    examples: int
    confidence: float

    def exceeds(self, max_drop: float) -> bool:
        """True when the sample shows a drop beyond max_drop (NaN counts as beyond)."""
        return not self.low <= max_drop

    def describe(self) -> str:
        return f"by {self.observed:.4f} ({self.confidence:.0%} lower bound {self.low:.4f} over {self.examples} dev examples)"


def drop(task: Task, reference: np.ndarray, candidate: np.ndarray, labels, rounds: int = ROUNDS, seed: int = 0) -> Drop:
    """The drop of `candidate`'s logits from `reference`'s in `task.metric` on the dev `labels`, with its lower bound."""
    y = np.asarray(labels)
    n = len(y)
    p_ref, p_new = metrics.predictions(task, reference), metrics.predictions(task, candidate)
    observed = metrics.compute(task, reference, y)[task.metric] - metrics.compute(task, candidate, y)[task.metric]
    if n < 2:
        return Drop(float(observed), float(observed), n, CONFIDENCE)
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=rounds).astype(np.float64)
    diffs = weighted(task, p_ref, y, w) - weighted(task, p_new, y, w)
    low = float(np.quantile(diffs, 1.0 - CONFIDENCE, method="lower"))
    return Drop(float(observed), min(low, float(observed)), n, CONFIDENCE)


def weighted(task: Task, p: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """task.metric of predictions p against labels y under each row of example weights w [rounds, n] (a row of ones: the
    metric on the whole set, as compress.metrics computes it)."""
    total = w.sum(1)
    if task.metric == "accuracy":
        return w @ (p == y).astype(np.float64) / total
    if task.metric in ("f1", "mcc"):
        if not (set(np.unique(y)) | set(np.unique(p))) <= {0, 1}:
            raise ValueError(f"{task.name}: {task.metric} of the guard is binary; the labels are {sorted(set(np.unique(y)))}")
        tp, fp, fn = (w @ ((p == a) & (y == b)).astype(np.float64) for a, b in ((1, 1), (1, 0), (0, 1)))
        tn = total - tp - fp - fn
        if task.metric == "f1":
            return _ratio(2 * tp, 2 * tp + fp + fn)
        return _ratio(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    if task.metric == "pearson":
        p, y = p.astype(np.float64), y.astype(np.float64)
        mp, my, mpp, myy, mpy = (w @ x / total for x in (p, y, p * p, y * y, p * y))
        return _ratio(mpy - mp * my, np.sqrt(np.clip(mpp - mp**2, 0, None) * np.clip(myy - my**2, 0, None)))
    raise ValueError(f"{task.name}: no bootstrap for the metric {task.metric!r}")


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (sklearn's F1 and MCC, and compress.metrics' constant-predictor Pearson, say 0 there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)
