"""The LA2018 layout of the 3D semi-supervised papers, on small generated files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from semiseg.config import DataConfig
from semiseg.data import load_bundle
from semiseg.data.la2018 import CASES_DIR, load_la2018
from semiseg.errors import DataError

SHAPE = (10, 8, 6)  # (x, y, z) as stored


def write_case(root: Path, name: str, seed: int, label_value: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / CASES_DIR / name
    folder.mkdir(parents=True)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 1:4, seed % 3 : seed % 3 + 2] = label_value
    with h5py.File(folder / "mri_norm2.h5", "w") as f:
        f.create_dataset("image", data=rng.random(SHAPE).astype(np.float32))
        f.create_dataset("label", data=label)
    return folder / "mri_norm2.h5"


def fake_la(root: Path, train=("case_a", "case_b", "case_c"), test=("case_t",)) -> Path:
    for i, name in enumerate([*train, *test]):
        write_case(root, name, i)
    (root / "train.list").write_text("\n".join(train) + "\n")
    (root / "test.list").write_text("\n".join(test))
    return root


def test_volumes_are_z_y_x_with_their_labels(tmp_path):
    root = fake_la(tmp_path / "la")
    bundle = load_la2018(root)
    assert [r.id for r in bundle.train] == ["case_a", "case_b", "case_c"] and [r.id for r in bundle.test] == [
        "case_t"
    ]
    r = bundle.train[1]
    assert r.image.shape == (1, 6, 8, 10) and r.mask.shape == (6, 8, 10) and r.spacing is None
    with h5py.File(root / CASES_DIR / "case_b" / "mri_norm2.h5") as f:
        image, label = np.asarray(f["image"]), np.asarray(f["label"])
    np.testing.assert_array_equal(r.image[0], image.transpose(2, 1, 0))  # [D, H, W] = (z, y, x)
    assert r.mask[1, 1, 2] == label[2, 1, 1] == 1
    via_config = load_bundle(DataConfig(dataset="la2018", path=str(root)))
    assert via_config.num_classes == 2 and len(via_config.train) == 3


def test_bad_layouts_are_one_line_errors(tmp_path):
    root = fake_la(tmp_path / "missing")
    (root / "test.list").write_text("case_t\ncase_gone\n")
    with pytest.raises(DataError, match="case_gone/mri_norm2.h5: listed in test.list but not found"):
        load_la2018(root)
    root = fake_la(tmp_path / "labels", train=("case_a",), test=())
    write_case(root, "case_b", 1, label_value=2)
    (root / "test.list").write_text("case_b\n")
    with pytest.raises(DataError, match=r"case_b/mri_norm2.h5: mask values \[2\] outside classes 0..1"):
        load_la2018(root)
    with pytest.raises(DataError, match="LA2018 folder not found"):
        load_la2018(tmp_path / "nowhere")
