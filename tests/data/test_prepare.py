"""prepare_data: the training views a run gets, incl. weak labels on the unlabeled pool."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semiseg.config import build_config
from semiseg.core import Supervision
from semiseg.data import prepare_data
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.views import IGNORE_INDEX
from semiseg.errors import DataError


def bundle(n: int = 12, unmasked: int = 0) -> DatasetBundle:
    records = []
    for i in range(n + unmasked):
        mask = np.zeros((8, 8), dtype=np.int64)
        mask[: i % 5 + 1, :2] = 1  # (i % 5 + 1) * 2 foreground pixels
        image = np.random.default_rng(i).random((1, 8, 8), dtype=np.float32)
        records.append(Record(id=f"im{i:02d}", image=image, mask=mask if i < n else None))
    return DatasetBundle(name="toy", num_classes=2, in_channels=1, train=records)


def config(*overrides):
    raw = {
        "data": {"dataset": "shapes", "image_size": [8, 8], "split": {"labeled": 3, "seed": 0}},
        "train": {"augment": {"hflip": False, "vflip": False, "rot90": False, "rotate_degrees": 0.0}},
    }
    return build_config(raw, list(overrides))


@pytest.mark.parametrize("weak", ["size", "tag"])
def test_unlabeled_items_can_carry_weak_labels(weak):
    data = prepare_data(config(f"data.split.unlabeled_supervision={weak}"), bundle=bundle())
    by_id = {r.id: r for r in bundle().train}
    assert len(data.unlabeled) > 0
    for i in range(len(data.unlabeled)):
        item = data.unlabeled[i]
        mask = by_id[data.unlabeled.ids[i]].mask
        counts = [float((mask == 0).sum()), float((mask == 1).sum())]
        assert (item["mask"] == IGNORE_INDEX).all()  # never the dense mask
        if weak == "size":
            assert item["sizes"].tolist() == counts and all(math.isnan(t) for t in item["tags"].tolist())
        else:
            assert item["tags"].tolist() == [1.0, 1.0] and all(math.isnan(s) for s in item["sizes"].tolist())


def test_unlabeled_items_carry_nothing_by_default():
    data = prepare_data(config(), bundle=bundle())
    assert len(data.unlabeled) > 0
    for i in range(len(data.unlabeled)):
        item = data.unlabeled[i]
        assert (item["mask"] == IGNORE_INDEX).all()  # the unlabeled images' masks never reach training
        assert all(math.isnan(s) for s in item["sizes"].tolist())
        assert all(math.isnan(t) for t in item["tags"].tolist())
        assert item["kind"].item() == Supervision.NONE


def test_weak_labels_need_masks():
    with pytest.raises(DataError, match="unlabeled_supervision: size needs a mask"):
        prepare_data(config("data.split.unlabeled_supervision=size"), bundle=bundle(unmasked=2))
    with pytest.raises(
        DataError,
        match=r"unlabeled_supervision: tag needs a mask to count from \(a folder dataset: or an entry in its tags.json\)",
    ):
        prepare_data(config("data.split.unlabeled_supervision=tag"), bundle=bundle(unmasked=2))


def test_images_without_masks_take_their_sizes_from_the_sizes_file():
    """Rough region sizes for unmasked images (at their own resolution), scaled to the training grid;
    a foreground class the file does not list is absent (0, as in tags.json), the background unknown."""
    b = bundle(unmasked=2)
    b.sizes = {"im12": {1: 6.0}, "im13": {}}
    data = prepare_data(config("data.split.unlabeled_supervision=size", "data.image_size=[16,16]"), bundle=b)
    sizes = {data.unlabeled.ids[i]: data.unlabeled[i]["sizes"].tolist() for i in range(len(data.unlabeled))}
    assert math.isnan(sizes["im12"][0]) and sizes["im12"][1] == 24.0  # 8x8 -> 16x16: 4x the pixels
    assert math.isnan(sizes["im13"][0]) and sizes["im13"][1] == 0.0
    assert all(not math.isnan(v[1]) for k, v in sizes.items() if k not in b.sizes)  # from the masks
    del b.sizes["im13"]
    with pytest.raises(
        DataError,
        match=r"size needs a mask to count from \(a folder dataset: or an entry in its sizes.json\)",
    ):
        prepare_data(config("data.split.unlabeled_supervision=size"), bundle=b)


def test_a_mask_with_unlabeled_pixels_cannot_count_weak_labels():
    """Clicks show neither every class present nor its size: such an item needs a file entry."""
    b = bundle(unmasked=0)
    b.train[5].mask[0, 0] = IGNORE_INDEX
    for weak in ("tag", "size"):
        with pytest.raises(DataError, match=rf"{weak} cannot be counted from a mask with unlabeled pixels"):
            prepare_data(
                config(f"data.split.unlabeled_supervision={weak}", "data.split.unlabeled=all"), bundle=b
            )
    b.tags = {"im05": [1]}
    data = prepare_data(config("data.split.unlabeled_supervision=tag", "data.split.unlabeled=all"), bundle=b)
    assert data.unlabeled[data.unlabeled.ids.index("im05")]["tags"].tolist() == [1.0, 1.0]


def test_images_without_masks_take_their_tags_from_the_tags_file():
    """The use case of tags: many images tagged present / absent, few masks. An unmasked image's tag
    comes from the bundle's tags (the folder's tags.json); a masked one's from its mask."""
    b = bundle(unmasked=4)
    b.tags = {"im12": [1], "im13": [], "im14": [1], "im15": []}
    data = prepare_data(config("data.split.unlabeled_supervision=tag"), bundle=b)
    tags = {data.unlabeled.ids[i]: data.unlabeled[i]["tags"].tolist() for i in range(len(data.unlabeled))}
    assert {k: tags[k] for k in b.tags} == {"im12": [1.0, 1.0], "im13": [1.0, 0.0], "im14": [1.0, 1.0],
                                            "im15": [1.0, 0.0]}  # fmt: skip
    assert all(v == [1.0, 1.0] for k, v in tags.items() if k not in b.tags)  # every mask shows class 1
    assert all((data.unlabeled[i]["mask"] == IGNORE_INDEX).all() for i in range(len(data.unlabeled)))
    del b.tags["im15"]  # one unmasked image left without a tag
    with pytest.raises(
        DataError, match=r"tag needs a mask to count from \(a folder dataset: or an entry in its tags.json\)"
    ):
        prepare_data(config("data.split.unlabeled_supervision=tag"), bundle=b)


