"""Segmenting a folder: NIfTI volumes are checked from their headers first and read one at a time;
a volume that fails to read later removes the masks the call wrote."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiseg.engine.predict import predict_folder
from semiseg.errors import DataError

nib = pytest.importorskip("nibabel")

STATE = {"image_size": [16, 16], "in_channels": 1}


def threshold_net(x: torch.Tensor) -> torch.Tensor:
    """Two-class logits: foreground where the (scaled) intensity is above 0.5."""
    return torch.cat([0.5 - x, x - 0.5], dim=1)


def volume(path, data, affine=None):
    nib.save(
        nib.Nifti1Image(
            np.asarray(data, np.float32), np.diag([0.8, 0.8, 4.0, 1.0]) if affine is None else affine
        ),
        str(path),
    )


def test_volumes_are_segmented_one_by_one_in_their_own_space(tmp_path, monkeypatch):
    import semiseg.data.nnunet as nnunet

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    data = {name: rng.random((16, 16, 3)) for name in ("a", "b", "c")}
    for name, values in data.items():
        volume(src / f"{name}.nii.gz", values)
    reads = []
    real = nnunet.read_case
    monkeypatch.setattr(
        nnunet, "read_case", lambda files, intensity="auto": reads.append(files) or real(files, intensity)
    )
    assert predict_folder(threshold_net, STATE, src, tmp_path / "out", torch.device("cpu")) == 3
    assert len(reads) == 3  # read when segmented, not all up front
    for name in ("a", "b", "c"):
        out = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert out.shape == (16, 16, 3) and np.allclose(out.affine, np.diag([0.8, 0.8, 4.0, 1.0]))
        # voxel for voxel the threshold of the volume's min-max scaled intensities, in the input's axes
        x = data[name].astype(np.float32)
        expected = (x - x.min()) / (x.max() - x.min()) > 0.5
        assert np.array_equal(np.asarray(out.dataobj), expected.astype(np.uint8))


def test_a_bad_header_stops_before_anything_is_written(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    volume(src / "a.nii.gz", np.zeros((16, 16, 3)))
    volume(src / "b.nii.gz", np.zeros((16, 16, 3, 2)))
    with pytest.raises(DataError, match=r"b.nii.gz: expected a 3-D volume"):
        predict_folder(threshold_net, STATE, src, tmp_path / "out", torch.device("cpu"))
    assert not (tmp_path / "out").exists()


def test_a_volume_that_fails_to_read_later_removes_the_masks_of_this_call(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    volume(src / "a.nii.gz", np.random.default_rng(1).random((16, 16, 3)))
    bad = np.zeros((16, 16, 3))
    bad[2, 3, 1] = np.nan
    volume(src / "b.nii.gz", bad)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's file")
    with pytest.raises(DataError, match=r"b.nii.gz: 1 voxels are NaN or infinite"):
        predict_folder(threshold_net, STATE, src, out, torch.device("cpu"))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # a.nii.gz removed, the folder kept
    (out / "a.nii.gz").write_text("an earlier mask")  # replaced by this call, then not deleted
    with pytest.raises(DataError, match=r"b.nii.gz: 1 voxels are NaN or infinite"):
        predict_folder(threshold_net, STATE, src, out, torch.device("cpu"))
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "keep.txt"]


def test_output_folder_mistakes_are_refused_before_anything_is_written(tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(src / "a.png")
    with pytest.raises(DataError, match=r"in: the output folder is the input folder"):
        predict_folder(threshold_net, STATE, src, src, torch.device("cpu"))
    (tmp_path / "x.png").write_bytes(b"mine")
    with pytest.raises(DataError, match=r"x.png: the output folder is a file"):
        predict_folder(threshold_net, STATE, src, tmp_path / "x.png", torch.device("cpu"))
    assert (tmp_path / "x.png").read_bytes() == b"mine" and sorted(p.name for p in src.iterdir()) == ["a.png"]
    np.save(src / "a.npy", np.zeros((16, 16), np.float32))
    with pytest.raises(DataError, match=r"two inputs with the same name stem 'a'"):
        predict_folder(threshold_net, STATE, src, tmp_path / "out", torch.device("cpu"))
    assert not (tmp_path / "out").exists()


def test_a_model_trained_on_la2018_predicts_inputs_z_scored_as_its_training_volumes():
    """LA2018's mri_norm2 volumes are z-scored per volume: predict scales NIfTI inputs the same way,
    where any other run keeps its data.intensity ("auto" = min-max for volumes)."""
    from semiseg.config import build_config, predict_intensity

    la = build_config({"data": {"dataset": "la2018", "image_size": [-1, 64, 64], "patch_size": [16, 64, 64]},
                       "model": {"spatial_dims": 3}}, [], source="test")  # fmt: skip
    assert predict_intensity(la) == "zscore"
    folder = build_config({"data": {"dataset": "folder", "intensity": "percentile"}}, [], source="test")
    assert predict_intensity(folder) == "percentile" and predict_intensity(None) == "auto"


def test_images_are_segmented_a_chunk_at_a_time_and_a_bad_one_is_caught_before_any_is_written(
    tmp_path, monkeypatch
):
    """2D images: read IMAGE_CHUNK at a time (memory does not grow with the folder); a file that is not
    an image stops the command before anything is written; one that fails only when decoded later
    removes this call's masks."""
    from PIL import Image

    import semiseg.engine.predict as predict_module

    monkeypatch.setattr(predict_module, "IMAGE_CHUNK", 2)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(src / f"im{i}.png")
    batches = []
    real = predict_module.predict_slices
    monkeypatch.setattr(
        predict_module, "predict_slices", lambda p, s, *a, **k: batches.append(len(s)) or real(p, s, *a, **k)
    )
    assert predict_folder(threshold_net, STATE, src, tmp_path / "out", torch.device("cpu")) == 5
    assert batches == [2, 2, 1] and len(list((tmp_path / "out").glob("*.png"))) == 5

    (src / "im5.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"im5.png: cannot read image"):
        predict_folder(threshold_net, STATE, src, tmp_path / "out2", torch.device("cpu"))
    assert not (tmp_path / "out2").exists()

    (src / "im5.png").unlink()
    np.save(src / "im4b.npy", np.zeros((5, 16, 16), np.float32))  # 5 channels for a 1-channel model
    with pytest.raises(DataError, match=r"im4b.npy: image has 5 channel"):
        predict_folder(threshold_net, STATE, src, tmp_path / "out3", torch.device("cpu"))
    assert not (tmp_path / "out3").exists()  # im0..im3 were written, then removed with the folder


def test_a_classifier_writes_one_csv_of_classes_and_refuses_volumes(tmp_path, capsys):
    """A classifier's network gives [B, K]: one row per image (its class and probabilities), no PNG."""
    from PIL import Image

    def mean_classifier(x: torch.Tensor) -> torch.Tensor:  # class 1 for bright images
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 10

    src = tmp_path / "in"
    src.mkdir()
    for name, level in (("dark", 20), ("bright", 230)):
        Image.fromarray(np.full((20, 12), level, np.uint8)).save(src / f"{name}.png")
    state = {**STATE, "num_classes": 2}
    assert predict_folder(mean_classifier, state, src, tmp_path / "out", torch.device("cpu")) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.csv"]
    lines = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "image,class,p_0,p_1"
    rows = {r.split(",")[0]: r.split(",")[1:] for r in lines[1:]}
    assert rows["bright.png"][0] == "1" and rows["dark.png"][0] == "0"
    assert abs(sum(float(v) for v in rows["dark.png"][1:]) - 1.0) < 1e-5
    assert "note: 2 of 2 images are not 16x16 and were resized" in capsys.readouterr().err  # 20x12 files
    fits = tmp_path / "fits"
    fits.mkdir()
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(fits / "a.png")
    predict_folder(mean_classifier, state, fits, tmp_path / "out_fits", torch.device("cpu"))
    assert "note" not in capsys.readouterr().err  # the training size: nothing to say
    volume(src / "v.nii.gz", np.zeros((16, 16, 3)))
    with pytest.raises(DataError, match="v.nii.gz: a classification model labels 2D images, not volumes"):
        predict_folder(mean_classifier, state, src, tmp_path / "out2", torch.device("cpu"))
    assert not (tmp_path / "out2").exists()
    only_volumes = tmp_path / "vols"
    only_volumes.mkdir()
    volume(only_volumes / "w.nii.gz", np.zeros((16, 16, 3)))
    with pytest.raises(DataError, match="w.nii.gz: a classification model labels 2D images"):
        predict_folder(
            mean_classifier, state, only_volumes, tmp_path / "out3", torch.device("cpu"), classify=True
        )
    assert not (tmp_path / "out3").exists()
