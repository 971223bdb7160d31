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
        assert int(stored.min()) >= 0 and int(stored.max()) <= 2**bits - 1
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


def _column_by_column(w, hessian, bits, group_size, symmetric):
    """The algorithm without lazy batches (one rank-1 update per column), as it was written first: the reference."""
    W, H = w.double().clone(), hessian.clone()
    rows, cols = W.shape
    g = cols if group_size is None else group_size
    H += 0.01 * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    q = torch.zeros(rows, cols, dtype=torch.float64)
    for i in range(cols):
        if i % g == 0:
            _, scale, zero = quantize._quantize_groups(W[:, i : i + g].float()[:, None, :], bits, True, symmetric)
            scale, zero = scale[:, 0], None if zero is None else zero[:, 0]
        q[:, i] = gptq._round_column(W[:, i], scale, zero, bits)
        err = (W[:, i] - q[:, i] * scale.double()) / U[i, i]
        W[:, i:] -= err[:, None] * U[i, i:][None, :]
    return q.numpy().astype(np.int8)


@pytest.mark.parametrize("bits,group,symmetric,cols", [(4, None, True, 320), (2, 16, False, 320), (4, 64, True, 320), (2, 256, False, 512)])
def test_lazy_batches_give_the_column_by_column_codes(bits, group, symmetric, cols):
    """Blocks of 128 columns (whole groups per block) change only the float64 summation order, not the codes."""
    torch.manual_seed(1)
    x = torch.randn(1024, cols) @ torch.randn(cols, cols) / cols**0.5
    w = torch.randn(48, cols) * 0.05
    h = (x.T @ x).double()
    got = gptq.gptq_tensor(w, h, bits, group, symmetric=symmetric)
    assert np.array_equal(got.codes, _column_by_column(w, h, bits, group, symmetric))
