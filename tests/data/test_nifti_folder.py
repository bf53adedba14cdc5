"""A folder of NIfTI volumes: volume records with their spacing, slice-wise training of a 2D model,
per-volume evaluation, and one-line errors for bad volumes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from semiseg.config import build_config
from semiseg.data import prepare_data
from semiseg.data.folder import load_folder
from semiseg.engine.run import train
from semiseg.errors import DataError

nib = pytest.importorskip("nibabel")


def make_volumes(root, n=6, shape=(16, 12, 4), zooms=(0.7, 0.7, 3.0)):
    """``n`` volumes (x, y, z) with a bright box labeled 1 in each, as images/ and masks/."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = rng.random(shape).astype(np.float32) * 100
        mask = np.zeros(shape, np.uint8)
        x0 = 2 + i % 5
        mask[x0 : x0 + 6, 3:9, :] = 1
        image[mask == 1] += 200
        affine = np.diag([*zooms, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(root / "images" / f"case{i}.nii.gz"))
        if i < n - 1:  # the last case has no mask: unlabeled
            nib.save(nib.Nifti1Image(mask, affine), str(root / "masks" / f"case{i}.nii.gz"))
    return root


def test_volumes_load_with_spacing_and_train_as_slices(tmp_path):
    root = make_volumes(tmp_path / "data")
    bundle = load_folder(root)
    first = bundle.train[0]
    assert first.image.shape == (1, 4, 12, 16) and first.mask.shape == (4, 12, 16)
    assert (
        first.spacing == pytest.approx((3.0, 0.7, 0.7)) and 0 <= first.image.min() and first.image.max() <= 1
    )
    assert bundle.train[-1].mask is None
    raw = {
        "data": {"dataset": "folder", "path": str(root), "image_size": [16, 16],
                 "split": {"labeled": 2, "val_fraction": 0.2, "test_fraction": 0.2}},
        "model": {"name": "unet", "width": 4, "depth": 2},
        "method": {"name": "supervised"},
        "train": {"epochs": 2, "batch_size": 4, "iters_per_epoch": 2, "progress": False, "plots": False},
    }  # fmt: skip
    cfg = build_config(copy.deepcopy(raw), [], source="test")
    data = prepare_data(cfg)
    assert len(data.split.labeled) == 2 * 4 and all(r.image.ndim == 3 for r in data.split.labeled)
    assert {r.group for r in data.split.labeled} <= {r.id for r in bundle.train}
    assert all(r.image.ndim == 4 for r in data.val + data.test)  # scored per volume
    results = train(cfg, output_dir=tmp_path / "run")
    assert len(results["test_cases"]) == len(data.test) and "hd95_mm/1" in results["test"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["labeled"]) == 8
    # a 2D model predicts a NIfTI volume slice by slice, written in the input's space
    from semiseg.cli import main

    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--input", str(root / "images"),
                 "--output", str(tmp_path / "pred")]) == 0  # fmt: skip
    src, pred = (
        nib.load(str(root / "images" / "case1.nii.gz")),
        nib.load(str(tmp_path / "pred" / "case1.nii.gz")),
    )
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)


def test_bad_volumes_are_one_line_errors(tmp_path):
    root = make_volumes(tmp_path / "moved", n=2)
    nib.save(nib.Nifti1Image(np.zeros((16, 12, 4), np.uint8), np.diag([0.7, 0.7, 2.0, 1.0])),
             str(root / "masks" / "case0.nii.gz"))  # fmt: skip
    with pytest.raises(DataError, match="case0.nii.gz: affine differs from its image's"):
        load_folder(root)
    root = make_volumes(tmp_path / "classes", n=2)
    nib.save(nib.Nifti1Image(np.full((16, 12, 4), 3, np.uint8), np.diag([0.7, 0.7, 3.0, 1.0])),
             str(root / "masks" / "case0.nii.gz"))  # fmt: skip
    with pytest.raises(DataError, match=r"mask values 3 are not classes 0..1"):
        load_folder(root)
    root = make_volumes(tmp_path / "mixed", n=2)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "slice.png")
    with pytest.raises(DataError, match="mixes NIfTI volumes and 2D image files"):
        load_folder(root)


