"""Split specs: determinism from the seed, draws that share val/test, groups, pinned ids, errors, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semiseg.config import SplitConfig
from semiseg.data.records import IGNORE_INDEX, DatasetBundle, Record
from semiseg.data.splits import make_split, natural_key
from semiseg.errors import ConfigError, DataError


def make_records(
    n: int, *, groups: int | None = None, masked: bool = True, prefix: str = "img"
) -> list[Record]:
    """``n`` tiny records; with ``groups`` they belong to ``groups`` patients (``p0``, ``p1``, ...)."""
    out = []
    for i in range(n):
        image = np.full((1, 4, 4), i / max(n, 1), dtype=np.float32)
        mask = np.zeros((4, 4), dtype=np.int64) if masked else None
        group = f"p{i % groups}" if groups else ""
        out.append(Record(id=f"{prefix}{i:03d}", image=image, mask=mask, group=group))
    return out


def bundle_of(records, val=None, test=None) -> DatasetBundle:
    return DatasetBundle(name="toy", num_classes=2, in_channels=1, train=records, val=val, test=test)


def ids(records) -> list[str]:
    return [r.id for r in records]


def check_partition(split, bundle) -> None:
    """Every training item lands in exactly one of labeled / unlabeled / val / test."""
    parts = [ids(split.labeled), ids(split.unlabeled), ids(split.val), ids(split.test)]
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat))
    assert set(flat) == set(ids(bundle.train))


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_split():
    bundle = bundle_of(make_records(40))
    spec = SplitConfig(labeled=5, seed=3, draw=1)
    a, b = make_split(bundle, spec), make_split(bundle, spec)
    assert a.summary() == b.summary()
    check_partition(a, bundle)
    assert len(a.labeled) == 5
    assert len(a.test) == 8 and len(a.val) == 3  # round(0.2 * 40), round(0.1 * 32)
    assert len(a.unlabeled) == 40 - 5 - 8 - 3


def test_other_draw_changes_labeled_set_but_not_val_and_test():
    bundle = bundle_of(make_records(40))
    splits = [make_split(bundle, SplitConfig(labeled=5, seed=0, draw=d)) for d in range(4)]
    labeled_sets = {frozenset(ids(s.labeled)) for s in splits}
    assert len(labeled_sets) == 4  # every draw is different
    for s in splits[1:]:
        assert ids(s.val) == ids(splits[0].val)
        assert ids(s.test) == ids(splits[0].test)
        check_partition(s, bundle)


def test_other_seed_changes_val_and_test():
    bundle = bundle_of(make_records(40))
    a = make_split(bundle, SplitConfig(labeled=5, seed=0))
    b = make_split(bundle, SplitConfig(labeled=5, seed=1))
    assert set(ids(a.test)) != set(ids(b.test))
    assert set(ids(a.val)) != set(ids(b.val))


def test_split_does_not_depend_on_record_order():
    records = make_records(30)
    spec = SplitConfig(labeled=4, seed=5)
    a = make_split(bundle_of(records), spec)
    b = make_split(bundle_of(list(reversed(records))), spec)
    for part in ("labeled", "unlabeled", "val", "test"):
        assert sorted(ids(getattr(a, part))) == sorted(ids(getattr(b, part)))


def test_labeled_fraction_and_all():
    bundle = bundle_of(make_records(50))
    s = make_split(bundle, SplitConfig(labeled_fraction=0.25))
    pool = 50 - len(s.val) - len(s.test)
    assert len(s.labeled) == round(0.25 * pool)
    every = make_split(bundle, SplitConfig())
    assert len(every.labeled) == pool and every.unlabeled == []


def test_unlabeled_none_drops_the_rest():
    s = make_split(bundle_of(make_records(30)), SplitConfig(labeled=3, unlabeled="none"))
    assert len(s.labeled) == 3 and s.unlabeled == []


def test_items_without_mask_are_only_unlabeled_and_never_evaluated():
    records = make_records(20) + make_records(10, masked=False, prefix="raw")
    bundle = bundle_of(records)
    s = make_split(bundle, SplitConfig(labeled=4))
    check_partition(s, bundle)
    raw = {r.id for r in records if r.mask is None}
    assert raw <= set(ids(s.unlabeled))
    assert not raw & set(ids(s.labeled) + ids(s.val) + ids(s.test))


def test_fixed_val_and_test_of_the_dataset_are_kept():
    val, test = make_records(3, prefix="v"), make_records(4, prefix="t")
    bundle = bundle_of(make_records(10), val=val, test=test)
    s = make_split(bundle, SplitConfig(labeled=2, val_fraction=0.5, test_fraction=0.5))
    assert ids(s.val) == ids(val) and ids(s.test) == ids(test)
    assert len(s.labeled) + len(s.unlabeled) == 10  # nothing carved out of train


# ------------------------------------------------------------------------------------------ groups
def test_labeled_by_group_takes_whole_groups():
    records = make_records(60, groups=12)  # 12 patients x 5 slices
    bundle = bundle_of(records)
    s = make_split(bundle, SplitConfig(labeled=3, labeled_by="group"))
    check_partition(s, bundle)
    labeled_groups = {r.group for r in s.labeled}
    assert len(labeled_groups) == 3
    assert len(s.labeled) == 15  # all 5 slices of each chosen patient
    assert s.summary()["labeled_groups"] == sorted(labeled_groups)
    # no patient is split between labeled, unlabeled, val and test
    part_groups = [{r.group for r in getattr(s, p)} for p in ("labeled", "unlabeled", "val", "test")]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not part_groups[i] & part_groups[j]


def test_first_draw_listed_takes_the_first_groups_in_the_datasets_order():
    records = make_records(40, groups=8)
    order = [f"p{i}" for i in (5, 2, 7, 0, 1, 3, 4, 6)]  # the dataset's own (listed) order
    records = sorted(records, key=lambda r: order.index(r.group))
    val, test = make_records(2, prefix="v"), make_records(2, prefix="t")
    bundle = bundle_of(records, val=val, test=test)
    spec = SplitConfig(labeled=3, labeled_by="group", first_draw="listed")
    assert {r.group for r in make_split(bundle, spec).labeled} == {"p5", "p2", "p7"}
    random_draw0 = make_split(bundle, SplitConfig(labeled=3, labeled_by="group")).labeled
    assert {r.group for r in random_draw0} != {"p5", "p2", "p7"}  # (this seed's random draw differs)
    for draw in (1, 2):  # further draws stay random, the same as without "listed"
        a = make_split(bundle, SplitConfig(labeled=3, labeled_by="group", first_draw="listed", draw=draw))
        b = make_split(bundle, SplitConfig(labeled=3, labeled_by="group", draw=draw))
        assert ids(a.labeled) == ids(b.labeled)


def test_val_and_test_are_carved_by_group_even_when_labeled_by_image():
    s = make_split(bundle_of(make_records(60, groups=12)), SplitConfig(labeled=5))
    train_groups = {r.group for r in s.labeled + s.unlabeled}
    assert not train_groups & {r.group for r in s.val + s.test}


# ------------------------------------------------------------------------------------------ pinned ids
def test_labeled_ids():
    bundle = bundle_of(make_records(30))
    free = make_split(bundle, SplitConfig(labeled=3))
    wanted = ids(free.unlabeled)[:2]
    s = make_split(bundle, SplitConfig(labeled_ids=wanted, labeled=3))  # the ids override the count
    assert sorted(ids(s.labeled)) == sorted(wanted)
    assert ids(s.val) == ids(free.val) and ids(s.test) == ids(free.test)


def test_labeled_ids_by_group():
    s = make_split(
        bundle_of(make_records(40, groups=8)),
        SplitConfig(labeled_ids=["p1"], labeled_by="group", val_fraction=0, test_fraction=0),
    )
    assert ids(s.labeled) == [f"img{i:03d}" for i in range(1, 40, 8)]


def test_unknown_labeled_ids():
    bundle = bundle_of(make_records(20))
    test_id = ids(make_split(bundle, SplitConfig()).test)[0]
    for bad in ("nope", test_id):  # a held-out test image cannot be labeled either
        with pytest.raises(ConfigError, match=f"labeled_ids: not in the labeled pool: {bad}"):
            make_split(bundle, SplitConfig(labeled_ids=[bad]))


# ------------------------------------------------------------------------------------------ errors
def test_more_labeled_than_exist():
    bundle = bundle_of(make_records(20))
    with pytest.raises(ConfigError, match=r"asked for 50 but only 14 images have masks"):
        make_split(bundle, SplitConfig(labeled=50))
    with pytest.raises(ConfigError, match=r"asked for 5 but only 3 groups"):
        make_split(bundle_of(make_records(20, groups=5)), SplitConfig(labeled=5, labeled_by="group"))


def test_empty_labeled_set():
    bundle = bundle_of(make_records(10, masked=False))
    with pytest.raises(DataError, match="toy: the labeled training set is empty"):
        make_split(bundle, SplitConfig())
    with pytest.raises(DataError, match="labeled training set is empty"):
        make_split(bundle_of(make_records(4)), SplitConfig(labeled_ids=[]))


# ------------------------------------------------------------------------------------------ JSON
def test_write_round_trip(tmp_path):
    bundle = bundle_of(make_records(40, groups=10))
    spec = SplitConfig(labeled=2, labeled_by="group", seed=4, draw=2, supervision="sparse")
    s = make_split(bundle, spec)
    path = tmp_path / "out" / "split.json"
    s.write(path)
    saved = json.loads(path.read_text())
    assert saved == s.summary()
    assert saved["spec"]["draw"] == 2 and saved["spec"]["supervision"] == "sparse"
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left behind
    # the written split pins the same partition: spec from the file + the labeled groups
    pinned = SplitConfig(**{**saved["spec"], "labeled_ids": saved["labeled_groups"], "labeled": None})
    again = make_split(bundle, pinned)
    for part in ("labeled", "unlabeled", "val", "test"):
        assert ids(getattr(again, part)) == saved[part]


def test_unlabeled_all_keeps_the_labeled_items_too():
    bundle = bundle_of(make_records(30))
    rest = make_split(bundle, SplitConfig(labeled=3))
    every = make_split(bundle, SplitConfig(labeled=3, unlabeled="all"))
    assert [r.id for r in every.labeled] == [r.id for r in rest.labeled]
    assert {r.id for r in every.unlabeled} == {r.id for r in rest.labeled + rest.unlabeled}


# ------------------------------------------------------------------ labeled pool and labels (digit-9 rule)
def digit_records(n: int, prefix: str) -> list[Record]:
    """``n`` "present" records (label i % 10, a foreground pixel) and ``n`` "absent" ones (no label,
    an empty mask), as the cluttered-MNIST bundle gives."""
    out = []
    for i in range(n):
        mask = np.zeros((4, 4), dtype=np.int64)
        mask[1, 1] = 1
        out.append(Record(f"{prefix}-p{i:03d}", np.zeros((1, 4, 4), np.float32), mask, label=i % 10))
    for i in range(n):
        out.append(Record(f"{prefix}-a{i:03d}", np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.int64)))
    return out


def test_labeled_pool_and_labels_draw_a_fraction_of_the_pool_among_the_allowed_labels():
    train, val = digit_records(400, "train"), digit_records(200, "val")
    bundle = bundle_of(train, val=val[:200], test=val[200:])
    spec = SplitConfig(labeled_fraction=0.05, labeled_pool="present", labeled_labels=[9], unlabeled="all")
    split = make_split(bundle, spec)
    # 5 % of the 400 present images = 20, all of them digit 9 (there are 40)
    assert len(split.labeled) == 20 and {r.label for r in split.labeled} == {9}
    assert all(r.mask.any() for r in split.labeled)
    assert len(split.unlabeled) == 800  # every training image, the labeled ones too (without masks)
    # validation is dense by default: every val item
    assert len(split.val) == 200
    # another draw: other digit-9 images; the same spec again: the same ones
    other = make_split(bundle, SplitConfig(**{**spec.__dict__, "draw": 1}))
    assert {r.label for r in other.labeled} == {9} and set(ids(other.labeled)) != set(ids(split.labeled))
    assert ids(make_split(bundle, spec).labeled) == ids(split.labeled)


def test_same_validation_rule_keeps_the_labeled_budget_and_ignores_the_draw():
    train, held = digit_records(400, "train"), digit_records(200, "val")
    bundle = bundle_of(train, val=held[:200], test=held[200:])
    spec = SplitConfig(
        labeled_fraction=0.05, labeled_pool="present", labeled_labels=[9], val_supervision="same"
    )
    split = make_split(bundle, spec)
    # 5 % of the 200 present validation images = 10, all digit 9, the same for every draw
    assert len(split.val) == 10 and {r.label for r in split.val} == {9}
    again = make_split(bundle, SplitConfig(**{**spec.__dict__, "draw": 2}))
    assert ids(again.val) == ids(split.val)
    assert len(split.test) == 200  # the test set is untouched


def test_present_pool_without_labels_and_errors():
    train = digit_records(50, "train")
    bundle = bundle_of(train, val=digit_records(5, "v"), test=digit_records(5, "t"))
    split = make_split(bundle, SplitConfig(labeled=10, labeled_pool="present"))
    assert len(split.labeled) == 10 and all(r.mask.any() for r in split.labeled)
    # the absent images can still be unlabeled
    assert sum(r.label is None for r in split.unlabeled) == 50
    with pytest.raises(ConfigError, match="labeled_fraction: 10 items wanted, only 5 may be labeled"):
        make_split(bundle, SplitConfig(labeled_fraction=0.2, labeled_pool="present", labeled_labels=[3]))
    with pytest.raises(
        ConfigError, match=r"asked for 6 but only 5 images may be labeled \(data.split.labeled_pool"
    ):
        make_split(bundle, SplitConfig(labeled=6, labeled_pool="present", labeled_labels=[3]))


def test_rules_by_group_keep_every_item_and_ignore_pixels_are_not_foreground():
    records = []
    for p in range(10):  # 10 patients x 4 slices, the last two of each without foreground
        for k in range(4):
            mask = np.zeros((4, 4), dtype=np.int64)
            if k < 2:
                mask[0, 0] = 1
            elif k == 3:
                mask[0, 0] = IGNORE_INDEX  # unknown pixels are not foreground
            records.append(Record(f"p{p}s{k}", np.zeros((1, 4, 4), np.float32), mask, group=f"p{p}"))
    bundle = bundle_of(records, val=records[:4], test=records[4:8])
    split = make_split(bundle, SplitConfig(labeled=2, labeled_by="group", labeled_pool="present"))
    assert len(split.labeled) == 4 and all(r.id.endswith(("s0", "s1")) for r in split.labeled)
    # the labeled patients' slices without foreground stay in the unlabeled set
    assert len(split.labeled) + len(split.unlabeled) == 40
    with pytest.raises(ConfigError, match="val_supervision: 'same' leaves no validation item"):
        make_split(
            bundle, SplitConfig(labeled=1, labeled_pool="present", labeled_labels=[3], val_supervision="same")
        )


# ------------------------------------------------------------------------------- classification data
def classify_bundle(n: int = 40, classes: int = 4, unlabeled: int = 0) -> DatasetBundle:
    """``n`` images with a class each (``i % classes``) and no masks, plus ``unlabeled`` without a class."""
    rng = np.random.default_rng(0)
    records = [Record(f"c{i:03d}", rng.random((1, 4, 4)).astype(np.float32), None, label=i % classes)
               for i in range(n)]  # fmt: skip
    records += [Record(f"u{i:03d}", rng.random((1, 4, 4)).astype(np.float32), None) for i in range(unlabeled)]
    test = [
        Record(f"t{i}", rng.random((1, 4, 4)).astype(np.float32), None, label=i % classes) for i in range(8)
    ]
    return DatasetBundle(
        "digits", num_classes=classes, in_channels=1, train=records, test=test, task="classify"
    )


def test_classification_items_are_labeled_by_their_class_and_drawn_balanced():
    bundle = classify_bundle(unlabeled=5)
    spec = SplitConfig(labeled=8, balanced=True, supervision="class", val_from_labeled=4, draw=1)
    split = make_split(bundle, spec)
    assert sorted(r.label for r in split.labeled) == [0, 1, 2, 3]  # 8 drawn, 2 per class, 1 each to val
    assert sorted(r.label for r in split.val) == [0, 1, 2, 3]  # validation out of the label budget
    assert not {r.id for r in split.val} & {r.id for r in split.labeled + split.unlabeled}
    assert len(split.unlabeled) == 40 + 5 - 8 and all(r.id.startswith(("c", "u")) for r in split.unlabeled)
    assert ids(make_split(bundle, spec).labeled) == ids(split.labeled)  # deterministic
    other = make_split(
        bundle, SplitConfig(labeled=8, balanced=True, supervision="class", val_from_labeled=4, draw=2)
    )
    assert ids(other.labeled) != ids(split.labeled)
    # items without a class are never labeled
    plain = make_split(bundle, SplitConfig(labeled=36, supervision="class"))  # 4 carved for validation
    assert all(r.label is not None for r in plain.labeled)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SplitConfig(labeled=9, balanced=True, supervision="class"), r"9 items do not divide among 4 labels"),
        (SplitConfig(labeled=4, supervision="class", val_from_labeled=4), r"leaves none to train on"),
        (SplitConfig(labeled=24, balanced=True, supervision="class", draw=1), None),
        (
            SplitConfig(labeled=44, balanced=True, supervision="class"),
            r"asked for 44 but only 36 images have a class",
        ),
    ],
)
def test_balanced_and_validation_carving_errors(spec, message):
    bundle = classify_bundle()
    if message is None:
        assert sorted(r.label for r in make_split(bundle, spec).labeled) == [
            c for c in range(4) for _ in range(6)
        ]
        return
    with pytest.raises(ConfigError, match=message):
        make_split(bundle, spec)


def test_labeled_item_fraction_keeps_evenly_spaced_items_of_each_labeled_group():
    # 6 patients x 20 slices, ids patient<p>_slice_<s> (natural order differs from the string order)
    image, mask = np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.int64)
    records = [
        Record(id=f"patient{p}_slice_{s}", image=image, mask=mask, group=f"patient{p}")
        for p in range(6)
        for s in range(20)
    ]
    bundle = bundle_of(records, val=[], test=[])
    spec = dict(labeled=2, labeled_by="group", labeled_item_fraction=0.2)
    s = make_split(bundle, SplitConfig(**spec))
    check_partition(s, bundle)
    by_group: dict[str, list[int]] = {}
    for r in s.labeled:
        by_group.setdefault(r.group, []).append(int(r.id.split("_")[-1]))
    assert len(by_group) == 2
    for slices in by_group.values():  # 4 slices, one in each fifth... spaced 5 apart
        slices.sort()
        assert len(slices) == 4 and np.diff(slices).tolist() == [5, 5, 5]
    full = make_split(bundle, SplitConfig(labeled=2, labeled_by="group"))
    assert {r.group for r in full.labeled} == set(by_group)  # the same patients as without the fraction
    dropped = {r.id for r in full.labeled} - {r.id for r in s.labeled}
    assert len(dropped) == 32 and dropped <= {r.id for r in s.unlabeled}  # the other slices are unlabeled
    offsets = {
        tuple(sorted(r.id for r in make_split(bundle, SplitConfig(**spec, draw=d)).labeled)) for d in range(6)
    }
    assert len(offsets) > 1  # the offset (and patients) change with the draw
    assert ids(make_split(bundle, SplitConfig(**spec)).labeled) == ids(s.labeled)


def test_natural_key_orders_numbers_by_value_and_takes_any_file_name():
    assert sorted(["p1_slice_10", "p1_slice_2"], key=natural_key) == ["p1_slice_2", "p1_slice_10"]
    # "²" is a digit to str.isdigit but not a decimal int() reads: it stays text
    assert natural_key("img1\u00b2") == ["img", 1, "\u00b2"]
