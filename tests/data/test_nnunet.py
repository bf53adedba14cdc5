"""nnU-Net's raw dataset layout on generated files: channels, labels, splits and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semiseg.config import DataConfig
from semiseg.data import load_bundle
from semiseg.data.nnunet import load_nnunet
from semiseg.errors import DataError

nib = pytest.importorskip("nibabel")
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def write(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def make_dataset(root, cases=("a", "b", "c"), labeled=("a", "b"), test=("t",)):
    meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "zone": 1, "tumour": 2},
            "numTraining": len(cases), "file_ending": ".nii.gz"}  # fmt: skip
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    for split, names, with_labels in (("Tr", cases, labeled), ("Ts", test, test)):
        for case in names:
            for c in range(2):
                write(
                    root / f"images{split}" / f"{case}_{c:04d}.nii.gz",
                    rng.random((8, 6, 3)).astype(np.float32) * (c + 1),
                )
            if case in with_labels:
                write(
                    root / f"labels{split}" / f"{case}.nii.gz", rng.integers(0, 3, (8, 6, 3)).astype(np.uint8)
                )
    return root


def test_cases_become_multichannel_volumes_with_their_labels(tmp_path):
    root = make_dataset(tmp_path / "Dataset001_Prostate")
    bundle = load_bundle(DataConfig(dataset="nnunet", path=str(root)))
    assert bundle.name == "Dataset001_Prostate" and bundle.num_classes == 3 and bundle.in_channels == 2
    assert bundle.class_names == ["background", "zone", "tumour"]
    a = bundle.train[0]
    assert a.id == "a" and a.image.shape == (2, 3, 6, 8) and a.mask.shape == (3, 6, 8)
    assert a.spacing == pytest.approx((2.5, 0.8, 0.8)) and 0 <= a.image.min() and a.image.max() <= 1
    assert [r.mask is None for r in bundle.train] == [False, False, True]  # case c has no label: unlabeled
    assert [r.id for r in bundle.test] == ["t"] and bundle.val is None
    raw = nib.load(str(root / "imagesTr" / "a_0001.nii.gz")).get_fdata()
    x = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(a.image[1], x.transpose(2, 1, 0), rtol=1e-5)  # channel 1, scaled, (z, y, x)


def test_the_ignore_label_marks_unannotated_voxels(tmp_path):
    """nnU-Net v2's partial annotations: an "ignore" label (the highest value) is not a class; its
    voxels read as the ignore index, which losses and metrics skip."""
    from semiseg.core import IGNORE_INDEX

    root = make_dataset(tmp_path / "Dataset002_Partial")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    partial = np.full((8, 6, 3), 3, np.uint8)
    partial[2:4, 2:4, 1] = 2
    write(root / "labelsTr" / "a.nii.gz", partial)
    bundle = load_nnunet(root)
    assert bundle.num_classes == 3 and bundle.class_names == ["background", "zone", "tumour"]
    a = bundle.train[0]
    assert set(np.unique(a.mask).tolist()) == {2, IGNORE_INDEX} and (a.mask == 2).sum() == 4
    meta["labels"]["ignore"] = 7
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="the 'ignore' label must be the highest value, 3, got 7"):
        load_nnunet(root)


def test_bad_datasets_are_one_line_errors(tmp_path):
    root = make_dataset(tmp_path / "missing_channel")
    (root / "imagesTr" / "b_0001.nii.gz").unlink()
    with pytest.raises(DataError, match="b_0001.nii.gz: channel 1 of case 'b' is missing"):
        load_nnunet(root)
    root = make_dataset(tmp_path / "regions")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["tumour"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="labels must map names to the integers 0..K-1"):
        load_nnunet(root)
    root = make_dataset(tmp_path / "moved")
    write(root / "labelsTr" / "a.nii.gz", np.zeros((8, 6, 3), np.uint8), affine=np.diag([0.8, 0.8, 5.0, 1.0]))
    with pytest.raises(DataError, match="a.nii.gz: affine differs"):
        load_nnunet(root)
    root = make_dataset(tmp_path / "values")
    write(root / "labelsTr" / "a.nii.gz", np.full((8, 6, 3), 4, np.uint8))
    with pytest.raises(DataError, match="label values 4 are not in dataset.json's labels"):
        load_nnunet(root)
    root = make_dataset(tmp_path / "misnamed")
    for case in ("a", "b"):  # every label misnamed: none names a case
        (root / "labelsTr" / f"{case}.nii.gz").rename(root / "labelsTr" / f"{case.upper()}.nii.gz")
    with pytest.raises(DataError, match=r"labelsTr: none of its 2 label files names a case of imagesTr"):
        load_nnunet(root)
    root = tmp_path / "values"
    (root / "dataset.json").write_text("[]")
    with pytest.raises(DataError, match="dataset.json: must hold one JSON object"):
        load_nnunet(root)
    with pytest.raises(DataError, match="dataset.json: not found"):
        load_nnunet(tmp_path / "missing_channel" / "imagesTr")
    root = make_dataset(tmp_path / "undeclared_channel")
    write(root / "imagesTr" / "a_0002.nii.gz", np.zeros((8, 6, 3), np.float32))
    with pytest.raises(
        DataError, match=r"a_0002.nii.gz: channel 2 of case 'a' is not in .*dataset.json's channel_names"
    ):
        load_nnunet(root)
    root = make_dataset(tmp_path / "no_ending")
    meta = json.loads((root / "dataset.json").read_text())
    del meta["file_ending"]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="dataset.json: needs 'file_ending'"):
        load_nnunet(root)


def test_a_multichannel_model_predicts_nnunet_channel_files(tmp_path, capsys):
    import yaml

    from semiseg.cli import main

    root = make_dataset(
        tmp_path / "Dataset001_Prostate", cases=("a", "b", "c", "d", "e"), labeled=("a", "b", "c", "d")
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"dataset": "nnunet", "path": str(root), "image_size": [8, 8],
                 "split": {"labeled": 2, "val_fraction": 0.25, "test_fraction": 0.0}},
        "model": {"name": "unet", "width": 4, "depth": 2},
        "train": {"epochs": 1, "batch_size": 2, "iters_per_epoch": 1, "progress": False, "plots": False},
    }))  # fmt: skip
    assert main(["train", "-c", str(recipe), "-o", str(tmp_path / "run")]) == 0
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--input", str(root / "imagesTs")]
    capsys.readouterr()
    assert main([*args, "--output", str(out)]) == 0
    assert f"wrote 1 mask to {out}" in capsys.readouterr().out  # one case of 2 channel files: one mask
    src, pred = nib.load(str(root / "imagesTs" / "t_0000.nii.gz")), nib.load(str(out / "t.nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == ["t.nii.gz"]
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    (root / "imagesTs" / "t_0001.nii.gz").unlink()
    assert main([*args, "--output", str(tmp_path / "pred2")]) == 2  # one line: case 't': channel 1 is missing
    assert not (tmp_path / "pred2").exists()


def test_spare_and_hidden_files_are_tolerated_as_nnunet_does(tmp_path):
    """A spare label file (no image) and macOS's "._" metadata files load as nnU-Net's own checks allow."""
    root = make_dataset(tmp_path / "Dataset003_Spare")
    write(root / "labelsTr" / "z.nii.gz", np.zeros((8, 6, 3), np.uint8))
    for folder, name in (("labelsTr", "._a.nii.gz"), ("imagesTr", "._a_0000.nii.gz")):
        (root / folder / name).write_bytes(b"\x00\x05\x16\x07")  # AppleDouble junk, not NIfTI
    bundle = load_nnunet(root)
    assert [r.id for r in bundle.train] == ["a", "b", "c"]
