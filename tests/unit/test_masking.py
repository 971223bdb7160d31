import copy

import numpy as np
import pytest
import torch

from compress import maskcodec, masking
from compress.masking import MaskConfig, MaskedLinear


def test_forward_uses_hard_mask_and_ste_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4)
    m = MaskedLinear(lin, MaskConfig())
    x = torch.randn(3, 8)
    hard = (m.scores > 0.01).float()
    y = m(x)
    assert torch.allclose(y, torch.nn.functional.linear(x, lin.weight * hard, lin.bias), atol=1e-6)
    y.sum().backward()
    # straight-through: d/dscores = d/dW_eff * W, for kept and pruned weights alike
    expected = (torch.ones(3, 4).T @ x) * lin.weight
    assert torch.allclose(m.scores.grad, expected, atol=1e-5)
    assert m.weight.requires_grad is False


def test_initial_density_matches_init_range():
    torch.manual_seed(0)
    assert MaskedLinear(torch.nn.Linear(256, 256), MaskConfig()).mask().mean().item() == 1.0  # default: nothing pruned
    m = MaskedLinear(torch.nn.Linear(256, 256), MaskConfig(init_low=-0.02, init_high=0.58))
    assert abs(m.mask().mean().item() - 0.95) < 0.01  # Zhao et al.: Uniform(-.02, .58) > .01 keeps 95%


def test_two_four_structure():
    lin = torch.nn.Linear(16, 8)
    m = MaskedLinear(lin, MaskConfig(nm=(2, 4)))
    mask = m.mask().reshape(8, 4, 4)
    assert torch.all(mask.sum(-1) == 2)
    # starts from 2:4 magnitude pruning: the two largest |w| of every 4 inputs are kept
    top2 = lin.weight.detach().abs().reshape(8, 4, 4).topk(2, dim=-1).indices
    assert torch.all(mask.gather(-1, top2) == 1)
    x = torch.randn(2, 16)
    m(x).sum().backward()
    assert m.scores.grad.abs().sum() > 0  # every score gets the straight-through gradient
    with pytest.raises(ValueError, match="divisible"):
        MaskedLinear(torch.nn.Linear(6, 2), MaskConfig(nm=(2, 4)))


def test_apply_fold_save_load(tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    layers = masking.apply_masks_(clf, MaskConfig(init_low=-0.02, init_high=0.58))  # 5% pruned: a mask with both values
    assert len(layers) == 2 * 6  # q, k, v, attention out, ffn in, ffn out per layer
    x = {"input_ids": torch.randint(1000, 2000, (2, 10)), "attention_mask": torch.ones(2, 10, dtype=torch.long)}
    folded = masking.folded(clf).eval()
    assert not masking.masked_layers(folded)
    assert torch.allclose(clf(**x), folded(**x), atol=1e-6)
    nbytes = masking.save_masks(tmp_path / "mask.npz", clf)
    assert nbytes == (tmp_path / "mask.npz").stat().st_size
    loaded = maskcodec.load_masks(tmp_path / "mask.npz")
    for name, m in masking.masks(clf).items():
        assert np.array_equal(loaded[name], m.numpy())
    with torch.no_grad():
        for layer in layers.values():
            layer.scores.uniform_(-1, 1)
    masking.set_masks_(clf, loaded)
    assert torch.allclose(clf(**x), folded(**x), atol=1e-6)


def test_bad_mask_config():
    with pytest.raises(ValueError, match="init_low"):
        MaskConfig(init_low=1, init_high=0)


def test_ffn_neuron_schedule_and_mask():
    cfg = MaskConfig(ffn_keep=0.5, ffn_ramp=0.5)
    assert cfg.keep_at("ffn", 0) == 1.0 and 0.5 < cfg.keep_at("ffn", 0.25) < 1.0 and cfg.keep_at("ffn", 0.5) == cfg.keep_at("ffn", 1) == 0.5
    assert MaskConfig().keep_at("ffn", 0.7) == 1.0 and cfg.keep_at("heads", 0.5) == 1.0  # heads_keep unset
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 4)
    m = MaskedLinear(lin, cfg, "ffn")
    assert m.mask().all()  # keep = 1.0 until the schedule moves
    m.keep = 0.25
    dead = ~m.mask().bool().any(0)
    assert int(dead.sum()) == 12 and m.mask()[:, ~dead].all()  # 4 of 16 neurons (input columns) kept, their weights intact
    # the neurons first dropped are those with the smallest output-weight norm
    assert set(torch.nonzero(~dead).flatten().tolist()) == set(lin.weight.norm(dim=0).topk(4).indices.tolist())
    m(torch.randn(3, 16)).sum().backward()
    assert m.neuron_scores.grad is not None and m.neuron_scores.grad.abs().sum() > 0  # straight-through to every neuron score
    with pytest.raises(ValueError, match="ffn_keep"):
        MaskConfig(ffn_keep=0)


