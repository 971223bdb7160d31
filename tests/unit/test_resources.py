"""compress.resources: the memory estimate grows as it should, and a run that cannot fit stops before training."""

import pytest
import torch

from compress import masking, resources


def test_estimate_scales_with_batch_length_and_mode(tiny_classifier):
    clf = tiny_classifier[0]
    dense = resources.estimate(clf, 8, 64)
    masking.apply_masks_(clf, masking.MaskConfig())
    for p in clf.parameters():
        p.requires_grad_(False)
    for p in masking.score_parameters(clf) + list(clf.head_parameters().values()):
        p.requires_grad_(True)
    masked = resources.estimate(clf, 8, 64)
    assert masked.masks > 0 and dense.masks == 0
    bigger = resources.estimate(clf, 16, 64)
    assert bigger.activations - resources.OVERHEAD == pytest.approx(2 * (masked.activations - resources.OVERHEAD))
    longer = resources.estimate(clf, 8, 128)
    assert longer.activations - resources.OVERHEAD > 2 * (masked.activations - resources.OVERHEAD)  # attention is quadratic
    assert masked.total > masked.trainable + masked.masks + masked.activations  # with the safety margin
    assert 0 < resources.available(torch.device("cpu")) < 1 << 50


def test_a_run_that_cannot_fit_stops_before_training_naming_what_to_lower(tiny_classifier, monkeypatch):
    clf = tiny_classifier[0]
    masking.apply_masks_(clf, masking.MaskConfig())
    need = resources.estimate(clf, 32, 128).total
    monkeypatch.setattr(resources, "available", lambda device: need - 1)
    with pytest.raises(resources.ResourceError, match=r"lower --batch-size \(about \d+ fits\) or --max-length"):
        resources.check(clf, 32, 128, torch.device("cpu"))
    monkeypatch.setattr(resources, "available", lambda device: 1)
    with pytest.raises(resources.ResourceError, match=r"has 0.0 GB free: lower --max-length, or use a smaller --model"):
        resources.check(clf, 32, 128, torch.device("cpu"))
    monkeypatch.setattr(resources, "available", lambda device: need)
    assert resources.check(clf, 32, 128, torch.device("cpu")).total == need


def test_stage_meter_records_time_and_peak_memory():
    import time

    import numpy as np

    names = []
    meter = resources.StageMeter(names.append)
    meter.start("small")
    time.sleep(0.05)
    meter.start("big")
    block = np.ones(300_000_000 // 8)  # 300 MB, touched
    time.sleep(0.1)
    del block
    stages = meter.stop()
    assert names == ["small", "big"] and list(stages) == ["small", "big"]
    assert stages["small"].seconds >= 0.05 and stages["big"].peak_rss_gb >= stages["small"].peak_rss_gb + 0.25
    assert resources.rss() > 0
