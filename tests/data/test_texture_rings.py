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
        # every ring pixel is some pixel of weave, every background pixel some pixel of grain
        assert np.isin(image[mask], weave).all() and np.isin(image[~mask], grain).all()
        assert not np.isin(image[mask], grain).all()


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


def test_procedural_textures_are_standardised_into_0_1():
    for name in PROCEDURAL:
        t = texture(name).astype(np.float64)
        assert t.shape == (512, 512) and 0 <= t.min() and t.max() <= 1
        # (t + 3) / 6 of a standardised texture, clipped at ±3 sd: mean 1/2, sd 1/6
        assert abs(t.mean() - 0.5) < 2e-3 and abs(t.std() - 1 / 6) < 2e-3


def test_bad_texture_names_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown texture 'cork'"):
        texture("cork")
    with pytest.raises(ConfigError, match="background, ring"):
        load_bundle(DataConfig(dataset="texture_rings", textures=["grain"]))


@pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None, reason="scikit-image (extra 'textures') absent"
)
def test_scikit_image_textures_span_0_1():
    gravel, brick = texture("gravel"), texture("brick")
    for t in (gravel, brick):
        assert t.shape == (512, 512) and t.dtype == np.float32 and t.min() == 0 and t.max() == 1
    # each mapped from its own grey-level range: the ring (brick) is darker than the gravel
    assert gravel.mean() - brick.mean() > 0.15


def test_make_ring_scales_with_the_side():
    _, (_, _, r, big) = make_ring(np.random.default_rng(1), 64)
    assert 10 <= big <= 25 and 0.3 * big <= r <= 0.8 * big