def test_ffn_keep_scores_only_the_ffn_outputs(tiny_classifier):
    clf, _ = tiny_classifier
    layers = masking.apply_masks_(clf, MaskConfig(ffn_keep=0.5))
    scored = sorted(n for n, m in layers.items() if m.neuron_scores is not None)
    assert scored == [f"encoder.encoder.layer.{i}.output.dense" for i in range(2)]
    assert len(masking.score_parameters(clf)) == len(layers) + 2
    assert masking.set_keep_(clf, 1.0) == {"ffn": 0.5} == masking.keep_targets(clf)
    for name in scored:
        assert int(masking.masks(clf)[name].any(0).sum()) == 64  # of 128 intermediate neurons


def test_heads_keep_scores_whole_heads(tiny_classifier):
    """One score per head on the attention output projection's input columns; top heads kept per layer, straight-through."""
    clf, _ = tiny_classifier
    layers = masking.apply_masks_(clf, MaskConfig(heads_keep=0.5, ffn_ramp=0.5))
    scored = sorted(n for n, m in layers.items() if m.neuron_scores is not None)
    assert scored == [f"encoder.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    m = layers[scored[0]]
    assert m.neuron_scores.shape == (4,) and m.unit_size == 16  # 4 heads of 16
    assert masking.set_keep_(clf, 0.25) == {"heads": MaskConfig(heads_keep=0.5).keep_at("heads", 0.25)}
    assert masking.set_keep_(clf, 1.0) == {"heads": 0.5} == masking.keep_targets(clf)
    cols = masking.masks(clf)[scored[0]].any(0).reshape(4, 16)
    assert (cols.all(1) | ~cols.any(1)).all() and int(cols.all(1).sum()) == 2  # whole heads: 2 of 4 kept
    m(torch.randn(3, 64)).sum().backward()
    assert m.neuron_scores.grad is not None and (m.neuron_scores.grad != 0).all()
    with pytest.raises(ValueError, match="heads_keep"):
        MaskConfig(heads_keep=1.5)


def test_layers_keeps_the_first_layers_and_the_config_says_so(tiny_classifier):
    from compress.errors import ConfigError
    from compress.train import hidden_loss, layer_outputs

    clf, tok = tiny_classifier
    full = copy.deepcopy(clf)
    batch = dict(tok(["a short text", "another one here"], padding=True, return_tensors="pt"))
    with torch.no_grad(), layer_outputs(full) as teacher:
        full(**batch)
    assert masking.drop_layers_(clf, None) == [] and masking.drop_layers_(clf, 2) == []  # all of them: nothing removed
    assert masking.drop_layers_(clf, 1) == ["encoder.encoder.layer.1"]
    assert len(masking.transformer_layers(clf)) == 1 and clf.encoder.config.num_hidden_layers == 1
    with torch.no_grad(), layer_outputs(clf) as student:
        clf(**batch)
    assert len(student) == 1 and torch.equal(student[0], teacher[0])  # the kept layer is untouched
    assert hidden_loss(student, teacher, batch["attention_mask"]).item() == 0.0  # layerwise loss: the kept layers' teachers
    masking.apply_masks_(clf, MaskConfig())
    assert not any(".layer.1." in n for n in masking.masked_layers(clf))
    with pytest.raises(ConfigError, match="--layers 3: the model has 1 transformer layers"):
        masking.drop_layers_(clf, 3)
    with pytest.raises(Exception, match="keep at least 1 transformer layer"):
        MaskConfig(layers=0)
