"""The built-in table definitions: row keys, protocol settings, and how extras render."""

from __future__ import annotations

import pytest

from semiseg.bench.runner import markdown, row_config
from semiseg.bench.tables import TABLES, TV_EDGE, TV_PAPER, TV_PLAIN


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


def _results(step_time_ratio):
    return {
        "table": "t",
        "title": "T",
        "rows": [],
        "notes": "",
        "provenance": {
            "mode": "quick",
            "seeds": [0],
            "git_commit": "abc",
            "wall_seconds": 1.0,
            "hardware": {"cpu": "cpu", "cores": 2, "torch": "2"},
            "throughput": {"images_per_second": 1.0, "peak_rss_mib": 2.0},
            "step_time_ratio": step_time_ratio,
        },
    }


def _ratio(r):
    return {
        "ratio": r,
        "seconds_per_step": {"method": 0.2, "baseline": 0.1},
        "image_size": 128,
        "batch_size": 16,
    }


def test_markdown_renders_one_or_several_step_time_ratios():
    one = markdown(_results(_ratio(1.05)))
    assert "supervised step time" in one and "1.050 (0.200 s vs 0.100 s, 128x128, batch 16)" in one
    several = markdown(_results({"TV": _ratio(1.05), "TV, edge-aware": _ratio(1.1)}))
    assert "TV 1.050" in several and "TV, edge-aware 1.100" in several


@pytest.mark.parametrize("name, classes", [("curriculum-acdc", [1]), ("curriculum-acdc-4class", [1, 2, 3])])
def test_curriculum_rows_start_from_fs_and_train_the_same_extra_epochs(name, classes):
    from semiseg.bench.tables import CONTINUE_EPOCHS, CONTINUE_EPOCHS_QUICK, CURRICULUM_PAPER

    table = TABLES[name]()
    by_key = {r.key: r for r in table.rows}
    ns = sorted({int(r.setting.split()[0]) for r in table.rows})
    assert ns == (sorted(CURRICULUM_PAPER) if name == "curriculum-acdc" else [3, 7])
    for n in ns:
        setting = f"{n} labeled patients"
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
        oracle = row_config(table, by_key[f"Oracle (true size) | {setting}"], seed=0, quick=True)
        assert oracle.data.split.unlabeled_supervision == "size"
        assert (
            row_config(table, by_key[f"Proposals | {setting}"], seed=0, quick=True).method["fs_epochs"] == 0
        )
    if name == "curriculum-acdc":
        for n, paper in CURRICULUM_PAPER.items():
            got = [by_key[f"{m} | {n} labeled patients"].paper for m in
                   ("FS", "Proposals", "Proposed (size regressor)", "Oracle (true size)")]  # fmt: skip
            assert got == list(paper)
    assert len(table.seeds) >= 3 and len(table.quick_seeds) >= 3
