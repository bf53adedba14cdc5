"""Tests for semiseg.data.acdc.load_acdc: fake flat / SSL4MIS layouts and the real dataset."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from semiseg.config import SplitConfig
from semiseg.data.acdc import load_acdc
from semiseg.data.splits import make_split
from semiseg.errors import DataError

TRAIN = ["patient003_frame01_slice_1", "patient003_frame01_slice_2", "patient004_frame02_slice_1"]
VAL = ["patient001_frame01"]
TEST = ["patient002_frame01", "patient002_frame02"]
H, W, D = 8, 6, 3


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray | None) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        if label is not None:
            f.create_dataset("label", data=label, compression="gzip")


def _fake_acdc(root: Path, layout: str = "flat") -> Path:
    """Writes a tiny ACDC copy; ``layout`` "flat" (all in data/) or "ssl4mis" (slices in data/slices/)."""
    rng = np.random.default_rng(3)
    data = root / "data"
    slice_dir = data / "slices" if layout == "ssl4mis" else data
    slice_dir.mkdir(parents=True)
    for name in TRAIN:
        label = rng.integers(0, 4, size=(H, W)).astype(np.uint8)
        _write_h5(slice_dir / f"{name}.h5", rng.random((H, W), dtype=np.float32), label)
    for name in VAL + TEST:
        label = rng.integers(0, 4, size=(D, H, W)).astype(np.uint8)
        _write_h5(data / f"{name}.h5", rng.random((D, H, W), dtype=np.float32), label)
    (root / "train_slices.list").write_text("\n".join(TRAIN) + "\n")
    (root / "val.list").write_text("\n".join(VAL) + "\n\n")
    (root / "test.list").write_text("\n".join(TEST))
    return root


@pytest.mark.parametrize("layout", ["flat", "ssl4mis"])
def test_layouts(tmp_path: Path, layout: str) -> None:
    root = _fake_acdc(tmp_path / "acdc", layout)
    bundle = load_acdc(root)
    assert bundle.name == "acdc" and bundle.num_classes == 4 and bundle.in_channels == 1
    assert bundle.class_names == ["background", "RV", "MYO", "LV"]
    assert [r.id for r in bundle.train] == TRAIN  # list order kept
    assert [r.id for r in bundle.val] == VAL and [r.id for r in bundle.test] == TEST
    rec = bundle.train[0]
    assert rec.image.shape == (1, H, W) and rec.image.dtype == np.float32
    assert rec.mask.shape == (H, W) and rec.mask.dtype == np.int64
    assert rec.group == "patient003" and bundle.train[2].group == "patient004"
    with h5py.File(rec.source) as f:
        np.testing.assert_array_equal(rec.image[0], f["image"][()])
        np.testing.assert_array_equal(rec.mask, f["label"][()])
    vol = bundle.test[1]
    assert vol.image.shape == (1, D, H, W) and vol.mask.shape == (D, H, W)
    assert vol.group == "patient002"
    if layout == "ssl4mis":
        assert "/data/slices/" in rec.source


def test_binary_lv(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    full, lv = load_acdc(root), load_acdc(root, binary_lv=True)
    assert lv.name == "acdc_lv" and lv.num_classes == 2 and lv.class_names == ["background", "LV"]
    for a, b in zip(full.train + full.val + full.test, lv.train + lv.val + lv.test):
        np.testing.assert_array_equal(b.mask, (a.mask == 3).astype(np.int64))
        assert b.mask.dtype == np.int64


@pytest.mark.parametrize(("target", "value"), [("RV", 1), ("MYO", 2), ("LV", 3)])
def test_one_structure_against_the_rest(tmp_path: Path, target: str, value: int) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    full, one = load_acdc(root), load_acdc(root, target=target)
    assert one.name == f"acdc_{target.lower()}" and one.class_names == ["background", target]
    for a, b in zip(full.train + full.val + full.test, one.train + one.val + one.test):
        np.testing.assert_array_equal(b.mask, (a.mask == value).astype(np.int64))
    with pytest.raises(ValueError, match="target must be one of RV, MYO, LV"):
        load_acdc(root, target="background")


@pytest.mark.parametrize("layout", ["flat", "ssl4mis"])
def test_listed_file_missing(tmp_path: Path, layout: str) -> None:
    root = _fake_acdc(tmp_path / "acdc", layout)
    slice_dir = root / "data" / ("slices" if layout == "ssl4mis" else "")
    (slice_dir / f"{TRAIN[1]}.h5").unlink()
    with pytest.raises(DataError, match="listed in train_slices.list but not found") as info:
        load_acdc(root)
    assert Path(info.value.path) == slice_dir / f"{TRAIN[1]}.h5"

    (root / "train_slices.list").write_text(TRAIN[0])
    (root / "data" / f"{TEST[0]}.h5").unlink()
    with pytest.raises(DataError, match="listed in test.list but not found") as info:
        load_acdc(root)
    assert Path(info.value.path) == root / "data" / f"{TEST[0]}.h5"


def test_missing_root_and_list(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ACDC folder not found"):
        load_acdc(tmp_path / "nope")
    root = _fake_acdc(tmp_path / "acdc")
    (root / "val.list").unlink()
    with pytest.raises(DataError, match="list file not found") as info:
        load_acdc(root)
    assert info.value.path == str(root / "val.list")


def test_nan_image(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    image = np.zeros((H, W), dtype=np.float32)
    image[0, 0] = np.nan
    _write_h5(root / "data" / f"{TRAIN[0]}.h5", image, np.zeros((H, W), dtype=np.uint8))
    with pytest.raises(DataError, match="image contains NaN or infinite values") as info:
        load_acdc(root)
    assert info.value.path == str(root / "data" / f"{TRAIN[0]}.h5")


def test_label_values_outside_classes(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    label = np.zeros((D, H, W), dtype=np.uint8)
    label[1, 2, 3] = 5
    _write_h5(root / "data" / f"{VAL[0]}.h5", np.zeros((D, H, W), dtype=np.float32), label)
    with pytest.raises(DataError, match=r"mask values \[5\] outside classes 0\.\.3"):
        load_acdc(root)


def test_label_shape_mismatch(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    _write_h5(root / "data" / f"{TRAIN[2]}.h5", np.zeros((H, W), np.float32), np.zeros((H, W + 1), np.uint8))
    with pytest.raises(DataError, match=f"mask size {H}x{W + 1} does not match image size {H}x{W}"):
        load_acdc(root)


def test_wrong_dimensions(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    _write_h5(root / "data" / f"{TEST[0]}.h5", np.zeros((H, W), np.float32), np.zeros((H, W), np.uint8))
    with pytest.raises(DataError, match="expected a 3D volume"):
        load_acdc(root)


def test_missing_dataset_and_corrupt_file(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    path = root / "data" / f"{TRAIN[0]}.h5"
    _write_h5(path, np.zeros((H, W), np.float32), None)
    with pytest.raises(DataError, match="no dataset 'label'"):
        load_acdc(root)
    path.write_bytes(b"definitely not HDF5")
    with pytest.raises(DataError, match="cannot read HDF5 file") as info:
        load_acdc(root)
    assert info.value.path == str(path)


# ----------------------------------------------------------------------------- real data


def _real_root(real_data_root: Path) -> Path:
    root = real_data_root / "acdc"
    if not root.is_dir():
        pytest.skip("acdc not in the real data folder")
    return root


@pytest.mark.realdata
def test_real_acdc(real_data_root: Path) -> None:
    root = _real_root(real_data_root)
    bundle = load_acdc(root)  # ~5 s on 2 slow cores: the one full load in this file
    n_val = len((root / "val.list").read_text().split())
    n_test = len((root / "test.list").read_text().split())
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1312, n_val, n_test) == (1312, 20, 40)
    assert bundle.num_classes == 4
    for rec in bundle.train:
        assert rec.image.ndim == 3 and rec.image.shape[0] == 1 and rec.mask.shape == rec.image.shape[1:]
    for rec in bundle.val + bundle.test:
        assert rec.image.ndim == 4 and rec.image.shape[0] == 1 and rec.mask.shape == rec.image.shape[1:]
    values = set()
    for rec in bundle.train[::50] + bundle.val:
        values |= set(np.unique(rec.mask).tolist())
    assert values == {0, 1, 2, 3}
    # 10 val and 20 test patients (two frames each), disjoint from the training patients.
    train_p, val_p, test_p = ({r.group for r in part} for part in (bundle.train, bundle.val, bundle.test))
    assert (len(train_p), len(val_p), len(test_p)) == (70, 10, 20)
    assert not (train_p & val_p) and not (train_p & test_p) and not (val_p & test_p)
    # the literature's labeled patients (SSL4MIS: the first 32 / 68 / 136 slices of train_slices.list)
    for n, slices, first in [(1, 32, {"patient099"}), (3, 68, {"patient099", "patient038", "patient050"})]:
        spec = SplitConfig(labeled=n, labeled_by="group", first_draw="listed")
        split = make_split(bundle, spec)
        assert {r.group for r in split.labeled} == first and len(split.labeled) == slices
    seven = make_split(bundle, SplitConfig(labeled=7, labeled_by="group", first_draw="listed"))
    assert len(seven.labeled) == 136


@pytest.mark.realdata
def test_real_acdc_binary_lv(real_data_root: Path, tmp_path: Path) -> None:
    """binary_lv on real files, via a small list over the real data folder (fast)."""
    root = _real_root(real_data_root)
    sub = tmp_path / "acdc"
    sub.mkdir()
    (sub / "data").symlink_to(root / "data")
    for name, n in [("train_slices.list", 20), ("val.list", 2), ("test.list", 2)]:
        (sub / name).write_text("\n".join((root / name).read_text().split()[:n]))
    full, lv = load_acdc(sub), load_acdc(sub, binary_lv=True)
    assert lv.num_classes == 2 and lv.class_names == ["background", "LV"] and lv.name == "acdc_lv"
    for a, b in zip(full.train + full.val + full.test, lv.train + lv.val + lv.test):
        np.testing.assert_array_equal(b.mask, (a.mask == 3).astype(np.int64))
    assert any(b.mask.any() for b in lv.val)


def test_acdc_3d_stacks_each_training_frame_in_slice_order(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    flat = load_acdc(root)
    bundle = load_acdc(root, volumes=True)
    assert bundle.name == "acdc_3d" and [r.id for r in bundle.train] == [
        "patient003_frame01",
        "patient004_frame02",
    ]
    vol = bundle.train[0]
    assert vol.image.shape == (1, 2, H, W) and vol.mask.shape == (2, H, W) and vol.group == "patient003"
    by_id = {r.id: r for r in flat.train}
    for k in (1, 2):
        np.testing.assert_array_equal(vol.image[0, k - 1], by_id[f"patient003_frame01_slice_{k}"].image[0])
        np.testing.assert_array_equal(vol.mask[k - 1], by_id[f"patient003_frame01_slice_{k}"].mask)
    assert [r.id for r in bundle.test] == [r.id for r in flat.test]  # volumes as in 2D


def test_acdc_3d_refuses_frames_whose_slices_differ_in_size(tmp_path: Path) -> None:
    root = _fake_acdc(tmp_path / "acdc")
    _write_h5(root / "data" / "patient003_frame01_slice_2.h5", np.zeros((H + 1, W), np.float32),
              np.zeros((H + 1, W), np.uint8))  # fmt: skip
    with pytest.raises(DataError, match="slices of patient003_frame01 differ in size"):
        load_acdc(root, volumes=True)


def test_real_acdc_3d_has_every_training_frame_of_train_list(real_data_root: Path) -> None:
    root = _real_root(real_data_root)
    bundle = load_acdc(root, volumes=True)
    names = [line.strip() for line in (root / "train.list").read_text().splitlines() if line.strip()]
    assert sorted(r.id for r in bundle.train) == sorted(names) and len(names) == 140
    assert sum(r.image.shape[1] for r in bundle.train) == 1312  # every training slice, once


@pytest.mark.parametrize("draw", [0, 1, 2])
def test_acdc_and_acdc_3d_label_the_same_patients(tmp_path: Path, draw: int) -> None:
    """acdc-3d compares a 2D and a 3D network on the same labeled patients: the splits by group agree."""
    root = _fake_acdc(tmp_path / "acdc")
    spec = SplitConfig(labeled=1, labeled_by="group", first_draw="listed", draw=draw, val_fraction=0.0,
                       test_fraction=0.0)  # fmt: skip
    flat, vol = make_split(load_acdc(root), spec), make_split(load_acdc(root, volumes=True), spec)
    assert {r.group for r in flat.labeled} == {r.group for r in vol.labeled}
    assert {r.group for r in flat.unlabeled} == {r.group for r in vol.unlabeled}
