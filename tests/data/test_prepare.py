"""prepare_data: the training views a run gets, incl. weak labels on the unlabeled pool."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semiseg.config import build_config
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
    item = data.unlabeled[0]
    assert all(math.isnan(s) for s in item["sizes"].tolist())


def test_weak_labels_need_masks():
    with pytest.raises(DataError, match="unlabeled_supervision: size needs a mask"):
        prepare_data(config("data.split.unlabeled_supervision=size"), bundle=bundle(unmasked=2))
