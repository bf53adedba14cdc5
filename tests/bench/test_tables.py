"""The built-in table definitions: row keys, protocol settings, and how extras render."""

from __future__ import annotations

import pytest

from semiseg.bench import TABLES, get_table, register_table, table_names
from semiseg.bench.runner import row_config
from semiseg.bench.tables import (
    SEMI_SIZE_ZERO,
    SUP_FIRST,
    SUP_RESTART,
    TV_EDGE,
    TV_PAPER,
    TV_PLAIN,
    UNIMATCH_SUPERVISED_WEIGHT,
    _count_missed,
    patients,
    size_step_configs,
    supervised_baseline,
)
from semiseg.errors import ConfigError

BUILT_IN = ["curriculum-acdc", "curriculum-acdc-4class", "supervised-acdc", "supervised-horse", "tv-horse"]


def test_the_built_in_tables_are_registered():
    assert set(BUILT_IN) <= set(table_names()) and table_names() == sorted(TABLES)
    for name in BUILT_IN:
        assert get_table(name).name == name
    with pytest.raises(ConfigError, match="bench: unknown table 'tv-hors' \\(did you mean 'tv-horse'"):
        get_table("tv-hors")


def test_register_table_adds_a_table():
    from semiseg.bench.spec import Table

    @register_table("test-only-table")
    def build() -> Table:
        return Table("test-only-table", "T", "supervised-horse", [], "pixel_error", "pe")

    try:
        assert "test-only-table" in table_names() and get_table("test-only-table").title == "T"
    finally:
        TABLES.pop("test-only-table")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_row_keys_are_unique_and_reused_rows_exist(name):
    table = TABLES[name]()
    keys = [r.key for r in table.rows]
    assert len(keys) == len(set(keys))
    for r in table.rows:
        if r.reuse is not None:
            assert r.reuse in keys
        if r.init_from is not None:  # a warm start comes from a row trained earlier in the table
            assert r.init_from in keys[: keys.index(r.key)]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_trained_row_builds_a_valid_config(name):
    table = TABLES[name]()
    for r in table.rows:
        if r.postprocess is None:
            cfg = row_config(table, r, seed=0, quick=True)
            assert cfg.train.seed == 0 and cfg.data.split.draw == 0


def test_every_trained_row_passes_the_trainers_supervision_checks():
    """The weak labels a row's split carries are read by its method (the trainer refuses unread
    ones), checked on stand-in streams of the row's kinds: translation's seg-only control carried
    the tags of the proposed rows, which nothing in it reads, so its tables stopped at that row."""
    import json
    from types import SimpleNamespace

    from semiseg.core import Supervision
    from semiseg.engine.run import build_method_for
    from semiseg.engine.trainer import check_supervision

    seen = set()
    for name in sorted(TABLES):
        table = TABLES[name]()
        for r in table.rows:
            if r.postprocess is not None:
                continue
            cfg = row_config(table, r, seed=0, quick=True)
            split = cfg.data.split
            key = json.dumps([cfg.method, split.supervision, split.unlabeled_supervision, split.unlabeled],
                             sort_keys=True, default=str)  # fmt: skip
            if key in seen:
                continue
            seen.add(key)
            labeled = SimpleNamespace(kind=Supervision[split.supervision.upper()])
            unlabeled = (
                None
                if split.unlabeled == "none"
                else SimpleNamespace(kind=Supervision[split.unlabeled_supervision.upper()])
            )
            data = SimpleNamespace(labeled=labeled, unlabeled=unlabeled)
            task = "classify" if split.supervision == "class" else "segment"
            try:
                check_supervision(cfg, build_method_for(cfg, 1, 2), data, task)
            except ConfigError as exc:
                pytest.fail(f"{name} | {r.key}: {exc}")


