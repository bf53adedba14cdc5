"""Cluttered-MNIST generation: folds, determinism, clutter from the same fold only, masks, dithering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semiseg.data import cluttered_mnist as cm
from semiseg.data.cluttered_mnist import (
    CROP,
    FOLDS,
    VARIANTS,
    add_clutter,
    dither,
    generate_fold,
    mnist_folds,
)
from semiseg.errors import DataError


def fake_digits(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28×28 "digits": a bright block at a random place, faint noise elsewhere; labels 0–9."""
    rng = np.random.default_rng(seed)
    digits = rng.uniform(0, 0.2, size=(n, 28, 28))
    for d in digits:
        y, x = rng.integers(4, 14, size=2)
        d[y : y + 10, x : x + 10] = rng.uniform(0.6, 1.0, size=(10, 10))
    return digits, np.arange(n) % 10


def test_folds_partition_a_permutation_and_depend_on_the_seed():
    folds = mnist_folds(100, seed=3, sizes=(70, 20, 10))
    assert [len(folds[f]) for f in FOLDS] == [70, 20, 10]
    assert sorted(np.concatenate([folds[f] for f in FOLDS]).tolist()) == list(range(100))
    again = mnist_folds(100, seed=3, sizes=(70, 20, 10))
    assert all(np.array_equal(folds[f], again[f]) for f in FOLDS)
    other = mnist_folds(100, seed=4, sizes=(70, 20, 10))
    assert not np.array_equal(folds["val"], other["val"])
    assert [len(v) for v in mnist_folds(10_000).values()] == [8000, 1000, 1000]
    with pytest.raises(ValueError, match="need 101 digits"):
        mnist_folds(100, sizes=(80, 20, 1))


def test_dither_replaces_exactly_the_overflowing_pixels_with_values_in_range():
    canvas = np.array([[0.0, 0.5, 1.0], [1.2, 2.0, 0.9]])
    out = dither(canvas.copy(), np.random.default_rng(0))
    keep = canvas <= 1.0
    assert np.array_equal(out[keep], canvas[keep])
    assert ((out[~keep] >= 0) & (out[~keep] <= 1)).all()
    # the draws follow N(0.7, 0.33²) clipped to [0, 1]: mean 0.669, std 0.274, 18 % at exactly 1
    many = dither(np.full(20_000, 2.0), np.random.default_rng(1))
    assert abs(many.mean() - 0.669) < 0.01 and abs(many.std() - 0.274) < 0.01
    assert 0.16 < (many == 1.0).mean() < 0.20


def test_clutter_adds_crops_of_the_pool_only():
    digits, _ = fake_digits()
    canvas = np.zeros((48, 48))
    pool = np.array([3, 7])
    sources = add_clutter(canvas, digits, pool, 5, np.random.default_rng(0))
    assert set(sources.tolist()) <= {3, 7} and len(sources) == 5
    assert 0 < canvas.sum() <= 5 * CROP * CROP * digits.max()


@pytest.mark.parametrize("variant", ["48-simple", "48-hard"])
def test_fold_generation(variant):
    digits, labels = fake_digits()
    fold = np.arange(5, 25)
    out = generate_fold(digits, labels, fold, variant, seed=0, fold_id=1)
    side, pieces = VARIANTS[variant]
    n = len(fold)
    assert out.present.shape == out.absent.shape == out.masks.shape == (n, side, side)
    assert out.present.dtype == np.float32 and out.present.min() >= 0 and out.present.max() <= 1
    assert out.absent.min() >= 0 and out.absent.max() <= 1
    # every digit of the fold is the main digit of exactly one present image, with its label
    assert sorted(out.digit_index.tolist()) == fold.tolist()
    assert np.array_equal(out.labels, labels[out.digit_index])
    # clutter from the same fold only, never the main digit itself
    assert out.present_sources.shape == out.absent_sources.shape == (n, pieces)
    assert np.isin(out.present_sources, fold).all() and np.isin(out.absent_sources, fold).all()
    assert (out.present_sources != out.digit_index[:, None]).all()
    # the mask is the main digit's bright pixels, at its position, and the digit fits the canvas
    for i in range(n):
        y, x = out.position[i]
        assert 0 <= y <= side - 28 and 0 <= x <= side - 28
        expected = np.zeros((side, side), bool)
        expected[y : y + 28, x : x + 28] = digits[out.digit_index[i]] > 0.5
        assert np.array_equal(out.masks[i], expected)
        # clutter outside the digit's box
        box = np.zeros((side, side), bool)
        box[y : y + 28, x : x + 28] = True
        assert out.present[i][~box].sum() > 0
    # absent images hold clutter and nothing else: no mask, but content
    assert (out.absent.reshape(n, -1).sum(1) > 0).all()


