"""compress.train: one loop for both modes, on CPU or a CUDA GPU; on the tiny BERT."""

import copy

import numpy as np
import pytest
import torch

from compress import masking, tasks, train


@pytest.fixture()
def mrpc(mini_glue):
    task = tasks.get_task("mrpc")
    return task, tasks.load_task(task, mini_glue)


def _fit(tiny_classifier, mrpc, mode: str, device: str):
    clf, tok = copy.deepcopy(tiny_classifier[0]), tiny_classifier[1]
    if mode == "structure":
        masking.apply_masks_(clf, masking.MaskConfig())
    task, splits = mrpc
    cfg = train.TrainConfig(mode=mode, epochs=2, batch_size=8, max_length=32, device=device)
    return clf, train.fit(clf, task, splits["train"], splits["dev"], tok, cfg)


@pytest.mark.parametrize("mode", ["structure", "weights"])
def test_fit_records_history_and_returns_on_cpu(tiny_classifier, mrpc, mode):
    before = {n: p.detach().clone() for n, p in tiny_classifier[0].named_parameters()}
    clf, res = _fit(tiny_classifier, mrpc, mode, "cpu")
    assert [h.epoch for h in res.history] == [1, 2] and 1 <= res.best_epoch <= 2
    assert all(np.isfinite(h.loss) and 0 <= h.dev["f1"] <= 1 for h in res.history)
    assert all(p.device.type == "cpu" for p in clf.parameters())
    moved = {n for n, p in clf.named_parameters() if n in before and not torch.equal(p, before[n])}
    if mode == "structure":  # frozen pretrained weights: only the head moves (scores are new parameters)
        assert moved and all(n in clf.head_parameters() for n in moved)
        assert 0 < masking.densities(clf)[1] < 1
    else:
        assert any("encoder" in n for n in moved)


def test_ffn_pruning_schedule_and_best_epoch(tiny_classifier, mrpc):
    clf, tok = copy.deepcopy(tiny_classifier[0]), tiny_classifier[1]
    masking.apply_masks_(clf, masking.MaskConfig(ffn_keep=0.5, ffn_ramp=0.7))
    task, splits = mrpc
    res = train.fit(clf, task, splits["train"], splits["dev"], tok, train.TrainConfig(epochs=3, batch_size=8, max_length=32))
    keeps = [h.ffn_keep for h in res.history]
    assert keeps[0] > keeps[1] > keeps[2] == 0.5  # cubic from 1 to 0.5 over the first 70% of the steps
    assert res.best_epoch == 3  # the only epoch at the final sparsity
    for name, m in masking.masks(clf).items():
        if name.endswith("output.dense"):
            assert int(m.any(0).sum()) == 64


def test_device_option():
    with pytest.raises(ValueError, match="cuda:N"):
        train.TrainConfig(device="gpu")
    assert train.resolve_device("cpu").type == "cpu"
    assert train.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            train.resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_cuda_matches_cpu_forward(tiny_classifier, mrpc):
    """Trained on the GPU, the model comes back to the CPU and predicts there as on the GPU."""
    clf, res = _fit(tiny_classifier, mrpc, "structure", "cuda")
    assert all(p.device.type == "cpu" for p in clf.parameters()) and len(res.history) == 2
    _, splits = mrpc
    enc = train.encode(tiny_classifier[1], splits["dev"], 32)
    on_cpu = train.predict(clf, enc, 0)
    on_gpu = train.predict(clf.to("cuda"), enc, 0)
    # fp32 on both; cuBLAS may use TF32-free but differently ordered reductions: 1e-4 on logits of order 1
    assert np.abs(on_cpu - on_gpu).max() < 1e-4
