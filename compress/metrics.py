"""Official GLUE metrics (scikit-learn / scipy)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from compress.tasks import Task


def predictions(task: Task, logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits)
    return logits.reshape(-1) if task.is_regression else logits.argmax(-1)


def compute(task: Task, logits: np.ndarray, labels) -> dict[str, float]:
    """All of the task's metrics; the primary one is ``task.metric``."""
    y = np.asarray(labels)
    p = predictions(task, logits)
    if task.is_regression:
        if np.ptp(p) == 0 or np.ptp(y) == 0:  # a constant predictor has no correlation (scipy says NaN)
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(p, y)[0]), "spearman": float(spearmanr(p, y)[0])}
    out = {"accuracy": float(accuracy_score(y, p))}
    if task.metric == "f1":
        out["f1"] = float(f1_score(y, p))
    if task.metric == "mcc":
        out["mcc"] = float(matthews_corrcoef(y, p))
    return out


def majority_baseline(task: Task, train_labels, dev_labels) -> dict[str, float]:
    """Metrics of always predicting the most frequent training label (regression: the mean score)."""
    y = np.asarray(dev_labels)
    if task.is_regression:
        return {"pearson": 0.0, "spearman": 0.0}
    major = np.bincount(np.asarray(train_labels, dtype=int), minlength=task.num_labels).argmax()
    logits = np.zeros((len(y), task.num_labels))
    logits[:, major] = 1.0
    return compute(task, logits, y)