def test_generation_is_deterministic_and_seeded():
    digits, labels = fake_digits()
    fold = np.arange(20)
    a = generate_fold(digits, labels, fold, "48-simple", seed=0, fold_id=0)
    b = generate_fold(digits, labels, fold, "48-simple", seed=0, fold_id=0)
    for name in ("present", "masks", "absent", "position", "present_sources", "absent_sources"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = generate_fold(digits, labels, fold, "48-simple", seed=1, fold_id=0)
    d = generate_fold(digits, labels, fold, "48-simple", seed=0, fold_id=2)
    assert not np.array_equal(a.present, c.present) and not np.array_equal(a.absent, d.absent)


def test_bad_arguments_raise():
    digits, labels = fake_digits()
    with pytest.raises(ValueError, match="unknown cluttered-MNIST variant"):
        generate_fold(digits, labels, np.arange(5), "64", seed=0, fold_id=0)
    with pytest.raises(ValueError, match="at least two digits"):
        generate_fold(digits, labels, np.arange(1), "48-simple", seed=0, fold_id=0)


# ------------------------------------------------------------------------------------ the disk cache
def write_fake_mnist(root: Path, n: int = 40) -> None:
    """IDX test files of ``n`` fake digits (uint8) in ``root``."""
    from test_mnist import _write_idx

    digits, labels = fake_digits(n)
    root.mkdir(parents=True, exist_ok=True)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", np.round(digits * 255))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", labels)


def test_variant_is_generated_once_then_read_back_identically(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path / "cache"))
    calls = []
    real = cm.generate_fold
    monkeypatch.setattr(cm, "generate_fold", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    first, folder = cm.load_variant(tmp_path / "mnist", "48-simple", seed=0, fold_sizes=(20, 10, 10))
    assert calls == ["48-simple"] * 3 and folder.parent == tmp_path / "cache" / "cluttered_mnist"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "test.npz", "train.npz", "val.npz"]
    second, again = cm.load_variant(tmp_path / "mnist", "48-simple", seed=0, fold_sizes=(20, 10, 10))
    assert len(calls) == 3 and again == folder  # read, not generated
    for f in FOLDS:
        for name in ("present", "absent", "masks", "labels", "digit_index", "present_sources"):
            assert np.array_equal(getattr(first[f], name), getattr(second[f], name)), (f, name)
    # 8-bit levels, as stored
    assert np.array_equal(np.round(first["train"].present * 255) / 255, first["train"].present)
    assert len(first["train"].present) == 20 and len(first["test"].absent) == 10
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["variant"] == "48-simple" and manifest["seed"] == 0 and manifest["side"] == 48
    # another seed is another folder with other images but the same folds (shared with SSLDEC)
    reseeded, other = cm.load_variant(tmp_path / "mnist", "48-simple", seed=1, fold_sizes=(20, 10, 10))
    assert other != folder and not np.array_equal(reseeded["train"].present, first["train"].present)
    for f in FOLDS:
        assert set(reseeded[f].digit_index.tolist()) == set(first[f].digit_index.tolist())
    # a damaged file is regenerated
    (folder / "val.npz").write_bytes(b"damaged")
    third, folder3 = cm.load_variant(tmp_path / "mnist", "48-simple", seed=0, fold_sizes=(20, 10, 10))
    assert folder3 == folder and len(calls) == 9
    assert np.array_equal(third["val"].present, first["val"].present)
    assert not list(folder.parent.glob(".*"))  # no temporary folder left behind


