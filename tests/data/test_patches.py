"""Volume patches for 3D models: the forced-foreground share, padding with the ignore label, keyed
randomness, weak labels counted per patch, and prepare_data choosing patches for a 3D model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiseg.config import AugmentConfig, StrongAugmentConfig, build_config
from semiseg.core import IGNORE_INDEX, ViewSpec
from semiseg.data.patches import PatchSet, crop, forced
from semiseg.data.records import Record
from semiseg.data.transforms import sample_rng


def volume(i: int, shape=(6, 20, 24), box=True) -> Record:
    """A volume whose class-1 box is small (one voxel in 200), so uniform patches rarely hit it."""
    rng = np.random.default_rng(i)
    image = rng.random((1, *shape)).astype(np.float32)
    mask = np.zeros(shape, np.int64)
    if box:
        mask[1:3, 2:4, 18:21] = 1
    return Record(f"vol{i}", image, mask)


def make(records, **kwargs) -> PatchSet:
    args = dict(supervision="dense", num_classes=2, image_size=[-1, -1, -1], patch_size=[4, 8, 8])
    return PatchSet(records, **{**args, **kwargs})


@pytest.mark.parametrize("ratio", [0.0, 0.33, 0.5, 1.0])
def test_any_run_of_positions_holds_the_forced_share(ratio):
    flags = [forced(i, ratio) for i in range(300)]
    for start in (0, 17, 101):
        for n in (7, 50):
            k = sum(flags[start : start + n])
            assert int(np.floor(n * ratio)) <= k <= int(np.ceil(n * ratio))


def test_forced_patches_contain_foreground_and_unforced_are_uniform():
    ps = make([volume(0)], foreground_ratio=0.5)
    hits = {True: [], False: []}
    for position in range(200):
        item = ps[(0, position)]
        hits[forced(position, 0.5)].append(bool((item["mask"] == 1).any()))
    assert all(hits[True])  # every forced patch shows the box
    assert np.mean(hits[False]) < 0.6  # a uniform 4x8x8 patch of 6x20x24 often misses it


def test_patches_outside_the_volume_are_ignored_not_background():
    small = Record("small", np.ones((1, 2, 5, 5), np.float32), np.zeros((2, 5, 5), np.int64))
    ps = make([small], patch_size=[4, 8, 8], foreground_ratio=0.0)
    for position in range(10):
        item = ps[(0, position)]
        assert item["image"].shape == (1, 4, 8, 8) and item["mask"].shape == (4, 8, 8)
        inside = item["image"][0] == 1
        assert int(inside.sum()) == 2 * 5 * 5  # the whole volume, offset inside the patch
        assert (item["mask"][inside] == 0).all() and (item["mask"][~inside] == IGNORE_INDEX).all()


@pytest.mark.parametrize("supervision", ["none", "tag", "size"])
def test_valid_marks_the_padding_of_label_free_patches_through_the_augmentation(supervision):
    """``valid`` is False exactly on the padding past the volume's end, moved with the image by flips
    and rotations; the rotation fill of a patch inside its volume stays valid (as in 2D); an unlabeled
    patch's mask stays all ignore (the padding only rides on it)."""
    small = Record("small", np.ones((1, 2, 5, 5), np.float32), np.zeros((2, 5, 5), np.int64))
    aug = AugmentConfig(hflip=True, dflip=True, rotate_degrees=30)
    for cfg in (None, aug):
        ps = make(
            [small], patch_size=[4, 8, 8], foreground_ratio=0.0, supervision=supervision, augment_cfg=cfg
        )
        for position in range(6):
            item = ps[(0, position)]
            inside = item["image"][0] > 0.5  # the volume is all ones, its padding 0
            assert item["valid"].dtype == torch.bool and item["valid"].shape == (4, 8, 8)
            if cfg is None:
                assert torch.equal(item["valid"], inside) and int(inside.sum()) == 2 * 5 * 5
            else:  # the volume stays valid (nearest vs linear resampling differ on its border only)
                assert (inside & ~item["valid"]).float().mean() < 0.05
                assert (~item["valid"]).float().mean() > 0.5  # most of the patch is padding
            assert (item["mask"] == IGNORE_INDEX).all()
    big = make([volume(0)], supervision=supervision, augment_cfg=aug, foreground_ratio=0.0)
    assert all(big[(0, p)]["valid"].all() for p in range(6))  # rotation corners are not padding


