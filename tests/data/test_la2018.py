"""The LA2018 layout of the 3D semi-supervised papers, on small generated files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from semiseg.cli import main
from semiseg.config import RECIPES, DataConfig, build_config, load_yaml, to_dict
from semiseg.data import load_bundle
from semiseg.data.la2018 import CASES_DIR, load_la2018
from semiseg.errors import DataError
from semiseg.methods import build_method

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
    root = fake_la(tmp_path / "empty", train=("case_a",), test=("case_t",))
    with h5py.File(root / CASES_DIR / "case_t" / "mri_norm2.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((4, 4, 0), np.float32))
        f.create_dataset("label", data=np.zeros((4, 4, 0), np.uint8))
    with pytest.raises(DataError, match=r"case_t/mri_norm2.h5: empty image: an axis of length 0"):
        load_la2018(root)


# ------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("recipe", ["supervised-la2018", "mean-teacher-la2018"])
def test_the_la2018_recipes_follow_ua_mt_and_share_everything_but_the_unlabeled_stream(recipe):
    full = build_config(load_yaml(RECIPES / f"{recipe}.yaml"), source=recipe)
    quick = build_config(load_yaml(RECIPES / f"{recipe}.yaml"), quick=True, source=recipe)
    assert full.data.dataset == "la2018" and full.model.spatial_dims == 3
    assert full.data.patch_size == [80, 112, 112]  # (x, y, z) = 112, 112, 80
    assert full.data.image_size == [-1, -1, -1]
    assert full.train.epochs * full.train.iters_per_epoch == 6000 and full.train.batch_size == 2
    assert (full.train.optimizer, full.train.lr, full.train.momentum) == ("sgd", 0.01, 0.9)
    assert full.data.split.labeled == 8 and full.data.split.first_draw == "listed"
    assert quick.train.epochs * quick.train.iters_per_epoch == 25 * 40  # the other quick recipes' budget
    build_method(full.method, full.model, in_channels=1, num_classes=2)
    if recipe == "mean-teacher-la2018":  # the ramp spans the run, from the first step, as UA-MT's
        assert full.data.split.unlabeled == "rest" and full.method["joint_batch"] is True
        assert full.method["ramp_up_steps"] == 6000 and full.method["consistency_start_step"] == 0
        assert quick.method["ramp_up_steps"] == 1000
        lower = build_config(load_yaml(RECIPES / "supervised-la2018.yaml"), source="supervised-la2018")
        a, b = to_dict(full), to_dict(lower)
        for d in (a, b):
            d.pop("method"), d.pop("output_dir"), d["data"]["split"].pop("unlabeled")
            d["quick"] = {k: v for k, v in d["quick"].items() if not k.startswith("method.")}
        assert a == b


@pytest.mark.parametrize("recipe", ["supervised-la2018", "mean-teacher-la2018"])
def test_the_la2018_recipes_train_and_evaluate_on_files_in_the_layout(tmp_path, recipe):
    fake_la(tmp_path / "la2018", train=tuple(f"case_{i}" for i in range(6)), test=("case_t",))
    out = tmp_path / "run"
    tiny = ["data.image_size=[8, 16, 16]", "data.patch_size=[4, 8, 8]", "model.depth=2", "model.width=4",
            "data.split.labeled=2", "train.epochs=1", "train.iters_per_epoch=2", "train.val_every=1",
            "train.progress=false", "train.plots=false", "train.device=cpu"]  # fmt: skip
    args = ["train", "-c", recipe, "--quick", "--data-root", str(tmp_path), "-o", str(out)]
    assert main([*args, *[x for s in tiny for x in ("--set", s)]]) == 0
    split = json.loads((out / "split.json").read_text())
    assert len(split["labeled"]) == 2 and len(split["val"]) == 1 and split["test"] == ["case_t"]
    listed = [n for n in (f"case_{i}" for i in range(6)) if n not in split["val"]]
    assert split["labeled"] == listed[:2]  # the first listed volumes after validation
    assert len(split["unlabeled"]) == (3 if recipe == "mean-teacher-la2018" else 0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "hd95_px/mean" in metrics["test"] and "dice/mean" in metrics["test"]