def test_a_3d_model_trains_evaluates_and_predicts_a_nifti_folder_from_the_cli(tmp_path):
    """The issue's bar: no code, the CLI only; predicted masks open with nibabel in the input's space."""
    import yaml

    from semiseg.cli import main

    root = make_volumes(tmp_path / "data", n=8, shape=(24, 20, 6))
    recipe = tmp_path / "vol3d.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"dataset": "folder", "path": str(root), "image_size": [-1, 16, 16], "patch_size": [4, 16, 16],
                 "split": {"labeled": 3, "val_fraction": 0.25, "test_fraction": 0.25}},
        "model": {"name": "unet", "width": 4, "depth": 2, "spatial_dims": 3, "inplane_levels": 1},
        "method": {"name": "supervised"},
        "train": {"epochs": 2, "batch_size": 2, "iters_per_epoch": 2, "progress": False, "plots": False,
                  "augment": {"hflip": True, "dflip": True}},
        "inference": {"blend": "trim", "overlap": 0.5},
    }))  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "-c", str(recipe), "-o", str(run)]) == 0
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--split", "test", "-o", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert "hd95_mm/1" in metrics["metrics"] and "asd_mm/1" in metrics["metrics"]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--input", str(root / "images"),
                 "--output", str(out)]) == 0  # fmt: skip
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in (root / "images").iterdir())
    src, pred = nib.load(str(root / "images" / "case0.nii.gz")), nib.load(str(out / "case0.nii.gz"))
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    import semiseg  # the Python API gives the file's (x, y, z) axis order too, the same labels

    assert np.array_equal(
        semiseg.load(run / "best.pt").predict(root / "images" / "case0.nii.gz"), pred.dataobj
    )
    # a.nii beside a.nii.gz would both write a.nii.gz: refused in one line before any mask is written
    both = tmp_path / "both"
    both.mkdir()
    (both / "case0.nii.gz").write_bytes((root / "images" / "case0.nii.gz").read_bytes())
    nib.save(nib.load(str(root / "images" / "case0.nii.gz")), str(both / "case0.nii"))
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--input", str(both),
                 "--output", str(tmp_path / "pred2")]) == 2  # fmt: skip
    assert not (tmp_path / "pred2").exists()


def test_a_target_spacing_resamples_the_training_grid_and_predictions_return_to_each_volume(tmp_path):
    from semiseg.data.patches import PatchSet
    from semiseg.engine.evaluate import predict_volume
    from semiseg.engine.inference import build_predict

    root = make_volumes(tmp_path / "data", n=8, shape=(24, 20, 6))  # spacing (D, H, W) = (3.0, 0.7, 0.7)
    raw = {"data": {"dataset": "folder", "path": str(root), "image_size": [-1, -1, -1], "patch_size": [4, 8, 8],
                    "target_spacing": [1.5, 1.4, 1.4], "split": {"labeled": 3, "val_fraction": 0.25, "test_fraction": 0.25}},
           "model": {"name": "unet", "width": 4, "depth": 2, "spatial_dims": 3, "inplane_levels": 1},
           "train": {"epochs": 1, "batch_size": 2, "iters_per_epoch": 2, "progress": False, "plots": False}}  # fmt: skip
    cfg = build_config(copy.deepcopy(raw), [], source="test")
    data = prepare_data(cfg)
    assert isinstance(data.labeled, PatchSet)
    assert data.labeled.volumes[0].arrays()[0].shape == (
        1,
        12,
        10,
        12,
    )  # 6 x 3.0 / 1.5, 20 x 0.7 / 1.4, 24 x 0.7 / 1.4
    seen = []

    def net(x):
        seen.append(tuple(x.shape))
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    whole = build_config(copy.deepcopy(raw), ["inference.mode=whole"], source="test")
    probs = predict_volume(build_predict(net, whole), data.test[0], cfg.data.image_size, torch.device("cpu"))
    assert seen == [(1, 1, 12, 10, 12)]  # the network sees the resampled grid ...
    assert probs.shape == (2, 6, 20, 24)  # ... and the probabilities come back at the volume's shape
    seen.clear()
    predict_volume(build_predict(net, cfg), data.test[0], cfg.data.image_size, torch.device("cpu"))
    assert {s[1:] for s in seen} == {(1, 4, 8, 8)} and sum(s[0] for s in seen) > 1  # windows on that grid
    results = train(cfg, output_dir=tmp_path / "run")
    assert "dice/mean" in results["test"]
    bad = copy.deepcopy(raw)
    bad["data"]["image_size"] = [-1, 16, 16]
    with pytest.raises(Exception, match="must be -1 on the axes that data.target_spacing resamples"):
        build_config(bad, [], source="test")


