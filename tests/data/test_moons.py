"""Half-moons: deterministic, two classes on their arcs, noise as asked."""

from __future__ import annotations

import numpy as np
import pytest

from semiseg.data.moons import make_moons


def test_moons_are_deterministic_and_balanced():
    x, y = make_moons(1000, 0.1, seed=3)
    again = make_moons(1000, 0.1, seed=3)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    assert not np.array_equal(x, make_moons(1000, 0.1, seed=4)[0])
    assert x.shape == (1000, 2) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [500, 500]
    assert np.bincount(make_moons(7, 0.0)[1]).tolist() == [3, 4]


def test_points_lie_on_their_arcs_without_noise_and_spread_with_it():
    x, y = make_moons(200, 0.0, seed=0)
    outer, inner = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, atol=1e-6)  # unit half-circle, y >= 0
    assert (outer[:, 1] >= -1e-6).all()
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1, inner[:, 1] - 0.5), 1.0, atol=1e-6)
    assert (inner[:, 1] <= 0.5 + 1e-6).all()
    noisy, labels = make_moons(20000, 0.1, seed=1)
    clean, _ = make_moons(20000, 0.0, seed=1)  # the same shuffle: the noise is the only difference
    assert np.array_equal(labels, make_moons(20000, 0.0, seed=1)[1])
    assert abs(float((noisy - clean).std()) - 0.1) < 0.005


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        make_moons(1)
    with pytest.raises(ValueError, match="noise"):
        make_moons(10, noise=-1)