@pytest.mark.parametrize("supervision", ["dense", "sparse"])
def test_labeled_patches_mark_their_padding_too(supervision):
    """Labeled patches: ``valid`` is False on the padding as for label-free ones (for the losses that
    read the labeled images' predictions beyond their labels: TV, consistency); the mask still
    ignores it, and keeps its labels on the volume through the augmentation."""
    small = Record("small", np.ones((1, 2, 5, 5), np.float32), np.zeros((2, 5, 5), np.int64))
    aug = AugmentConfig(hflip=True, dflip=True, rotate_degrees=30)
    for cfg in (None, aug):
        ps = make([small], patch_size=[4, 8, 8], supervision=supervision, sparse_pixels=5, foreground_ratio=0.0,
                  augment_cfg=cfg)  # fmt: skip
        for position in range(4):
            item = ps[(0, position)]
            inside = item["image"][0] > 0.5
            if cfg is None:
                assert torch.equal(item["valid"], inside)
            else:
                assert (inside & ~item["valid"]).float().mean() < 0.05
                assert (~item["valid"]).float().mean() > 0.5
            assert (item["mask"][~item["valid"]] == IGNORE_INDEX).all()
            assert set(item["mask"].unique().tolist()) <= {0, IGNORE_INDEX}
            if supervision == "dense" and cfg is None:
                assert (item["mask"][inside] == 0).all()


def test_crop_fills_outside():
    x = torch.arange(24.0).view(2, 3, 4)
    out = crop(x, [1, -1], [2, 3], fill=-1.0)  # rows 1-2, columns -1..1 of each leading slice
    assert out.tolist() == [[[-1.0, 4.0, 5.0], [-1.0, 8.0, 9.0]], [[-1.0, 16.0, 17.0], [-1.0, 20.0, 21.0]]]
    assert crop(x, [5, 0], [2, 2], fill=7.0).eq(7).all()  # entirely outside


def test_items_are_keyed_by_seed_epoch_and_position():
    aug = AugmentConfig(hflip=True, dflip=True, rotate_degrees=15, noise_std=0.05)
    a, b = make([volume(0), volume(1)], augment_cfg=aug), make([volume(0), volume(1)], augment_cfg=aug)
    a.set_epoch(3), b.set_epoch(3)
    x, y = a[(1, 5)], b[(1, 5)]
    assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    assert not torch.equal(a[(1, 6)]["image"], x["image"])
    b.set_epoch(4)
    assert not torch.equal(b[(1, 5)]["image"], x["image"])
    assert x["key"].tolist() == [0, 3, 5]


def test_sizes_and_tags_are_counted_on_the_patch():
    # weak labels never steer the patches (the hidden masks are not used for forced patches)
    ps = make([volume(0)], supervision="size", foreground_ratio=1.0)
    assert all(not len(v) for v in ps.foreground[0])
    whole = make([volume(0)], supervision="size", patch_size=[6, 20, 24])
    item = whole[(0, 0)]
    assert (item["mask"] == IGNORE_INDEX).all()  # weak labels only
    assert item["sizes"][1] == 2 * 2 * 3  # the whole box is inside a patch of the whole volume
    tags = make([volume(0)], supervision="tag", foreground_ratio=0.0)
    seen = {float(tags[(0, p)]["tags"][1]) for p in range(40)}
    assert seen == {0.0, 1.0}  # some patches show the box, some do not
    assert ps.sizes[0, 1] == 12  # per volume, for tag-filtered streams


