"""Effective rank (centred RankMe) used by the pretraining monitor to show dimensional collapse."""

import numpy as np
import pytest

from medssl.evaluate.metrics import effective_rank


def test_isotropic_features_have_nearly_full_rank_and_collapsed_ones_rank_one():
    rng = np.random.default_rng(0)
    isotropic = rng.standard_normal((4000, 16))
    assert 15.0 < effective_rank(isotropic) <= 16.0
    direction = rng.standard_normal(16)
    collapsed = rng.standard_normal((500, 1)) * direction[None] + 1e-9 * rng.standard_normal((500, 16))
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=0.01)


def test_rank_counts_directions_not_their_offset_and_sees_k_equal_directions():
    rng = np.random.default_rng(1)
    three = np.zeros((3000, 10))
    three[:, :3] = rng.standard_normal((3000, 3))
    # a large constant offset (the mean of ReLU features) would dominate uncentred singular values
    assert effective_rank(three + 50.0) == pytest.approx(3.0, abs=0.1)
    assert effective_rank(np.ones((20, 8))) == 0.0
    # identical rows whose mean is not exact in floating point (0.1 * 37 images) are still a total collapse
    assert effective_rank(np.full((37, 8), 0.1)) == 0.0