def test_tv_horse_rows_cover_every_n_with_the_paper_numbers():
    table = TABLES["tv-horse"]()
    by_key = {r.key: r for r in table.rows}
    for n, (sup, mrf, tv) in TV_PAPER.items():
        assert by_key[f"supervised | {n} px/image"].paper == sup
        assert by_key[f"MRF post-processing | {n} px/image"].paper == mrf
        assert by_key[f"TV | {n} px/image"].paper == tv
        edge = row_config(table, by_key[f"TV, edge-aware | {n} px/image"], seed=1, quick=True)
        assert edge.method["name"] == "tv" and edge.data.split.sparse_pixels == n
        assert edge.method["edge_sigma"] == TV_EDGE["method.edge_sigma"]
        plain = row_config(table, by_key[f"TV | {n} px/image"], seed=1, quick=True)
        assert "edge_sigma" not in plain.method and plain.method["tv_weight"] == TV_PLAIN["method.tv_weight"]
        assert plain.data.split.draw == 1  # each seed is another sparse draw


@pytest.mark.parametrize("quick", [True, False])
def test_tv_horse_composition_rows_match_their_parts(quick):
    """UniMatch and UniMatch + TV at 10 and 50 px: 3 draws in quick mode like their parts, the same
    epochs as the supervised / TV rows, and TV's weight relative to the supervised loss as in the TV row."""
    table = TABLES["tv-horse"]()
    by_key = {r.key: r for r in table.rows}
    for n in (10, 50):
        keys = [f"{m} | {n} px/image" for m in ("supervised", "TV", "UniMatch", "UniMatch + TV")]
        seeds = {k: by_key[k].seeds_for(table.quick_seeds if quick else table.seeds, quick) for k in keys}
        assert len({tuple(v) for v in seeds.values()}) == 1 and len(seeds[keys[0]]) >= 3
        sup, tv, uni, both = (row_config(table, by_key[k], seed=0, quick=quick) for k in keys)
        assert uni.method["warmup_epochs"] + uni.train.epochs == sup.train.epochs == tv.train.epochs
        assert uni.method["pseudo_source"] == both.method["pseudo_source"] == "ema"
        (reg,) = both.method["regularizers"]
        assert reg["weight"] == pytest.approx(tv.method["tv_weight"] * UNIMATCH_SUPERVISED_WEIGHT)
        assert both.method["ce_weight"] == 1.0 and both.method["dice_weight"] == 0.0
        # UniMatch carries TV at weight 0 (the same network passes): only that weight differs
        assert uni.method["regularizers"] == [{**reg, "weight": 0.0}]
        assert {k: v for k, v in uni.method.items() if k != "regularizers"} == {
            k: v for k, v in both.method.items() if k != "regularizers"
        }


def test_step_time_baselines_are_supervised_on_as_many_images():
    table = TABLES["tv-horse"]()
    tv = row_config(table, next(r for r in table.rows if r.key == "TV | 10 px/image"), seed=0, quick=True)
    base = supervised_baseline(tv)
    assert base.method == {"name": "supervised", "ce_weight": tv.method["ce_weight"]}
    assert base.train.batch_size == tv.train.batch_size
    assert base.data == tv.data and base.model == tv.model and base.train.lr == tv.train.lr
    table = TABLES["curriculum-acdc"]()
    row = next(r for r in table.rows if r.key.startswith("Proposed"))
    cfg = row_config(table, row, seed=0, quick=True)
    method, base = size_step_configs(cfg)
    assert method.method["source"] == "regressor" and "ramp_up_steps" not in method.method
    assert base.method["name"] == "supervised" and base.data == method.data
    assert set(base.method) <= {"name", "ce_weight", "dice_weight"}