def test_lazy_and_eager_loading_train_a_3d_model_to_the_same_weights_and_metrics(tmp_path):
    """data.loading changes memory, never results: the same epochs, checkpoint and test metrics."""
    from semiseg.data.records import ARRAYS

    root = make_volumes(tmp_path / "data", n=7, shape=(20, 16, 6))
    lazy = load_folder(root, loading="lazy")
    eager = load_folder(root, loading="eager")
    assert all(r.is_lazy for r in lazy.train) and not any(r.is_lazy for r in eager.train)
    for a, b in zip(eager.train, lazy.train):
        assert (a.id, a.shape, a.spacing, a.has_mask) == (b.id, b.shape, b.spacing, b.has_mask)
        assert np.array_equal(a.image, b.image) and (a.mask is None) == (b.mask is None)
    results = {}
    for loading in ("eager", "lazy"):
        ARRAYS.clear()
        raw = {
            "data": {"dataset": "folder", "path": str(root), "image_size": [-1, 12, 16], "patch_size": [4, 8, 8],
                     "loading": loading, "cache_dir": str(tmp_path / "cache"),
                     "split": {"labeled": 2, "supervision": "sparse", "sparse_pixels": 30,
                               "val_fraction": 0.2, "test_fraction": 0.2}},
            "model": {"name": "unet", "width": 4, "depth": 2, "spatial_dims": 3, "inplane_levels": 1},
            "method": {"name": "mean_teacher"},
            "train": {"epochs": 2, "batch_size": 2, "iters_per_epoch": 2, "progress": False, "plots": False,
                      "augment": {"hflip": True, "dflip": True}},
        }  # fmt: skip
        cfg = build_config(copy.deepcopy(raw), [], source="test")
        out = tmp_path / loading
        train(cfg, output_dir=out)
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["method_state"]
        results[loading] = (json.loads((out / "metrics.json").read_text())["test"], state)
    assert results["eager"][0] == results["lazy"][0]
    assert _same(results["eager"][1], results["lazy"][1])
    assert any((tmp_path / "cache" / "grid3d").rglob("image.npy"))  # the lazy run trained from the store


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_volume_masks_with_unlabeled_voxels(tmp_path):
    """data.mask_unlabeled on NIfTI masks: scribbled volumes, the rest read as the ignore index."""
    from semiseg.core import IGNORE_INDEX

    root = make_volumes(tmp_path / "v", n=2)
    path = root / "masks" / "case0.nii.gz"
    img = nib.load(str(path))
    mask = np.asarray(img.dataobj).copy()
    mask[:, :, 1:] = 9  # only the first slice is labeled
    nib.save(nib.Nifti1Image(mask, img.affine), str(path))
    with pytest.raises(DataError, match="mask values 9 are not classes 0..1"):
        load_folder(root)
    (record,) = [r for r in load_folder(root, mask_unlabeled=9).train if r.has_mask]
    assert (record.mask == IGNORE_INDEX).sum() == mask[:, :, 1:].size and set(np.unique(record.mask)) == {
        0,
        1,
        255,
    }
    (root / "tags.json").write_text(json.dumps({"case1": [1]}))  # tags name 2D images only
    with pytest.raises(DataError, match="'case1' is a volume: the file names 2D images"):
        load_folder(root, mask_unlabeled=9)


