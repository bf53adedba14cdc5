"""The IODA paper's texture-ring set: deterministic splits, analytic rings, textures and errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from semiseg.config import DataConfig
from semiseg.data import load_bundle
from semiseg.data.texture_rings import make_ring, make_texture_rings, texture
from semiseg.errors import ConfigError

PROCEDURAL = ("grain", "weave")


def test_rings_are_the_analytic_annulus_inside_the_image_with_the_stated_radii():
    images, masks, params = make_texture_rings(40, 128, seed=3, split=0, textures=PROCEDURAL)
    yy, xx = np.mgrid[:128, :128]
    for mask, (cy, cx, r, big) in zip(masks, params):
        assert 20 <= big <= 50 and 0.3 * big <= r <= 0.8 * big
        assert big <= cy <= 127 - big and big <= cx <= 127 - big  # the whole ring lies inside
        d = np.hypot(yy - cy, xx - cx)
        assert np.array_equal(mask, ((d >= r) & (d <= big)).astype(np.int64))
    assert images.shape == (40, 1, 128, 128) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1


def test_the_ring_shows_the_ring_texture_and_the_rest_the_background():
    images, masks, _ = make_texture_rings(6, 64, seed=0, split=1, textures=PROCEDURAL)
    grain, weave = texture("grain"), texture("weave")
    for image, mask in zip(images[:, 0], masks.astype(bool)):
        t = image * 6 - 3  # undo the display map where it did not clip
        ok = (image > 0) & (image < 1)
        inside = t[mask & ok]
        # every ring pixel is some pixel of weave, every background pixel some pixel of grain
        assert np.isin(np.round(inside, 4), np.round(weave, 4)).mean() > 0.99
        assert np.isin(np.round(t[~mask & ok], 4), np.round(grain, 4)).mean() > 0.99


def test_splits_are_deterministic_distinct_and_sized():
    cfg = DataConfig(dataset="texture_rings", image_size=[32, 32], num_images=5, textures=list(PROCEDURAL))
    a, b = load_bundle(cfg), load_bundle(cfg)
    assert [len(a.train), len(a.val), len(a.test)] == [5, 5, 5] and a.num_classes == 2
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a.train, b.train))
    assert not np.array_equal(a.train[0].mask, a.val[0].mask)
    other = load_bundle(DataConfig(dataset="texture_rings", image_size=[32, 32], num_images=5,
                                   textures=list(PROCEDURAL), generator_seed=1))  # fmt: skip
    assert not np.array_equal(a.train[0].mask, other.train[0].mask)
    assert a.train[0].image.shape == (1, 32, 32)


def test_procedural_textures_are_standardised_and_fixed():
    for name in PROCEDURAL:
        t = texture(name)
        assert t.shape == (512, 512) and abs(float(t.mean())) < 1e-4 and abs(float(t.std()) - 1) < 1e-3


def test_bad_texture_names_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown texture 'cork'"):
        texture("cork")
    with pytest.raises(ConfigError, match="background, ring"):
        load_bundle(DataConfig(dataset="texture_rings", textures=["grain"]))


@pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None, reason="scikit-image (extra 'textures') absent"
)
def test_scikit_image_textures_load():
    for name in ("gravel", "brick"):
        t = texture(name)
        assert t.shape == (512, 512) and abs(float(t.std()) - 1) < 1e-3


def test_make_ring_scales_with_the_side():
    _, (_, _, r, big) = make_ring(np.random.default_rng(1), 64)
    assert 10 <= big <= 25 and 0.3 * big <= r <= 0.8 * big