@pytest.mark.parametrize("volumes", [False, True], ids=["images", "volumes"])
def test_sparse_setting_validates_on_sparse_labels_only(volumes):
    """val_supervision: same keeps sparse_pixels labeled pixels per validation image (or volume);
    dense keeps them all; the test set stays dense either way."""
    b = bundle()
    if volumes:
        rng = np.random.default_rng(7)
        b.val = [
            Record(
                id=f"vol{i}",
                image=rng.random((1, 3, 8, 8), dtype=np.float32),
                mask=rng.integers(0, 2, (3, 8, 8)),
            )
            for i in range(3)
        ]
    originals = {r.id: r.mask.copy() for r in (b.val or b.train)}
    sparse = "data.split.supervision=sparse", "data.split.sparse_pixels=5"

    same = prepare_data(config(*sparse, "data.split.val_supervision=same"), bundle=b)
    assert same.val and same.test
    for r in same.val:
        labeled = r.mask != IGNORE_INDEX
        assert labeled.sum() == 5, r.id
        assert (r.mask[labeled] == originals[r.id][labeled]).all()
    assert all((r.mask != IGNORE_INDEX).all() for r in same.test)

    dense = prepare_data(config(*sparse, "data.split.val_supervision=dense"), bundle=b)
    assert [r.id for r in dense.val] == [r.id for r in same.val]
    assert all(np.array_equal(r.mask, originals[r.id]) for r in dense.val)
    assert all(np.array_equal(r.mask, originals[r.id]) for r in (b.val or []))  # the bundle is not modified


def test_unlabeled_all_streams_the_sparsely_labeled_images_without_labels():
    data = prepare_data(
        config("data.split.unlabeled=all", "data.split.supervision=sparse", "data.split.labeled=null"),
        bundle=bundle(),
    )
    assert set(data.unlabeled.ids) >= set(data.labeled.ids)
    for i in range(len(data.unlabeled)):
        assert (data.unlabeled[i]["mask"] == IGNORE_INDEX).all()