def test_missing_mnist_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: file not found"):
        cm.load_variant(tmp_path, "48-hard", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npz"))


def test_real_mnist_folds_and_one_variant(real_data_root, tmp_path):
    folds, _ = cm.load_variant(real_data_root / "mnist", "48-simple", cache_dir=tmp_path)
    assert [len(folds[f].present) for f in FOLDS] == [8000, 1000, 1000]
    index = np.concatenate([folds[f].digit_index for f in FOLDS])
    assert len(np.unique(index)) == 10_000
    for f in FOLDS:  # clutter of each fold from that fold's digits only
        own = np.unique(folds[f].digit_index)
        assert np.isin(folds[f].present_sources, own).all() and np.isin(folds[f].absent_sources, own).all()
    assert 0.03 < folds["val"].masks.mean() < 0.07  # a 28x28 digit covers ~19 % of its box


# ------------------------------------------------------------------------------------ the dataset
def test_dataset_bundle_and_a_tiny_run(tmp_path, monkeypatch):
    from semiseg.config import build_config
    from semiseg.data import load_bundle
    from semiseg.engine.run import train

    write_fake_mnist(tmp_path / "data" / "mnist")
    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cm, "FOLD_SIZES", (20, 10, 10))
    raw = {
        "data": {"dataset": "cluttered_mnist", "variant": "48-simple", "image_size": [48, 48],
                 "split": {"labeled": 4, "unlabeled": "rest", "unlabeled_supervision": "tag"}},
        "model": {"name": "unet", "width": 4, "depth": 2},
        "train": {"epochs": 1, "batch_size": 4, "iters_per_epoch": 2, "progress": False, "plots": False},
    }  # fmt: skip
    cfg = build_config(raw, source="test")
    bundle = load_bundle(cfg.data, str(tmp_path / "data"))
    assert (
        bundle.num_classes == 2 and bundle.in_channels == 1 and bundle.class_names == ["background", "digit"]
    )
    present = [r for r in bundle.train if r.label is not None]
    absent = [r for r in bundle.train if r.label is None]
    assert len(present) == len(absent) == 20 and len(bundle.val) == len(bundle.test) == 10
    assert all(r.mask.any() for r in present) and not any(r.mask.any() for r in absent)
    assert all(r.label is not None for r in bundle.val + bundle.test)
    assert bundle.train[0].image.shape == (1, 48, 48) and bundle.train[0].image.dtype == np.float32
    raw["data"]["split"]["unlabeled_supervision"] = "none"  # supervised training reads no tags (refused)
    result = train(
        build_config(raw, source="test"), data_root=str(tmp_path / "data"), output_dir=tmp_path / "run"
    )
    assert 0.0 <= result["test"]["dice/mean"] <= 1.0


def test_image_size_must_match_the_variant():
    from semiseg.config import build_config
    from semiseg.errors import ConfigError

    raw = {"data": {"dataset": "cluttered_mnist", "variant": "128", "image_size": [48, 48]}}
    with pytest.raises(ConfigError, match=r"'data.image_size' must be \[128, 128\] for cluttered_mnist"):
        build_config(raw, source="test")


def test_too_few_digits_is_a_one_line_data_error(tmp_path):
    write_fake_mnist(tmp_path / "mnist", n=30)
    with pytest.raises(DataError, match="30 digits and 30 labels; the folds need 10000 digits"):
        cm.load_variant(tmp_path / "mnist", "48-simple", cache_dir=tmp_path / "cache")
