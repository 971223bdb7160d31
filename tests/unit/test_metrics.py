import numpy as np
import pytest

from compress import metrics, tasks


def test_metrics_per_task():
    y = [1, 0, 1, 1]
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1]], dtype=float)
    m = metrics.compute(tasks.get_task("mrpc"), logits, y)
    assert m == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert metrics.compute(tasks.get_task("cola"), logits, y)["mcc"] == pytest.approx(0.5773502)
    s = metrics.compute(tasks.get_task("stsb"), np.array([[1.0], [2.0], [3.0]]), [1.5, 2.5, 3.6])
    assert s["pearson"] == pytest.approx(2.1 / (2**0.5 * (2.2066667) ** 0.5), abs=1e-6) and s["spearman"] == pytest.approx(1.0)


def test_constant_regressor_scores_zero_not_nan():
    assert metrics.compute(tasks.get_task("stsb"), np.ones((3, 1)), [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_majority_baseline_is_always_paraphrase():
    m = metrics.majority_baseline(tasks.get_task("mrpc"), [1, 1, 0], [1, 0, 1, 1])
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 * 0.75 / 1.75)
