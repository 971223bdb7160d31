import numpy as np
import pytest
import torch

from compress import backbone, quantize
from compress.quantize import QuantConfig, QuantConfigError, quantize_tensor
from compress.qweight import PackingError, QWeight, pack_bits, to_signed, to_unsigned, unpack_bits

# relative RMS error bounds for Gaussian weights (per-channel, MSE-clipped); measured ~0.4x-0.8x of these
REL_RMSE = {8: 0.01, 4: 0.13, 2: 0.6, 1: 0.65}


def rel_rmse(w, wq):
    w, wq = torch.as_tensor(w).detach(), torch.as_tensor(wq).detach()
    return float(((w - wq) ** 2).mean().sqrt() / (w**2).mean().sqrt())


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("group", [None, 16])
def test_round_trip_error_bounds(bits, group):
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    qt = quantize_tensor(w, bits, group)
    qmax = 1 if bits == 1 else 2 ** (bits - 1) - 1
    assert qt.codes.dtype == np.int8 and int(np.abs(qt.codes).max()) <= qmax
    assert qt.scale.shape == (48, 1 if group is None else 64 // group)
    assert rel_rmse(w, qt.dequantize()) < REL_RMSE[bits]


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("group", [None, 16])
def test_asymmetric_uses_every_level_and_keeps_zero_exact(bits, group):
    torch.manual_seed(0)
    w = torch.randn(48, 64) + 0.3  # skewed rows: a zero point pays
    qt = quantize_tensor(w, bits, group, symmetric=False)
    stored = qt.codes.reshape(48, -1, group or 64).astype(np.int16) + qt.zero[..., None]
    assert qt.zero.dtype == np.uint8 and int(stored.min()) == 0 and int(stored.max()) == 2**bits - 1
    assert np.array_equal(qt.stored(), stored.reshape(48, 64))
    assert rel_rmse(w, qt.dequantize()) < rel_rmse(w, quantize_tensor(w, bits, group).dequantize())
    # a pruned weight (q = 0) dequantizes to exactly 0: code == zero point
    assert np.all(qt.dequantize()[qt.codes == 0] == 0)


def test_asymmetric_2bit_groups_beat_ternary():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    err = {sym: rel_rmse(w, quantize_tensor(w, 2, 32, symmetric=sym).dequantize()) for sym in (True, False)}
    assert err[False] < 0.85 * err[True], err


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False), (2, False), (1, True)])
def test_scales_are_float16_values(bits, symmetric):
    qt = quantize_tensor(torch.randn(16, 64), bits, 16, symmetric=symmetric)
    assert np.array_equal(qt.scale.astype(np.float16).astype(np.float32), qt.scale) and np.all(qt.scale > 0)


def test_default_configs_per_bit_width():
    assert quantize.default_config(2) == QuantConfig(bits=2, group_size=16, symmetric=False, method="gptq")
    assert quantize.default_config(2, 64, True, "rtn") == QuantConfig(bits=2, group_size=64, symmetric=True)
    assert quantize.default_config(4) == QuantConfig(bits=4, method="gptq")
    assert quantize.default_config(4, method="rtn") == QuantConfig(bits=4)
    assert quantize.default_config(8) == QuantConfig(bits=8)


def test_groups_beat_channels_at_4_bits():
    torch.manual_seed(0)
    w = torch.randn(32, 256) * torch.linspace(0.1, 3, 256)  # input-dependent ranges favour groups
    assert rel_rmse(w, quantize_tensor(w, 4, 32).dequantize()) < rel_rmse(w, quantize_tensor(w, 4).dequantize())


def test_8bit_error_is_half_a_step():
    w = torch.randn(8, 32)
    qt = quantize_tensor(w, 8, clip_search=False)
    assert np.all(np.abs(w.numpy() - qt.dequantize()) <= qt.scale / 2 + 1e-7)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**bits, size=1003).astype(np.uint8)  # not a multiple of 8: padding
    packed = pack_bits(codes, bits)
    assert packed.size == -(-1003 * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, 1003), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_signed_unsigned_round_trip(bits):
    qmax = 1 if bits == 1 else 2 ** (bits - 1) - 1
    q = np.array([-qmax, qmax] if bits == 1 else list(range(-qmax, qmax + 1)), dtype=np.int8)
    assert np.array_equal(to_signed(to_unsigned(q, bits), bits), q)


def test_bad_config():
    with pytest.raises(QuantConfigError, match="bits=3"):
        QuantConfig(bits=3)
    with pytest.raises(QuantConfigError, match="asymmetric"):
        QuantConfig(bits=8, symmetric=False)
    with pytest.raises(QuantConfigError, match="power of two"):
        QuantConfig(group_size=48)
    with pytest.raises(QuantConfigError, match="not divisible"):
        quantize_tensor(torch.randn(4, 40), 4, 16)
    with pytest.raises(PackingError, match="does not fit"):
        pack_bits(np.array([4]), 2)


def test_quantize_model_in_place(tiny_classifier):
    clf, _ = tiny_classifier
    before = {n: m.weight.detach().clone() for n, m in quantize.target_linears(clf).items()}
    qts = backbone.quantize_(clf, QuantConfig(bits=4))
    assert set(before) < set(qts)  # every encoder linear, plus the word embeddings
    assert "encoder.embeddings.word_embeddings" in qts and "classifier" not in qts
    for n, lin in quantize.target_linears(clf).items():
        assert torch.equal(lin.weight, torch.from_numpy(qts[n].dequantize()))
        assert 0 < rel_rmse(before[n], lin.weight) < REL_RMSE[4]
    assert backbone.quantize_(clf, QuantConfig(bits=32)) == {}


@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (4, None, True), (4, 16, False), (2, 16, False), (1, None, True)])
def test_packed_form_round_trips(bits, group, symmetric):
    """The on-disk form (bit-packed codes, float16 scales, packed zero points) gives back the same weight."""
    torch.manual_seed(0)
    qw = quantize_tensor(torch.randn(24, 64), bits, group, symmetric=symmetric)
    packed = qw.packed()
    assert packed["codes"].nbytes == 24 * 64 * qw.storage_bits // 8 and packed["scale"].dtype == np.float16
    back = QWeight.from_packed(packed, qw.shape, bits, group)
    assert np.array_equal(back.codes, qw.codes) and np.array_equal(back.scale, qw.scale)
    assert (back.zero is None) == symmetric and (symmetric or np.array_equal(back.zero, qw.zero))
    pruned = qw.masked(np.arange(24 * 64).reshape(24, 64) % 3 == 0)
    assert np.count_nonzero(pruned.codes) <= 24 * 64 // 3 + 1 and np.all(pruned.dequantize()[pruned.codes == 0] == 0)