@pytest.mark.parametrize("name, classes", [("curriculum-acdc", [1]), ("curriculum-acdc-4class", [1, 2, 3])])
def test_curriculum_rows_start_from_fs_and_train_the_same_extra_epochs(name, classes):
    from semiseg.bench.tables import CONTINUE_EPOCHS, CONTINUE_EPOCHS_QUICK, CURRICULUM_PAPER

    table = TABLES[name]()
    by_key = {r.key: r for r in table.rows}
    ns = sorted({int(r.setting.split()[0]) for r in table.rows})
    assert ns == ([1, 2, *sorted(CURRICULUM_PAPER)] if name == "curriculum-acdc" else [3, 7])
    for n in ns:
        setting = patients(n)
        fs = row_config(table, by_key[f"FS | {setting}"], seed=2, quick=True)
        assert fs.method["source"] == "fs" and fs.data.split.labeled == n and fs.train.init is None
        sources = {"FS, continued": "fs", "Proposals": "proposals", "Proposed (size regressor)": "regressor",
                   "Oracle (true size)": "oracle"}  # fmt: skip
        for method, source in sources.items():
            row = by_key[f"{method} | {setting}"]
            assert row.init_from == f"FS | {setting}"
            for quick, epochs in ((True, CONTINUE_EPOCHS_QUICK), (False, CONTINUE_EPOCHS)):
                cfg = row_config(table, row, seed=2, quick=quick)
                assert cfg.method["source"] == source and cfg.train.epochs == epochs
                assert cfg.data.split.labeled == n and cfg.data.split.draw == 2
        if name == "curriculum-acdc" and n in (1, 2, 5):  # UniMatch, alone and with Proposed's size penalty
            for quick, epochs in ((True, CONTINUE_EPOCHS_QUICK), (False, CONTINUE_EPOCHS)):
                uni = row_config(table, by_key[f"UniMatch | {setting}"], seed=2, quick=quick)
                both = row_config(table, by_key[f"UniMatch + size | {setting}"], seed=2, quick=quick)
                assert uni.method["name"] == both.method["name"] == "unimatch"
                assert uni.train.epochs == both.train.epochs == epochs and uni.data == both.data
                (size,) = both.method["regularizers"]
                proposed = row_config(
                    table, by_key[f"Proposed (size regressor) | {setting}"], seed=2, quick=quick
                )
                assert (size["source"], size["gamma"]) == ("regressor", proposed.method["gamma"])
                # the same weight relative to the supervised loss: UniMatch's is 0.5 x (0.5 CE + 0.5 Dice)
                # (semi-acdc's), Proposed's CE + Dice
                assert (both.method["ce_weight"], both.method["dice_weight"]) == (0.5, 0.5)
                assert (proposed.method["ce_weight"], proposed.method["dice_weight"]) == (1.0, 1.0)
                assert size["weight"] == pytest.approx(
                    proposed.method["size_weight"] * UNIMATCH_SUPERVISED_WEIGHT * 0.5
                )
                assert size["regressor_epochs"] == proposed.method["regressor_epochs"]
                # UniMatch carries the same regulariser at weight 0: the rows differ only in that weight
                (zero,) = uni.method["regularizers"]
                assert zero == {**size, "weight": 0.0}
                assert {k: v for k, v in uni.method.items() if k != "regularizers"} == {
                    k: v for k, v in both.method.items() if k != "regularizers"
                }
                assert by_key[f"UniMatch + size | {setting}"].init_from == f"FS | {setting}"
        oracle = row_config(table, by_key[f"Oracle (true size) | {setting}"], seed=0, quick=True)
        assert oracle.data.split.unlabeled_supervision == "size"
        assert (
            row_config(table, by_key[f"Proposals | {setting}"], seed=0, quick=True).method["fs_epochs"] == 0
        )
    if name == "curriculum-acdc":
        for n, paper in CURRICULUM_PAPER.items():
            got = [by_key[f"{m} | {patients(n)}"].paper for m in
                   ("FS", "Proposals", "Proposed (size regressor)", "Oracle (true size)")]  # fmt: skip
            assert got == list(paper)
    assert len(table.seeds) >= 3 and len(table.quick_seeds) >= 3


