"""Training views: resizing, supervision kinds (dense / sparse / tag / size / none), joint augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from semiseg.config import AugmentConfig, StrongAugmentConfig
from semiseg.core import Batch, Supervision, ViewSpec
from semiseg.data.records import IGNORE_INDEX, Record
from semiseg.data.synthetic import make_shapes
from semiseg.data.views import TrainSet, sparse_mask

K = 3
SIZE = (32, 32)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return make_shapes(8, size=32, num_classes=K, seed=0)


def view(records, supervision="dense", augment=None, **kw) -> TrainSet:
    return TrainSet(
        records, supervision=supervision, num_classes=K, image_size=SIZE, augment_cfg=augment, **kw
    )


def blob_record(size: int = 32) -> Record:
    """An asymmetric bright L-shape plus a disc on a dark background; mask = image > 0.5."""
    image = np.full((size, size), 0.2, dtype=np.float32)
    image[4:26, 5:11] = 0.8
    image[20:26, 5:22] = 0.8
    yy, xx = np.mgrid[0:size, 0:size]
    image[(yy - 9) ** 2 + (xx - 22) ** 2 <= 16] = 0.8
    return Record(id="blob", image=image[None], mask=(image > 0.5).astype(np.int64))


# ------------------------------------------------------------------------------------------ batches
def test_dense_items_and_batch_keys(records):
    ds = view(records)
    item = ds[3]
    assert set(item) == {"image", "mask", "tags", "sizes", "kind", "index", "key", "label"}
    assert item["label"].item() == IGNORE_INDEX  # dense masks carry no class label
    assert item["image"].shape == (1, *SIZE) and item["image"].dtype == torch.float32
    assert item["mask"].shape == SIZE and item["mask"].dtype == torch.long
    assert torch.equal(item["mask"], torch.from_numpy(records[3].mask))
    assert torch.equal(item["image"], torch.from_numpy(records[3].image))
    assert item["tags"].isnan().all() and item["sizes"].isnan().all()
    assert item["kind"].item() == Supervision.DENSE and item["index"].item() == 3
    assert item["key"].tolist() == [0, 0, 3] and item["key"].dtype == torch.long
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, *SIZE) and batch["mask"].shape == (4, *SIZE)
    assert batch["tags"].shape == (4, K) and batch["kind"].shape == (4,)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["key"].shape == (4, 3)


def test_records_are_resized_to_the_training_size():
    recs = make_shapes(2, size=48, num_classes=K, seed=1)
    ds = TrainSet(recs, supervision="dense", num_classes=K, image_size=(24, 40))
    item = ds[0]
    assert item["image"].shape == (1, 24, 40) and item["mask"].shape == (24, 40)
    # nearest-neighbour masks keep class values (no interpolated in-between labels)
    assert set(item["mask"].unique().tolist()) <= set(np.unique(recs[0].mask).tolist())


def test_unlabeled_items_carry_nothing(records):
    item = view(records, "none")[0]
    assert (item["mask"] == IGNORE_INDEX).all()
    assert item["tags"].isnan().all() and item["sizes"].isnan().all()
    assert item["kind"].item() == Supervision.NONE


def test_unknown_supervision():
    with pytest.raises(ValueError, match="unknown supervision"):
        view(make_shapes(1, size=16), "points")


# ------------------------------------------------------------------------------------------ sparse
def test_sparse_masks_have_exactly_n_pixels_that_agree_with_the_dense_mask(records):
    dense = view(records).masks
    sparse = view(records, "sparse", sparse_pixels=25, split_seed=3, draw=1)
    for i in range(len(records)):
        m = sparse[i]["mask"]
        kept = m != IGNORE_INDEX
        assert kept.sum().item() == 25
        assert torch.equal(m[kept], dense[i][kept])
    assert sparse[0]["kind"].item() == Supervision.SPARSE


def test_sparse_pixels_are_deterministic_per_seed_draw_and_id(records):
    def masks(**kw):
        return view(records, "sparse", sparse_pixels=10, **kw).masks

    base = masks(split_seed=0, draw=0)
    assert torch.equal(base, masks(split_seed=0, draw=0))
    for other in (masks(split_seed=0, draw=1), masks(split_seed=1, draw=0)):
        for a, b in zip(base, other):
            assert not torch.equal(a != IGNORE_INDEX, b != IGNORE_INDEX)
    # the pixels depend on the record id, not on its position in the view
    flipped = view(list(reversed(records)), "sparse", sparse_pixels=10).masks
    assert torch.equal(flipped.flip(0), base)


def test_sparse_mask_only_draws_labeled_pixels():
    mask = torch.full((6, 6), IGNORE_INDEX, dtype=torch.long)
    mask[1:3, 1:3] = torch.tensor([[0, 1], [2, 1]])
    out = sparse_mask(mask, 100, seed=0, draw=0, record_id="x")  # more than the 4 labeled pixels
    assert torch.equal(out, mask)
    out = sparse_mask(mask, 2, seed=0, draw=0, record_id="x")
    kept = out != IGNORE_INDEX
    assert kept.sum() == 2 and torch.equal(out[kept], mask[kept])


# ------------------------------------------------------------------------------------------ tag / size
def test_tag_and_size_supervision(records):
    dense = view(records).masks
    counts = torch.stack([torch.bincount(m.flatten(), minlength=K) for m in dense]).float()
    tags, sizes = view(records, "tag"), view(records, "size")
    for i in range(len(records)):
        t, s = tags[i], sizes[i]
        assert (t["mask"] == IGNORE_INDEX).all() and (s["mask"] == IGNORE_INDEX).all()
        assert torch.equal(t["tags"], (counts[i] > 0).float())
        assert t["sizes"].isnan().all() and s["tags"].isnan().all()
        assert torch.equal(s["sizes"], counts[i])
        assert s["sizes"].sum().item() == SIZE[0] * SIZE[1]
    # shapes images do not all contain every class, so the tags are informative
    all_tags = torch.stack([tags[i]["tags"] for i in range(len(records))])
    assert (all_tags == 0).any() and (all_tags[:, 0] == 1).all()
    assert tags[0]["kind"].item() == Supervision.TAG
    assert sizes[0]["kind"].item() == Supervision.SIZE


# ------------------------------------------------------------------------------------------ augmentation
_DIHEDRAL = {
    f"rot{k}{'-h' if h else ''}": (lambda x, k=k, h=h: (x.flip(-1) if h else x).rot90(k, (-2, -1)))
    for k in range(4)
    for h in (False, True)
}


@pytest.mark.parametrize(
    "cfg, allowed",
    [
        (AugmentConfig(hflip=True), {"rot0", "rot0-h"}),
        (AugmentConfig(vflip=True), {"rot0", "rot2-h"}),  # vertical flip = horizontal flip + 180°
        (AugmentConfig(rot90=True), {"rot0", "rot1", "rot2", "rot3"}),
        (AugmentConfig(hflip=True, vflip=True, rot90=True), set(_DIHEDRAL)),
    ],
    ids=["hflip", "vflip", "rot90", "all"],
)
def test_flips_and_rot90_move_image_and_mask_together(records, cfg, allowed):
    plain, aug = view(records), view(records, augment=cfg)
    seen = set()
    for epoch in range(6):
        aug.set_epoch(epoch)
        for i in range(len(records)):
            item = aug[i]
            matches = [n for n, f in _DIHEDRAL.items() if torch.equal(item["image"], f(plain.images[i]))]
            assert len(matches) == 1, "augmented image is not a single flip/rotation of the original"
            name = matches[0]
            assert name in allowed
            assert torch.equal(item["mask"], _DIHEDRAL[name](plain.masks[i]))
            seen.add(name)
    assert seen == allowed  # every allowed transform actually occurs (48 draws)


def test_rotation_and_scaling_keep_labels_aligned():
    rec = blob_record()
    cfg = AugmentConfig(rotate_degrees=40, scale=[0.8, 1.25])
    ds = TrainSet([rec], supervision="dense", num_classes=2, image_size=SIZE, augment_cfg=cfg)
    original = torch.from_numpy(rec.mask)
    ignored_somewhere = False
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]
        image, mask = item["image"][0], item["mask"]
        valid = mask != IGNORE_INDEX
        assert valid.float().mean() > 0.5
        assert set(mask[valid].unique().tolist()) <= {0, 1}
        agree = ((image > 0.5) == (mask == 1))[valid].float().mean().item()
        assert agree > 0.97, f"epoch {epoch}: mask does not follow the transformed image ({agree:.3f})"
        # the transform is not trivial: the un-augmented mask no longer fits the image
        stale = ((image > 0.5) == (original == 1))[valid].float().mean().item()
        assert stale < agree - 0.03
        ignored_somewhere |= bool((~valid).any())
    assert ignored_somewhere  # pixels rotated in from outside the image carry no label


def test_region_sizes_follow_scaling():
    size = 32
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 36).astype(np.int64)
    rec = Record(id="disc", image=(0.2 + 0.6 * disc).astype(np.float32)[None], mask=disc)
    cfg = AugmentConfig(scale=[0.6, 1.6], rotate_degrees=20)
    sized = TrainSet([rec], supervision="size", num_classes=2, image_size=(size, size), augment_cfg=cfg)
    dense = TrainSet([rec], supervision="dense", num_classes=2, image_size=(size, size), augment_cfg=cfg)
    ratios = []
    for epoch in range(6):
        sized.set_epoch(epoch)
        dense.set_epoch(epoch)
        s, d = sized[0], dense[0]
        assert torch.equal(s["image"], d["image"])  # same random draw whatever the supervision
        visible = (d["mask"] == 1).sum().item()  # the disc stays inside the image
        assert s["sizes"][1].item() == pytest.approx(visible, rel=0.12)
        ratios.append(s["sizes"][1].item() / disc.sum())
    assert max(ratios) / min(ratios) > 1.5  # scaling really varied


def test_intensity_augmentation_leaves_the_mask_alone(records):
    cfg = AugmentConfig(brightness=0.2, contrast=0.3, noise_std=0.05)
    plain, aug = view(records), view(records, augment=cfg)
    for i in range(4):
        item = aug[i]
        assert torch.equal(item["mask"], plain.masks[i])
        assert not torch.allclose(item["image"], plain.images[i], atol=1e-3)


def test_identity_config_is_no_augmentation(records):
    ds = view(records, augment=AugmentConfig())
    assert ds.augment_cfg is None
    assert torch.equal(ds[0]["image"], ds.images[0])


def test_same_seed_epoch_index_same_augmentation(records):
    cfg = AugmentConfig(hflip=True, rotate_degrees=30, scale=[0.9, 1.1], brightness=0.1, noise_std=0.02)

    def item(seed, epoch, index, order=None):
        ds = view(records if order is None else order, augment=cfg, seed=seed)
        ds.set_epoch(epoch)
        return ds[index]

    a, b = item(0, 2, 5), item(0, 2, 5)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    for other in (item(0, 3, 5), item(1, 2, 5)):  # another epoch or seed: another draw
        assert not torch.equal(a["image"], other["image"])
    # reading items in another order (other workers, ranks, resumption) gives the same results
    ds = view(records, augment=cfg)
    ds.set_epoch(2)
    forward = [ds[i]["image"] for i in range(len(records))]
    backward = [ds[i]["image"] for i in reversed(range(len(records)))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))


# ------------------------------------------------------------------------------------------ keys and views
WEAK = AugmentConfig(
    hflip=True, vflip=True, rotate_degrees=30, scale=[0.8, 1.2], brightness=0.1, noise_std=0.02
)
STRONG = StrongAugmentConfig(jitter_prob=1.0, blur_prob=0.5, noise_std=0.05, cutmix_prob=0.5)


def paired(records, strong=2, cutmix=True, weak=WEAK, strong_cfg=STRONG, epoch=0, **kw) -> TrainSet:
    ds = TrainSet(
        records,
        supervision="dense",
        num_classes=K,
        image_size=SIZE,
        augment_cfg=weak,
        strong_cfg=strong_cfg,
        **kw,
    )
    ds.set_views(ViewSpec(strong=strong, cutmix=cutmix))
    ds.set_epoch(epoch)
    return ds


def same_item(a: dict, b: dict) -> bool:
    """Exactly equal tensors under every key (NaN == NaN: unknown sizes and tags)."""

    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        if x.is_floating_point():
            return x.shape == y.shape and torch.allclose(x, y, rtol=0, atol=0, equal_nan=True)
        return torch.equal(x, y)

    return set(a) == set(b) and all(same(a[k], b[k]) for k in a)


def test_int_key_is_the_index_at_its_own_position(records):
    ds = paired(records, seed=4, epoch=3)
    for i in (0, 5):
        assert same_item(ds[i], ds[(i, i)])
        assert ds[(i, i)]["key"].tolist() == [4, 3, i]


def test_draws_follow_the_position_not_the_index(records):
    ds = paired(records)
    a, b = ds[(2, 7)], ds[(2, 7)]
    assert same_item(a, b)
    assert a["index"].item() == 2 and a["key"].tolist() == [0, 0, 7]
    other = ds[(2, 6)]  # the same image at another place of the epoch (another rank, another draw)
    assert not torch.equal(a["image"], other["image"]) and not torch.equal(a["strong"], other["strong"])
    # two images at one position get the same random parameters, e.g. the same flips
    plain, flipped = view(records), view(records, augment=AugmentConfig(hflip=True, vflip=True))
    flips = [(), (-1,), (-2,), (-1, -2)]

    def which(i: int, position: int) -> int:
        (match,) = [f for f in flips if torch.equal(flipped[(i, position)]["mask"], plain.masks[i].flip(f))]
        return flips.index(match)

    drawn = [which(1, p) for p in range(8)]
    assert drawn == [which(3, p) for p in range(8)] and len(set(drawn)) > 1


def test_one_process_and_two_ranks_draw_the_same_augmentations(records):
    """A global order of (index, position); rank r reads positions r, r + 2, ...: same items."""
    order = [(int(i), p) for p, i in enumerate(np.random.default_rng(0).permutation(len(records)))]
    single = paired(records, epoch=5)
    ranks = [paired(records, epoch=5), paired(records, epoch=5)]
    for p, key in enumerate(order):
        assert same_item(single[key], ranks[p % 2][key])


def test_a_fresh_set_at_a_resumed_epoch_gives_the_same_items(records):
    first = paired(records)
    for epoch in range(3):
        first.set_epoch(epoch)
        items = [first[(i, p)] for p, i in enumerate([3, 1, 4])]
    resumed = paired(records, epoch=2)
    assert all(same_item(a, resumed[(i, p)]) for a, (p, i) in zip(items, enumerate([3, 1, 4])))
    resumed.set_epoch(1)
    assert not torch.equal(items[0]["image"], resumed[(3, 0)]["image"])


def test_strong_views_shapes_and_batch(records):
    ds = paired(records, strong=3)
    item = ds[0]
    assert item["strong"].shape == (3, 1, *SIZE) and item["strong"].dtype == torch.float32
    assert item["cutmix"].shape == (3, *SIZE) and item["cutmix"].dtype == torch.bool
    batch = Batch.from_dict(next(iter(DataLoader(ds, batch_size=4))))
    assert batch.strong.shape == (4, 3, 1, *SIZE) and batch.cutmix.shape == (4, 3, *SIZE)
    assert batch.key[:, 2].tolist() == [0, 1, 2, 3]
    no_boxes = paired(records, strong=2, cutmix=False)[0]
    assert "strong" in no_boxes and "cutmix" not in no_boxes
    ds.set_views(None)
    assert "strong" not in ds[0]


def test_strong_view_without_photometric_equals_the_weak_view(records):
    off = StrongAugmentConfig(jitter_prob=0.0, blur_prob=0.0, noise_std=0.0, cutmix_prob=0.0)
    ds = paired(records, strong=2, strong_cfg=off)
    for i in range(4):
        item = ds[i]
        assert all(torch.equal(v, item["image"]) for v in item["strong"])
        assert not item["cutmix"].any()
    # weak views (and masks) do not depend on whether strong views are asked for
    plain = paired(records, strong=0)
    assert torch.equal(plain[1]["image"], ds[1]["image"]) and torch.equal(plain[1]["mask"], ds[1]["mask"])


def test_strong_views_share_the_weak_geometry_exactly(records):
    """Brightness only: each strong view is the weak view times one factor, pixel for pixel."""
    bright = StrongAugmentConfig(jitter_prob=1.0, contrast=0.0, blur_prob=0.0, noise_std=0.0)
    ds = paired(records, strong=2, strong_cfg=bright)
    for i in range(4):
        item = ds[i]
        weak = item["image"]
        for view in item["strong"]:
            factor = view.sum() / weak.sum()
            assert not torch.isclose(factor, torch.tensor(1.0))
            torch.testing.assert_close(view, weak * factor, atol=1e-5, rtol=1e-5)


def test_class_supervision_gives_each_item_its_label():
    from semiseg.data.views import TrainSet
    from semiseg.errors import DataError

    rng = np.random.default_rng(0)
    records = [Record(f"r{i}", rng.random((1, 8, 8)).astype(np.float32), None, label=i % 3) for i in range(5)]
    ds = TrainSet(records, supervision="class", num_classes=3, image_size=(8, 8))
    assert [int(ds[i]["label"]) for i in range(5)] == [0, 1, 2, 0, 1]
    assert int(ds[0]["kind"]) == Supervision.CLASS and (ds[0]["mask"] == IGNORE_INDEX).all()
    unlabeled = TrainSet(records, supervision="none", num_classes=3, image_size=(8, 8))
    assert int(unlabeled[0]["label"]) == IGNORE_INDEX
    records[2] = Record("r2", records[2].image, None)
    with pytest.raises(DataError, match="r2: has no class label"):
        TrainSet(records, supervision="class", num_classes=3, image_size=(8, 8))


# ------------------------------------------------------------------------------------ lazy records
def _shape_record(index: int) -> Record:
    """Item ``index`` of a generated set (a module-level reader, so a lazy record can name it)."""
    rec = make_shapes(8, size=40, num_classes=K, seed=0)[index]
    if index == 5:  # one item without a mask
        return Record(rec.id, rec.image, None, label=1)
    return Record(rec.id, rec.image, rec.mask, label=index % K)


@pytest.mark.parametrize("supervision", ["dense", "sparse", "tag", "size", "none", "class"])
def test_lazy_records_give_the_same_items_from_the_on_disk_rows(tmp_path, supervision):
    import functools

    from semiseg.data.records import ARRAYS

    readers = [functools.partial(_shape_record, i) for i in range(8)]
    eager = [r() for r in readers]
    lazy = [Record.lazy(r) for r in readers]
    if supervision in ("tag", "size"):
        eager, lazy = eager[:5], lazy[:5]
    aug = AugmentConfig(hflip=True, rot90=True, rotate_degrees=20, scale=[0.9, 1.1], contrast=0.1)
    sets = []
    for recs in (eager, lazy):
        ARRAYS.clear()
        ds = TrainSet(recs, supervision=supervision, num_classes=K, image_size=SIZE, augment_cfg=aug,
                      strong_cfg=StrongAugmentConfig(), seed=2, sparse_pixels=7, cache_dir=tmp_path)  # fmt: skip
        ds.set_views(ViewSpec(strong=2, cutmix=True))
        ds.set_epoch(1)
        sets.append(ds)
    assert sets[0].rows is None and sets[1].rows is not None and sets[1].images is None
    for position in range(len(eager)):
        a, b = sets[0][(position, position + 3)], sets[1][(position, position + 3)]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k].nan_to_num(-7), b[k].nan_to_num(-7)), (supervision, position, k)
    reads = ARRAYS.reads
    again = TrainSet(lazy, supervision=supervision, num_classes=K, image_size=SIZE, cache_dir=tmp_path)
    assert again.rows == sets[1].rows and ARRAYS.reads == reads  # the stored rows, not the records


def test_a_lazy_train_set_holds_no_images_in_memory(tmp_path):
    import functools

    readers = [functools.partial(_shape_record, i) for i in range(8)] * 1
    ds = TrainSet([Record.lazy(r) for r in readers], supervision="sparse", num_classes=K, image_size=(96, 96),
                  cache_dir=tmp_path)  # fmt: skip
    held = 0
    for value in vars(ds).values():
        for x in value if isinstance(value, list) else [value]:
            parts = x if isinstance(x, tuple) else [x]
            held += sum(p.nbytes for p in parts if isinstance(p, (np.ndarray, torch.Tensor)))
    assert held < 8 * 96 * 96 * 4 / 20, held  # tags, sizes, labels and kept pixels only
    assert ds[0]["image"].shape == (1, 96, 96)


def test_volume_resizing_is_trilinear_when_growing_and_antialiased_when_shrinking_depth():
    import torch.nn.functional as F

    from semiseg.data.views import resize_image

    g = torch.Generator().manual_seed(0)
    volume = torch.rand(2, 3, 5, 6, 7, generator=g)
    grown = resize_image(volume, (9, 10, 11))
    want = F.interpolate(volume, size=(9, 10, 11), mode="trilinear", align_corners=False)
    torch.testing.assert_close(grown, want, atol=1e-5, rtol=1e-5)
    stripes = torch.zeros(1, 1, 15, 4, 4)
    stripes[:, :, ::2] = 1.0  # alternating slices: their mean is about 0.5
    shrunk = resize_image(stripes, (5, 4, 4))
    assert shrunk.shape == (1, 1, 5, 4, 4)
    assert (shrunk - 0.5).abs().max() < 0.15  # antialiased: every output slice averages its neighbours
    aliased = F.interpolate(stripes, size=(5, 4, 4), mode="trilinear", align_corners=False)
    assert (aliased - 0.5).abs().max() == 0.5  # plain trilinear samples single slices (all 0 or all 1)


def test_shrinking_a_mask_of_clicks_keeps_every_click():
    """Nearest sampling drops most single-pixel clicks when a partial mask shrinks; every labeled pixel
    lands in the cell that contains it (one per cell), and dense masks resize as before."""
    import torch.nn.functional as F

    from semiseg.data.views import resize_mask

    g = torch.Generator().manual_seed(0)
    clicks = torch.full((2, 96, 96), IGNORE_INDEX)
    for n in range(2):
        flat = torch.randperm(96 * 96, generator=g)[:10]
        clicks[n].view(-1)[flat] = torch.randint(0, 3, (10,), generator=g)
    out = resize_mask(clicks, (32, 32))
    for n in range(2):
        ys, xs = (clicks[n] != IGNORE_INDEX).nonzero().unbind(1)
        cells = set(zip((ys // 3).tolist(), (xs // 3).tolist()))
        assert int((out[n] != IGNORE_INDEX).sum()) == len(cells)  # one label per cell holding a click
        for y, x in zip(ys.tolist(), xs.tolist()):
            assert out[n, y // 3, x // 3] != IGNORE_INDEX
    dense = torch.randint(0, 3, (1, 64, 64), generator=g)
    nearest = F.interpolate(dense[:, None].float(), size=(32, 32), mode="nearest-exact")[:, 0].long()
    assert torch.equal(resize_mask(dense, (32, 32)), nearest)
