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


def test_moons_dataset_is_a_classification_bundle_of_points():
    from semiseg.config import build_config
    from semiseg.data import prepare_data
    from semiseg.data.moons import load_moons
    from semiseg.errors import ConfigError

    bundle = load_moons(100, seed=2)
    assert bundle.task == "classify" and bundle.in_channels == 2 and bundle.num_classes == 2
    x, y = make_moons(100, 0.1, seed=2)
    np.testing.assert_array_equal(np.stack([r.image[:, 0, 0] for r in bundle.train]), x)
    assert [r.label for r in bundle.train] == y.tolist() and all(r.mask is None for r in bundle.train)
    fresh, _ = make_moons(100, 0.1, seed=3)  # the test set is a fresh draw
    np.testing.assert_array_equal(np.stack([r.image[:, 0, 0] for r in bundle.test]), fresh)
    raw = {"data": {"dataset": "moons", "image_size": [1, 1], "num_images": 100,
                    "split": {"supervision": "class", "labeled": 8, "balanced": True}},
           "model": {"name": "mlp"}, "method": {"name": "supervised"}}  # fmt: skip
    data = prepare_data(build_config(raw, []))
    assert (
        data.labeled.images.shape == (8, 2, 1, 1)
        and sorted(data.labeled.labels.tolist()) == [0] * 4 + [1] * 4
    )
    with pytest.raises(ConfigError, match=r"data.image_size' must be \[1, 1\] for dataset 'moons'"):
        build_config(raw, ["data.image_size=[8,8]"])