def test_semi_acdc_rows_share_the_quick_budget_and_the_listed_first_draw():
    table = TABLES["semi-acdc"]()
    by_key = {r.key: r for r in table.rows}
    assert {r.setting for r in table.rows} == {patients(n) for n in (1, 3, 7)}
    sup = row_config(table, by_key[f"supervised | {patients(3)}"], seed=0, quick=True)
    assert sup.data.split.unlabeled == "none"  # the supervised row never sees the unlabeled slices
    for r in table.rows:
        cfg = row_config(table, r, seed=0, quick=True)
        assert cfg.data.split.first_draw == "listed" and cfg.train.eval_last
        assert (cfg.data.image_size, cfg.train.batch_size, cfg.train.optimizer, cfg.train.lr) == (
            sup.data.image_size, sup.train.batch_size, sup.train.optimizer, sup.train.lr)  # fmt: skip
        assert cfg.model == sup.model and cfg.train.augment == sup.train.augment
        if not r.method.startswith("supervised"):
            assert cfg.data.split.unlabeled == "rest"
    # the schedule control of the FixMatch / UniMatch quick recipes: 10 epochs, then 15 from its best.pt
    first, restart = (by_key[f"{name} | {patients(3)}"] for name in (SUP_FIRST, SUP_RESTART))
    assert restart.init_from == first.key and restart.recipe == first.recipe == "supervised-acdc"
    fixmatch = row_config(table, by_key[f"FixMatch | {patients(3)}"], seed=0, quick=True)
    assert row_config(table, first, seed=0, quick=True).train.epochs == fixmatch.method["warmup_epochs"]
    assert row_config(table, restart, seed=0, quick=True).train.epochs == fixmatch.train.epochs
    assert first.seeds_for(table.quick_seeds, True) == restart.seeds_for(table.quick_seeds, True) == [0, 1, 2]
    # at 3 patients: >= 3 draws for supervised, the size-composed row and the two semi rows chosen
    at3 = [
        r for r in table.rows if r.setting == patients(3) and len(r.seeds_for(table.quick_seeds, True)) >= 3
    ]
    assert {"supervised", "UniMatch + size (regressor)"} <= {r.method for r in at3} and len(at3) >= 4
    # the composed row's control: the same regulariser at weight 0, with as many draws
    both, zero = (row_config(table, by_key[f"{m} | {patients(3)}"], seed=1, quick=True)
                  for m in ("UniMatch + size (regressor)", SEMI_SIZE_ZERO))  # fmt: skip
    assert zero.method["regularizers"] == [{**both.method["regularizers"][0], "weight": 0.0}]
    assert (
        zero.method | {"regularizers": None} == both.method | {"regularizers": None}
        and zero.data == both.data
    )
    assert SEMI_SIZE_ZERO in {r.method for r in at3}
    # full mode's supervised rows take UniMatch's supervised loss, (CE + Dice) / 2; quick mode the recipe's
    for quick, weights in ((False, (0.5, 0.5)), (True, (1.0, 1.0))):
        for name in ("supervised", SUP_FIRST, SUP_RESTART):
            cfg = row_config(table, by_key[f"{name} | {patients(3)}"], seed=0, quick=quick)
            assert (cfg.method["ce_weight"], cfg.method["dice_weight"]) == weights


def test_translation_mnist_rows_carry_table_1_and_share_each_variants_budget():
    from semiseg.bench.cache import run_key
    from semiseg.config import to_dict

    table = TABLES["translation-mnist"]()
    by_key = {r.key: r for r in table.rows}
    # the paper's Table 1 (a) x 100, and the skip ablation (b) on 48x48 hard
    assert by_key["seg-only | 48x48 simple"].paper == pytest.approx(61)
    assert by_key["proposed | 48x48 hard"].paper == pytest.approx(57)
    assert by_key["proposed (sep dec) | 128x128"].paper == pytest.approx(70)
    assert by_key["proposed, skip none | 48x48 hard"].paper == pytest.approx(42)
    assert len(table.rows) == 4 * 3 + 4
    for quick in (False, True):
        for setting in ("48x48 simple", "48x48 hard", "128x128"):
            cfgs = [row_config(table, r, seed=1, quick=quick) for r in table.rows if r.setting == setting]
            budget = {(c.data.variant, c.data.image_size[0], c.train.epochs, c.train.iters_per_epoch,
                       c.train.batch_size, c.model.width) for c in cfgs}  # fmt: skip
            assert len(budget) == 1, (setting, budget)
            assert all(c.data.split.labeled_labels == [9] and c.data.split.draw == 1 for c in cfgs)
    # `skip compress` is `proposed` itself: the same run in the cache
    same = [row_config(table, by_key[k], seed=0, quick=True) for k in
            ("proposed | 48x48 hard", "proposed, skip compress | 48x48 hard")]  # fmt: skip
    assert run_key("src", to_dict(same[0]), 0) == run_key("src", to_dict(same[1]), 0)
    assert by_key["proposed | 128x128"].seeds_for(table.quick_seeds, quick=True) == [0]


