"""``semiseg demo``: the rows are a fair comparison, and a short run prints and plots every row."""

from __future__ import annotations

import json

import pytest

from semiseg.demo import BASE, CONTROL, RUNS, SEMI, format_table, run_config


def configs(epochs=None):
    return {name: run_config(overrides, epochs) for name, _, overrides in RUNS}


def test_rows_read_few_labels_then_semi_then_clicks_then_all():
    assert [name for name, _, _ in RUNS] == ["dense-8", "semi-8", "sparse-20px", "dense-all"]
    assert (CONTROL, SEMI) == ("dense-8", "semi-8")


def test_semi_row_is_a_fair_control_of_dense_8():
    """Same labeled images, model, optimizer, batch and iterations; only the unlabeled stream differs."""
    from semiseg.data import load_bundle
    from semiseg.data.splits import make_split

    cfg = configs()
    dense, semi = cfg[CONTROL], cfg[SEMI]
    assert semi.method["name"] != "supervised" and dense.method["name"] == "supervised"
    assert dense.data.split.unlabeled == "none" and semi.data.split.unlabeled == "rest"
    assert semi.model == dense.model
    for key in ("epochs", "iters_per_epoch", "batch_size", "lr", "optimizer", "scheduler", "augment", "seed"):
        assert getattr(semi.train, key) == getattr(dense.train, key), key
    for key in ("ce_weight", "dice_weight"):
        assert semi.method[key] == dense.method[key], key
    bundle = load_bundle(dense.data)
    few, more = make_split(bundle, dense.data.split), make_split(bundle, semi.data.split)
    assert [r.id for r in few.labeled] == [r.id for r in more.labeled]
    assert len(few.labeled) == 8 and not few.unlabeled
    assert len(more.unlabeled) > 100  # every other training image
    assert {r.id for r in more.unlabeled}.isdisjoint(r.id for r in more.labeled + more.val + more.test)
    assert [r.id for r in few.test] == [r.id for r in more.test]
    assert [r.id for r in few.val] == [r.id for r in more.val]


@pytest.mark.parametrize("epochs", [None, 2])
def test_semi_ramp_spans_the_run(epochs):
    semi = configs(epochs)[SEMI]
    steps = semi.train.epochs * semi.train.iters_per_epoch
    assert semi.train.epochs == (epochs or BASE["train"]["epochs"])
    assert semi.method["ramp_up_steps"] == steps
    assert 0 < semi.method["consistency_start_step"] < steps


def test_run_config_does_not_alias_the_module_constants():
    cfg = run_config(dict(RUNS[1][2]))
    cfg.method["consistency_weight"] = -1
    assert run_config(dict(RUNS[1][2])).method["consistency_weight"] != -1
    assert "ramp_up_steps" not in RUNS[1][2]["method"]


def test_table_shows_the_gain_over_the_control():
    rows = [
        {"run": n, "labels": lab, "method": m, "labeled_images": k, "unlabeled_images": u,
         "test_dice": d, "test_pixel_error": 0.1, "seconds": 1.0, "dice_vs_control": d - 0.3}
        for n, lab, m, k, u, d in [
            ("dense-8", "8 images", "supervised", 8, 0, 0.3),
            ("semi-8", "8 images + rest", "mean_teacher", 8, 165, 0.42),
        ]
    ]  # fmt: skip
    table = format_table(rows)
    assert "vs dense-8" in table.splitlines()[0]
    assert "+0.120" in table.splitlines()[3]
    assert table.splitlines()[-1] == (
        "semi-8 (mean teacher, 8 labeled + 165 unlabeled images, same iterations): "
        "+0.120 test Dice over dense-8 (gain)"
    )
    rows[1]["dice_vs_control"] = -0.02
    assert format_table(rows).endswith("-0.020 test Dice over dense-8 (no gain)")


def test_short_demo_prints_every_row_and_writes_the_figure(tmp_path, capsys):
    base = json.loads(json.dumps(BASE))
    base["data"].update(image_size=[32, 32], num_images=40)
    base["model"]["width"] = 4
    base["train"].update(iters_per_epoch=2, batch_size=4, val_every=1, plots=False)
    from semiseg.demo import run_demo

    rows = run_demo(tmp_path, epochs=1, base=base)
    assert [r["run"] for r in rows] == [name for name, _, _ in RUNS]
    by_name = {r["run"]: r for r in rows}
    assert by_name[SEMI]["labeled_images"] == by_name[CONTROL]["labeled_images"] == 8
    assert by_name[SEMI]["unlabeled_images"] > 0 and by_name[CONTROL]["unlabeled_images"] == 0
    assert by_name[SEMI]["iterations"] == by_name[CONTROL]["iterations"] == 2
    out = capsys.readouterr().out
    assert "test Dice over dense-8" in out
    for name in by_name:
        assert name in out
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert json.loads((tmp_path / "comparison.json").read_text())[1]["run"] == SEMI
