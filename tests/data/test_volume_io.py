"""NIfTI volumes in semiseg's [D, H, W] order: axes and spacing, the geometry checks, label writing."""

from __future__ import annotations

import numpy as np
import pytest

from semiseg.data.volume_io import (
    check_same_geometry,
    is_nifti,
    nifti_stem,
    probe_volume,
    read_volume,
    write_label_volume,
)
from semiseg.errors import DataError

nib = pytest.importorskip("nibabel")


def save(path, data, zooms=(0.8, 0.9, 5.0), affine=None):
    if affine is None:
        affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(np.asarray(data), affine)
    nib.save(img, str(path))
    return path


def test_axes_become_slices_rows_columns_and_the_spacing_follows(tmp_path):
    data = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)  # (x, y, z)
    volume, geo = read_volume(save(tmp_path / "ct.nii.gz", data))
    assert volume.shape == (3, 6, 5) and volume.dtype == np.float32  # (z, y, x) = (D, H, W)
    for x, y, z in [(0, 0, 0), (4, 5, 2), (1, 3, 1)]:
        assert volume[z, y, x] == data[x, y, z]
    assert geo.spacing == pytest.approx((5.0, 0.9, 0.8)) and geo.shape == (5, 6, 3)
    assert is_nifti("a/b.NII.GZ") and nifti_stem("case_001.nii.gz") == "case_001" and not is_nifti("a.png")


def test_labels_are_written_back_in_the_inputs_space(tmp_path):
    affine = np.array([[0, 0, 2.0, 10], [0, 1.5, 0, -4], [1.2, 0, 0, 7], [0, 0, 0, 1]])
    _, geo = read_volume(save(tmp_path / "img.nii", np.zeros((4, 5, 6), np.float32), affine=affine))
    labels = np.random.default_rng(0).integers(0, 3, (6, 5, 4))  # [D, H, W]
    write_label_volume(tmp_path / "pred.nii.gz", labels, geo)
    back, geo2 = read_volume(tmp_path / "pred.nii.gz", dtype=np.int64)
    assert np.array_equal(back, labels) and np.allclose(geo2.affine, affine)
    assert nib.load(str(tmp_path / "pred.nii.gz")).get_data_dtype() == np.uint8
    with pytest.raises(DataError, match="do not fit the volume"):
        write_label_volume(tmp_path / "bad.nii.gz", labels[:, :, :3], geo)
    assert not (tmp_path / "bad.nii.gz").exists()


def test_bad_volumes_and_mismatched_masks_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match=r"expected a 3-D volume .* got shape \(4, 5, 6, 2\)"):
        read_volume(save(tmp_path / "4d.nii.gz", np.zeros((4, 5, 6, 2), np.float32)))
    for reader in (read_volume, probe_volume):  # before any reduction over the voxels fails
        with pytest.raises(
            DataError, match=r"empty.nii.gz: empty volume: an axis of length 0 \(shape \(4, 5, 0\)\)"
        ):
            reader(save(tmp_path / "empty.nii.gz", np.zeros((4, 5, 0), np.float32)))
    volume, _ = read_volume(save(tmp_path / "one.nii.gz", np.zeros((4, 5, 6, 1), np.float32)))
    assert volume.shape == (6, 5, 4)  # a trailing axis of one frame is dropped
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match="broken.nii.gz: cannot read NIfTI file"):
        read_volume(tmp_path / "broken.nii.gz")
    _, a = read_volume(save(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32)))
    _, b = read_volume(save(tmp_path / "mask.nii.gz", np.zeros((4, 5, 7), np.uint8)))
    _, c = read_volume(save(tmp_path / "moved.nii.gz", np.zeros((4, 5, 6), np.uint8), zooms=(0.8, 0.9, 2.5)))
    with pytest.raises(
        DataError, match=r"mask.nii.gz: shape \(4, 5, 7\) differs from its image's \(4, 5, 6\)"
    ):
        check_same_geometry(tmp_path / "img.nii.gz", tmp_path / "mask.nii.gz", a, b)
    with pytest.raises(DataError, match="moved.nii.gz: affine differs"):
        check_same_geometry(tmp_path / "img.nii.gz", tmp_path / "moved.nii.gz", a, c)
    check_same_geometry(tmp_path / "img.nii.gz", tmp_path / "img.nii.gz", a, a)


def test_a_nifti2_input_gets_nifti2_labels_in_its_space(tmp_path):
    affine = np.diag([0.7, 0.8, 5.0, 1.0])
    nib.save(nib.Nifti2Image(np.zeros((4, 5, 6), np.float32), affine), str(tmp_path / "img.nii.gz"))
    _, geo = read_volume(tmp_path / "img.nii.gz")
    assert geo.nifti2
    write_label_volume(tmp_path / "pred.nii.gz", np.ones((6, 5, 4), np.int64), geo)
    back = nib.load(str(tmp_path / "pred.nii.gz"))
    assert isinstance(back.header, nib.Nifti2Header) and np.allclose(back.affine, affine)


def test_the_header_probe_checks_a_volume_without_reading_it_and_nan_voxels_fail(tmp_path):
    geo = probe_volume(save(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32)))
    assert geo.shape == (4, 5, 6) and geo.spacing == pytest.approx((5.0, 0.9, 0.8))
    with pytest.raises(DataError, match=r"expected a 3-D volume .* got shape \(4, 5, 6, 2\)"):
        probe_volume(save(tmp_path / "4d.nii.gz", np.zeros((4, 5, 6, 2), np.float32)))
    data = np.zeros((4, 5, 6), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    with pytest.raises(DataError, match="nan.nii.gz: 2 voxels are NaN or infinite"):
        read_volume(save(tmp_path / "nan.nii.gz", data))
