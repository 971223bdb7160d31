"""GPTQ: same integer format as round-to-nearest, smaller output error on the calibration inputs."""
import numpy as np
import pytest
import torch

from compress import backbone, gptq, quantize
from compress.quantize import QuantConfig, QuantConfigError


def output_error(w, wq, x):
    wq = torch.as_tensor(wq)
    return float(((x @ (w - wq).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


@pytest.mark.parametrize("bits,group,symmetric", [(4, None, True), (2, 16, False), (1, None, True)])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(bits, group, symmetric):
    torch.manual_seed(0)
    x = torch.randn(2048, 64) @ torch.randn(64, 64)  # correlated features: where error feedback pays
    w = torch.randn(32, 64)
    h = (x.T @ x).double()
    qt = gptq.gptq_tensor(w, h, bits, group, symmetric=symmetric)
    rtn = quantize.quantize_tensor(w, bits, group, symmetric=symmetric)
    assert qt.codes.dtype == np.int8 and qt.scale.shape == rtn.scale.shape
    assert (qt.zero is None) == (rtn.zero is None)
    if qt.zero is not None:  # codes + zero points stay in [0, 2^bits)
        stored = qt.codes.reshape(32, -1, group).astype(np.int16) + qt.zero[..., None]
        assert int(stored.min()) >= 0 and int(stored.max()) <= 2 ** bits - 1
    # GPTQ / RTN output error, measured on this data: 4 bits 0.3-0.6, 1 bit 0.82 (the sign grid leaves little to trade)
    assert output_error(w, qt.dequantize(), x) < (0.9 if bits == 1 else 0.7) * output_error(w, rtn.dequantize(), x)


def test_quantize_with_gptq_needs_calibration(tiny_classifier):
    clf, tok = tiny_classifier
    with pytest.raises(QuantConfigError, match="calibration"):
        backbone.quantize_(clf, QuantConfig(bits=2, group_size=16, method="gptq"))
    enc = tok(["a short sentence", "and another, longer sentence here"], padding=True, return_tensors="pt")
    before = {n: m.weight.clone() for n, m in quantize.target_linears(clf).items()}
    qts = backbone.quantize_(clf, QuantConfig(bits=2, group_size=16, symmetric=False, method="gptq"), [dict(enc)])
    for name, m in quantize.target_linears(clf).items():
        assert torch.equal(m.weight, torch.from_numpy(qts[name].dequantize())) and not torch.equal(m.weight, before[name])
    with pytest.raises(QuantConfigError, match="method"):
        QuantConfig(method="awq")
