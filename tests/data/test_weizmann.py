"""Tests for semiseg.data.weizmann.load_weizmann: a fake layout and the real dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semiseg.data.weizmann import load_weizmann
from semiseg.errors import DataError


def _fake_weizmann(root: Path, numbers: list[int], shape: tuple[int, int] = (12, 16)) -> Path:
    (root / "gray").mkdir(parents=True)
    (root / "figure_ground").mkdir()
    rng = np.random.default_rng(2)
    for n in numbers:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(image).save(root / "gray" / f"horse{n:03d}.jpg")
        mask = np.zeros(shape, dtype=np.uint8)
        mask[2:8, 3:10] = 255
        Image.fromarray(mask).save(root / "figure_ground" / f"horse{n:03d}.jpg")
    return root


def test_half_half_protocol(tmp_path: Path) -> None:
    root = _fake_weizmann(tmp_path / "w", [5, 1, 3, 2, 4])
    bundle = load_weizmann(root)
    assert bundle.name == "weizmann_horse" and bundle.num_classes == 2 and bundle.in_channels == 1
    assert bundle.class_names == ["background", "horse"]
    assert [r.id for r in bundle.train] == ["horse001", "horse003", "horse005"]
    assert [r.id for r in bundle.test] == ["horse002", "horse004"]
    assert bundle.val is None
    rec = bundle.train[0]
    assert rec.image.shape == (1, 12, 16) and rec.image.dtype == np.float32
    assert rec.mask.dtype == np.int64 and set(np.unique(rec.mask)) == {0, 1}
    assert rec.mask[2:8, 3:10].all() and rec.mask.sum() == 6 * 7
    assert rec.source == str(root / "gray" / "horse001.jpg")


def test_sorted_by_number_not_name(tmp_path: Path) -> None:
    root = tmp_path / "w"
    (root / "gray").mkdir(parents=True)
    (root / "figure_ground").mkdir()
    for name in ["horse2", "horse10", "horse1"]:
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / "gray" / f"{name}.jpg")
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / "figure_ground" / f"{name}.png")
    bundle = load_weizmann(root)
    assert [r.id for r in bundle.train] == ["horse1", "horse10"]
    assert [r.id for r in bundle.test] == ["horse2"]


def test_missing_mask(tmp_path: Path) -> None:
    root = _fake_weizmann(tmp_path / "w", [1, 2, 3])
    (root / "figure_ground" / "horse002.jpg").unlink()
    with pytest.raises(DataError, match="mask for horse002.jpg not found") as info:
        load_weizmann(root)
    assert info.value.path == str(root / "figure_ground" / "horse002.jpg")


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Weizmann horse folder not found"):
        load_weizmann(tmp_path / "nope")
    (tmp_path / "w" / "gray").mkdir(parents=True)
    with pytest.raises(DataError, match="folder not found") as info:
        load_weizmann(tmp_path / "w")
    assert info.value.path == str(tmp_path / "w" / "figure_ground")
    (tmp_path / "w" / "figure_ground").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_weizmann(tmp_path / "w")


def test_size_mismatch_and_corrupt(tmp_path: Path) -> None:
    root = _fake_weizmann(tmp_path / "w", [1, 2])
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(root / "figure_ground" / "horse002.jpg")
    with pytest.raises(DataError, match="mask size 5x5 does not match image size 12x16"):
        load_weizmann(root)
    (root / "gray" / "horse002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image") as info:
        load_weizmann(root)
    assert info.value.path == str(root / "gray" / "horse002.jpg")


@pytest.mark.realdata
def test_real_weizmann(real_data_root: Path) -> None:
    root = real_data_root / "weizmann_horse"
    if not root.is_dir():
        pytest.skip("weizmann_horse not in the real data folder")
    bundle = load_weizmann(root)
    assert len(bundle.train) == 164 and len(bundle.test) == 164 and bundle.val is None
    assert bundle.train[0].id == "horse001" and bundle.test[0].id == "horse002"
    assert bundle.train[-1].id == "horse327" and bundle.test[-1].id == "horse328"
    ids = [r.id for r in bundle.train + bundle.test]
    assert len(set(ids)) == 328
    for rec in bundle.train + bundle.test:
        assert rec.image.ndim == 3 and rec.image.shape[0] == 1
        assert rec.mask.shape == rec.image.shape[1:]
        assert rec.mask.min() >= 0 and rec.mask.max() <= 1
        assert 0.0 <= rec.image.min() and rec.image.max() <= 1.0
    foreground = np.mean([r.mask.mean() for r in bundle.train])
    assert 0.05 < foreground < 0.8  # horses are a sizeable part of each picture
