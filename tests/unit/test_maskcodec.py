"""compress.maskcodec: masks stored near their entropy, decoded exactly, identified whatever coding stored them."""

import numpy as np
import pytest

from compress import maskcodec


@pytest.mark.parametrize("density,max_bits", [(0.95, 0.36), (0.999, 0.03), (0.5, 1.01), (0.03, 0.25)])
def test_mask_file_is_entropy_coded(tmp_path, density, max_bits):
    """Dense-ish masks store gaps between pruned weights (near the entropy), balanced ones 1 bit each."""
    want = {"layer": np.random.default_rng(0).random((768, 1536)) < density}
    nbytes = maskcodec.write_masks(tmp_path / "m.npz", want)
    got = maskcodec.load_masks(tmp_path / "m.npz")
    assert np.array_equal(got["layer"], want["layer"]) and nbytes == (tmp_path / "m.npz").stat().st_size
    assert nbytes * 8 / want["layer"].size < max_bits
    assert maskcodec.mask_sha256(got) == maskcodec.mask_sha256(want)  # the identity is the mask's, not its coding's


@pytest.mark.parametrize("gap", [0, 1, 254, 255, 256, 1000])
def test_gaps_round_trip_across_escapes(gap):
    positions = np.cumsum(np.full(20, gap + 1)) - 1
    code = maskcodec.gap_encode(positions)
    assert np.array_equal(maskcodec.gap_decode(code), positions) and code.size == 20 * (1 + gap // 255)


def test_rice_is_within_a_few_percent_of_the_entropy():
    rng = np.random.default_rng(0)
    for p in (0.01, 0.02, 0.05):
        mask = rng.random(2_000_000) >= p
        bits = 8 * maskcodec.rice_encode(np.flatnonzero(~mask)).nbytes / mask.size
        q = float((~mask).mean())  # the sample's own rate
        entropy = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
        assert 0.99 * entropy <= bits < 1.03 * entropy, (p, bits, entropy)


def test_mask_sha256_changes_with_one_bit_and_with_a_name():
    masks = {"a": np.ones((4, 8), bool), "b": np.zeros((2, 3), bool)}
    h = maskcodec.mask_sha256(masks)
    flipped = {**masks, "a": masks["a"].copy()}
    flipped["a"][1, 2] = False
    assert maskcodec.mask_sha256(flipped) != h and maskcodec.mask_sha256({"c": masks["a"], "b": masks["b"]}) != h
    assert maskcodec.mask_sha256(dict(reversed(masks.items()))) == h  # by name, not by order