def test_strong_views_and_cutmix_boxes_follow_the_patch():
    ps = make([volume(0)])
    ps.set_views(ViewSpec(strong=2, cutmix=True))
    item = ps[(0, 1)]
    assert item["strong"].shape == (2, 1, 4, 8, 8) and item["cutmix"].shape == (2, 4, 8, 8)
    # without photometric changes each strong view is the patch itself, voxel for voxel; every box is
    # one cuboid inside the patch (here always drawn)
    off = StrongAugmentConfig(jitter_prob=0.0, blur_prob=0.0, noise_std=0.0, cutmix_prob=1.0)
    plain = make([volume(0)], strong_cfg=off)
    plain.set_views(ViewSpec(strong=2, cutmix=True))
    for position in range(4):
        item = plain[(0, position)]
        assert all(torch.equal(v, item["image"]) for v in item["strong"])
        for box in item["cutmix"]:
            extent = [box.any(dim=[a for a in range(3) if a != axis]) for axis in range(3)]
            cuboid = extent[0][:, None, None] & extent[1][None, :, None] & extent[2][None, None, :]
            assert box.any() and torch.equal(box, cuboid)
    # brightness only: each view is the patch times one factor
    bright = make([volume(0)], strong_cfg=StrongAugmentConfig(jitter_prob=1.0, contrast=0.0, blur_prob=0.0))
    bright.set_views(ViewSpec(strong=2))
    item = bright[(0, 2)]
    for v in item["strong"]:
        factor = v.sum() / item["image"].sum()
        assert not torch.isclose(factor, torch.tensor(1.0))
        torch.testing.assert_close(v, item["image"] * factor, atol=1e-5, rtol=1e-5)


def test_the_training_grid_resizes_in_plane_and_keeps_the_depth():
    ps = make([volume(0, shape=(6, 40, 48))], image_size=[-1, 20, 24])
    image, dense = ps.volumes[0].arrays()
    assert image.shape == (1, 6, 20, 24) and dense.shape == (6, 20, 24) and ps.volumes[0].shape == (6, 20, 24)
    assert dense.dtype == torch.uint8 and ps[(0, 0)]["mask"].dtype == torch.long  # stored small


def test_prepare_data_gives_patches_for_a_3d_model_and_slices_for_a_2d_one(tmp_path):
    from semiseg.data import prepare_data
    from semiseg.data.records import DatasetBundle

    bundle = DatasetBundle("vols", num_classes=2, in_channels=1, train=[volume(i) for i in range(6)],
                           val=[volume(10)], test=[volume(11)])  # fmt: skip
    base = {"data": {"dataset": "shapes", "split": {"labeled": 2}}, "model": {"width": 4, "depth": 2}}
    three = build_config({**base, "data": {**base["data"], "image_size": [-1, 16, 16], "patch_size": [4, 8, 8]},
                          "model": {**base["model"], "spatial_dims": 3}})  # fmt: skip
    data = prepare_data(three, bundle=bundle)
    assert isinstance(data.labeled, PatchSet) and len(data.labeled) == 2
    assert data.labeled[(0, 0)]["image"].shape == (1, 4, 8, 8)
    two = build_config({**base, "data": {**base["data"], "image_size": [16, 16]}})
    data = prepare_data(two, bundle=bundle)
    assert len(data.labeled) == 2 * 6  # slices


@pytest.mark.parametrize(
    "data,model,match",
    [
        ({"image_size": [16, 16], "patch_size": [4, 8, 8]}, {"spatial_dims": 3}, "must be \\[D, H, W\\]"),
        ({"image_size": [-1, 16, 16]}, {"spatial_dims": 3}, "data.patch_size' must be \\[d, h, w\\]"),
        ({"image_size": [-1, 16, 16], "patch_size": [4, 32, 8]}, {"spatial_dims": 3}, "larger than"),
        ({"image_size": [16, 16], "patch_size": [8, 8]}, {}, "applies to 3D models"),
        ({"image_size": [-1, 16, 16], "patch_size": [4, 8, 8], "foreground_ratio": 2}, {"spatial_dims": 3},
         "foreground_ratio"),
    ],
)  # fmt: skip
def test_3d_settings_are_checked_in_one_line(data, model, match):
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        build_config({"data": data, "model": model})


def test_a_sparse_patch_shows_exactly_the_kept_voxels_inside_it():
    from semiseg.data.views import sparse_mask

    rec = volume(0)
    ps = make([rec], supervision="sparse", sparse_pixels=300, split_seed=4, draw=1, foreground_ratio=0.0)
    kept = sparse_mask(torch.from_numpy(rec.mask), 300, 4, 1, rec.id)
    seen = 0
    for position in range(12):
        rng = sample_rng(ps.seed, ps.epoch, position)
        start = ps.patch_start(0, position, rng)
        item = ps[(0, position)]
        assert torch.equal(item["mask"], crop(kept, start, [4, 8, 8], IGNORE_INDEX))
        seen += int((item["mask"] != IGNORE_INDEX).sum())
    assert seen > 0