def test_missed_classes_are_counted_per_volume_and_class_beside_the_distance_means():
    """A class missing from a prediction has no HD95 (nan) and drops out of the mean: the extras
    count those pairs so a row that misses more classes cannot pass for a better one."""
    nan = float("nan")
    result = {
        "test_cases": [
            {
                "hd95_px/1": nan,
                "hd95_px/2": 3.0,
                "hd95_px/3": 2.0,
                "hd95_px/mean": 2.5,
                "dice/1": 0.0,
                "id": "a",
            },
            {
                "hd95_px/1": 4.0,
                "hd95_px/2": nan,
                "hd95_px/3": nan,
                "hd95_px/mean": 4.0,
                "dice/1": 0.5,
                "id": "b",
            },
        ]
    }
    counts: dict[str, int] = {}
    _count_missed(counts, result, "hd95_px/mean")
    assert counts == {"missed": 3, "pairs": 6}
    _count_missed(counts, {"test_cases": [{"hd95_px/1": 1.0, "hd95_px/mean": 1.0}]}, "hd95_px/mean")
    assert counts == {"missed": 3, "pairs": 7}


def test_shape_prior_rows_at_3_patients_have_weight_0_controls_with_the_same_passes():
    """Each prior row at 3 patients has a control that differs from it only in the prior's weight (0):
    the same autoencoder phase, streams and batches, so the difference is the prior's own effect."""
    from semiseg.bench.tables import SHAPE_PRIOR_SEMI

    table = TABLES["shape-prior-acdc"]()
    by_key = {r.key: r for r in table.rows}
    for name in ("supervised", SHAPE_PRIOR_SEMI[0]):
        for quick in (True, False):
            prior_row = by_key[f"{name} + shape prior | {patients(3)}, mean over RV/MYO/LV"]
            zero_row = by_key[f"{name} + shape prior at weight 0 | {patients(3)}, mean over RV/MYO/LV"]
            assert prior_row.tuned and not zero_row.tuned
            prior = row_config(table, prior_row, seed=1, quick=quick)
            zero = row_config(table, zero_row, seed=1, quick=quick)
            assert [r["weight"] for r in zero.method["regularizers"]] == [0.0]
            assert zero.method["regularizers"] == [{**prior.method["regularizers"][0], "weight": 0.0}]
            assert zero.method | {"regularizers": None} == prior.method | {"regularizers": None}
            assert zero.data == prior.data and zero.train == prior.train
            seeds = table.quick_seeds if quick else table.seeds
            assert zero_row.seeds_for(seeds, quick) == prior_row.seeds_for(seeds, quick)


@pytest.mark.parametrize("quick", [True, False])
def test_acdc_3d_semi_row_is_its_recipe_moved_to_volumes_as_the_3d_recipes(quick):
    """The 3D row of the semi-supervised method (the 2D recipe + TO_3D) differs from unimatch-acdc-3d,
    the 2D recipe moved to volumes by hand, only in the method's own fields."""
    from semiseg.bench.tables import BEST_SEMI
    from semiseg.config import build_config, load_yaml, to_dict

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    table = get_table("acdc-3d")
    rows = {r.key: r for r in table.rows}
    ours = flat(
        to_dict(row_config(table, rows[f"{BEST_SEMI[0]}, 3D UNet (patches) | 3 labeled patients"], 0, quick))
    )
    ref = flat(to_dict(build_config(load_yaml("unimatch-acdc-3d"), ['data.split.first_draw="listed"', "data.split.draw=0",
                                                                     "train.progress=false"], quick=quick)))  # fmt: skip
    differ = {k for k in set(ours) | set(ref) if ours.get(k) != ref.get(k)}
    assert {k for k in differ if not k.startswith(("method.", "quick.", "output_dir"))} == set()
    assert ours["model.spatial_dims"] == 3 and ours["data.dataset"] == "acdc_3d"


def test_ssldec_acdc_rows_with_rounds_share_the_quick_retraining_cap():
    """The control, the pseudo model and SSLDEC retrain under the same cap (quick: 5 epochs); the
    bounds, which have no rounds, keep their configs (and so their finished runs)."""
    table = get_table("ssldec-acdc")
    caps = {}
    for row in table.rows:
        cfg = row_config(table, row, 0, quick=True)
        caps.setdefault(cfg.method.get("max_rounds") != 0, set()).add(cfg.method["max_retrain_epochs"])
        if "bound" in row.method and "schedule" not in row.method:
            assert row.quick_overrides == {}
    assert caps == {True: {5}, False: {20}}