def test_a_2d_model_s_split_of_volumes_is_its_slices_in_data_split_too_and_item_fractions_are_refused(
    tmp_path,
):
    """`data split` writes the ids a run trains on (a 2D model: the volumes' slices); labeled_item_fraction,
    which labels a fraction of 2D items per group, refuses volumes instead of labeling them whole."""
    import yaml

    from semiseg.cli import main
    from semiseg.errors import ConfigError

    root = make_volumes(tmp_path / "data", n=8)
    raw = {"data": {"dataset": "folder", "path": str(root), "image_size": [16, 16],
                    "split": {"labeled": 3, "val_fraction": 0.25, "test_fraction": 0.25}},
           "model": {"name": "unet", "width": 4, "depth": 2},
           "train": {"epochs": 1, "batch_size": 2, "iters_per_epoch": 1, "progress": False, "plots": False}}  # fmt: skip
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(recipe), "-o", str(tmp_path / "run"), "--no-test"]) == 0
    assert main(["data", "split", "-c", str(recipe), "-o", str(tmp_path / "split.json")]) == 0
    run, alone = (
        json.loads((p).read_text()) for p in (tmp_path / "run" / "split.json", tmp_path / "split.json")
    )
    assert run == alone and all("_slice_" in i for i in run["labeled"])
    with pytest.raises(ConfigError, match="labeled_item_fraction: .* this dataset's items are volumes"):
        prepare_data(
            build_config(copy.deepcopy(raw), ["data.split.labeled_item_fraction=0.25"], source="test")
        )


def test_a_3d_run_on_volumes_of_mixed_spacing_notes_the_target_spacing_option(tmp_path, capsys):
    from semiseg.engine.run import note_mixed_spacing

    root = make_volumes(tmp_path / "data", n=6, shape=(24, 20, 6))
    coarse = make_volumes(tmp_path / "coarse", n=2, shape=(24, 20, 6), zooms=(0.7, 0.7, 6.0))
    for name in ("images", "masks"):  # two volumes at twice the slice spacing
        for f in (coarse / name).iterdir():
            f.rename(root / name / f"coarse_{f.name}")
    raw = {"data": {"dataset": "folder", "path": str(root), "image_size": [-1, -1, -1], "patch_size": [4, 8, 8],
                    "split": {"labeled": 3, "val_fraction": 0.25, "test_fraction": 0.25}},
           "model": {"name": "unet", "width": 4, "depth": 2, "spatial_dims": 3, "inplane_levels": 1}}  # fmt: skip
    data = prepare_data(build_config(copy.deepcopy(raw), [], source="test"))
    note = note_mixed_spacing(build_config(copy.deepcopy(raw), [], source="test"), data.bundle.train)
    assert note and "[3.0, 0.7, 0.7] .. [6.0, 0.7, 0.7] mm" in note and "data.target_spacing" in note
    assert capsys.readouterr().err.strip() == note
    resampled = build_config(copy.deepcopy(raw), ["data.target_spacing=[3.0, -1, -1]"], source="test")
    assert note_mixed_spacing(resampled, data.bundle.train) is None  # the user chose a grid
    uniform = make_volumes(tmp_path / "uniform", n=6, shape=(24, 20, 6))
    same = prepare_data(build_config(copy.deepcopy(raw), [f"data.path={uniform}"], source="test"))
    assert note_mixed_spacing(build_config(copy.deepcopy(raw), [], source="test"), same.bundle.train) is None
