"""The generated "shapes" set: deterministic, and with ``every_class`` every image holds every class."""

from __future__ import annotations

import numpy as np
import pytest

from semiseg.config import build_config
from semiseg.data import load_bundle
from semiseg.data.synthetic import make_shapes


def _classes_present(records, num_classes):
    return np.array([[(r.mask == k).any() for k in range(1, num_classes)] for r in records])


def test_the_same_seed_gives_the_same_images():
    a, b = make_shapes(6, size=32, seed=3), make_shapes(6, size=32, seed=3)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    c = make_shapes(6, size=32, seed=4)
    assert not all(np.array_equal(x.image, z.image) for x, z in zip(a, c))


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_every_class_puts_every_foreground_class_in_every_image(num_classes):
    records = make_shapes(40, size=32, num_classes=num_classes, seed=0, every_class=True)
    assert _classes_present(records, num_classes).all()
    # 1-3 objects of the classes: at most one more object than classes, so no class dominates
    for r in records:
        assert set(np.unique(r.mask)) <= set(range(num_classes))


def test_by_default_classes_are_often_absent_and_every_class_changes_only_that():
    default = make_shapes(60, size=32, num_classes=4, seed=0)
    assert not _classes_present(default, 4).all()  # some image misses a class
    assert 0.2 < _classes_present(default, 4).mean() < 0.9
    every = make_shapes(60, size=32, num_classes=4, seed=0, every_class=True)
    # same value range and noise model; the object count is 3-4 rather than 1-3
    for r in every:
        assert r.image.dtype == np.float32 and 0.0 <= r.image.min() and r.image.max() <= 1.0


def test_the_config_field_reaches_the_generator():
    cfg = build_config(
        {"data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20, "shapes_every_class": True}}
    )
    bundle = load_bundle(cfg.data)
    assert _classes_present(bundle.train, bundle.num_classes).all()
    plain = load_bundle(
        build_config({"data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20}}).data
    )
    assert not _classes_present(plain.train, plain.num_classes).all()
