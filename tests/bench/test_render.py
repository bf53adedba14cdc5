"""Markdown of results: statistics of single runs, step-time ratios, mixed sources refused, and the
committed results re-rendered from their JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semiseg.bench.render import MixedSourcesError, main, markdown, write_results
from semiseg.bench.stats import sample_std, summarise, supports_claim

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _results(rows=(), runs=(), **provenance):
    return {
        "table": "t",
        "title": "T",
        "rows": list(rows),
        "runs": list(runs),
        "notes": "",
        "provenance": {
            "mode": "quick",
            "seeds": [0],
            "git_commit": "abc",
            "wall_seconds": 1.0,
            "hardware": {"cpu": "cpu", "cores": 2, "torch": "2"},
            "throughput": {"images_per_second": 1.0, "peak_rss_mib": 2.0},
            **provenance,
        },
    }


def _row(method, n_runs, mean=10.0, std=None):
    return {"method": method, "setting": "s", "metric": "m", "mean": mean, "std": std, "n_runs": n_runs,
            "paper": None}  # fmt: skip


# ------------------------------------------------------------------------------------ statistics
def test_summary_of_one_run_has_no_std():
    assert summarise([4.0]) == {"mean": 4.0, "std": None, "n_runs": 1}
    assert summarise([1.0, 2.0, 4.0]) == {"mean": 2.333, "std": 1.528, "n_runs": 3}
    assert sample_std([3.0]) is None and sample_std([1.0, 1.0]) == 0.0
    assert not supports_claim({"n_runs": 1}) and supports_claim({"n_runs": 2})
    with pytest.raises(ValueError):
        summarise([])


@pytest.mark.parametrize("std", [None, 0.0])  # new results (null) and older ones (0.0)
def test_a_single_run_row_shows_n1_and_is_marked(std):
    md = markdown(_results([_row("one", 1, 8.7, std), _row("two", 2, 9.79, 0.245)]))
    assert "| one | s | m | 8.70† | n=1 | 1 | – |" in md
    assert "| two | s | m | 9.79 | 0.24 | 2 | – |" in md  # ± is shown only with two or more runs
    assert "0.00" not in md
    assert "† a single run (n=1): no spread estimate; the row does not support a claim." in md


def test_no_mark_when_every_row_has_several_runs():
    md = markdown(_results([_row("two", 2, 9.0, 0.5)]))
    assert "†" not in md and "n=1" not in md


# ------------------------------------------------------------------------------------ source hashes
def _run(source):
    return {"method": "m", "setting": "s", "seed": 0, "test": 1.0, "source_hash": source}


def test_rendering_refuses_runs_of_different_sources(tmp_path):
    mixed = _results([_row("m", 2, 1.0, 0.0)], [_run("aaaa"), _run("bbbb")])
    with pytest.raises(MixedSourcesError) as err:
        markdown(mixed)
    message = str(err.value)
    assert "\n" not in message and "aaaa, bbbb" in message and "re-run" in message
    with pytest.raises(MixedSourcesError):
        write_results(mixed, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written
    path = tmp_path / "t.json"
    path.write_text(json.dumps(mixed))
    assert main([str(path)]) == 2 and not path.with_suffix(".md").exists()


def test_one_source_or_results_from_before_source_hashes_render():
    assert "# t: T" in markdown(_results([_row("m", 2, 1.0, 0.0)], [_run("aaaa"), _run("aaaa")]))
    assert "# t: T" in markdown(_results([_row("m", 2, 1.0, 0.0)], [{"test": 1.0}]))


# ------------------------------------------------------------------------------------ step-time ratios
def _ratio(r, rounds=7):
    out = {"ratio": r, "seconds_per_step": {"method": 0.2, "baseline": 0.1}}
    if rounds:
        out.update(rounds=rounds, steps_per_round=3, image_size=[128, 128],
                   images_per_step={"method": 16, "baseline": 16})  # fmt: skip
    else:  # recorded by the earlier measurement
        out.update(image_size=128, batch_size=16)
    return out


def test_step_time_ratios_render_to_two_decimals():
    one = markdown(_results(step_time_ratio=_ratio(1.05)))
    assert "the trainer's `train_step`" in one and "medians of 7 interleaved rounds of 3 iterations" in one
    assert "1.05 (0.200 s vs 0.100 s per iteration, 16 vs 16 images of 128x128)" in one
    several = markdown(_results(step_time_ratio={"TV": _ratio(1.05), "TV, edge-aware": _ratio(1.1)}))
    assert "TV 1.05 (" in several and "TV, edge-aware 1.10 (" in several


def test_earlier_step_time_ratios_are_shown_as_recorded_and_marked():
    md = markdown(_results(step_time_ratio={"TV": _ratio(0.996, rounds=0)}))
    assert "earlier measurement" in md and "superseded" in md
    assert "TV 0.996 (0.200 s vs 0.100 s, 128x128, batch 16)" in md


# ------------------------------------------------------------------------------------ committed results
# a bench table's result names its table (other scripts' results may have rows too, e.g. tta-acdc)
TABLE_RESULTS = sorted(
    p for p in RESULTS.glob("*.json") if {"table", "rows"} <= set(json.loads(p.read_text()))
)


@pytest.mark.parametrize("path", TABLE_RESULTS, ids=lambda p: p.stem)
def test_committed_markdown_is_the_rendering_of_its_json(path):
    results = json.loads(path.read_text())
    md = markdown(results)
    assert md == path.with_suffix(".md").read_text()
    for row in results["rows"]:  # every number of the table is the JSON's, at 2 decimals
        assert f"{row['mean']:.2f}" in md
        assert (f"{row['std']:.2f}" if row["n_runs"] > 1 else "n=1") in md


def test_last_checkpoint_column_only_when_a_row_has_it():
    assert "last checkpoint" not in markdown(_results([_row("one", 2, 9.0, 0.5)]))
    rows = [{**_row("a", 2, 9.0, 0.5), "last": {"mean": 8.0, "std": 1.0}}, _row("b", 1, 7.0)]
    md = markdown(_results(rows))
    assert "| a | s | m | 9.00 | 0.50 | 2 | 8.00 ± 1.00 | – |" in md
    assert "| b | s | m | 7.00† | n=1 | 1 | – | – |" in md


def _step_ratio_file(tmp_path, source="s1"):
    case = {
        "recipe": "bcp-acdc",
        "step": {"ratio": 2.54},
        "budget": {"ratio_to_budget": 1.12, "ratio_to_budget_paired": 1.15,
                   "ratio_to_budget_paired_quartiles": [1.07, 1.2],
                   "passes_per_batch_size": {"grad": {"8": 16.0}, "nograd": {"8": 8.0}}},
    }  # fmt: skip
    prov = {"git_commit": "0123456789abcdef", "source_hash": source, "rounds": 15}
    doc = {"cases": [case], "target_ratio_to_budget": 1.15, "provenance": prov}
    (tmp_path / "semi-step-ratio.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("source, same", [("s1", True), ("s0", False)])
def test_semi_acdc_provenance_carries_the_committed_pass_budget(tmp_path, source, same):
    """semi-acdc's extras read the committed step-ratio measurement and say whether it timed the
    table's training code; the Markdown prints each method's ratios beside its passes."""
    from types import SimpleNamespace

    from semiseg.bench.tables import _semi_extras

    ctx = SimpleNamespace(results_dir=tmp_path, cache=SimpleNamespace(source="s1"))
    assert _semi_extras(ctx)["pass_budget"]["missing"]
    assert "not measured" in markdown(_results(**_semi_extras(ctx)))
    _step_ratio_file(tmp_path, source)
    extras = _semi_extras(ctx)
    assert extras["pass_budget"]["same_training_code"] is same
    md = markdown(_results(**extras))
    assert (
        "bcp 1.12, per round 1.15 (1.07–1.20), step ratio 2.54, passes with grad 16 (b8), without 8 (b8)"
        in md
    )
    assert ("the same training code as these runs" in md) is same
    assert ("**other training code** (source hash `s0`)" in md) is not same


@pytest.mark.parametrize("same", [True, False])
def test_translation_tables_render_their_committed_step_ratios(tmp_path, same):
    """translation-mnist's extras name the committed step-ratio file (or its absence) in a shape of
    their own; the Markdown renders both instead of failing before the results are written."""
    import shutil
    from types import SimpleNamespace

    from semiseg.bench.tables import TRANSLATION_STEP_RATIOS, _translation_extras

    ctx = SimpleNamespace(results_dir=tmp_path, cache=SimpleNamespace(source="s0"), run_dirs={})
    md = markdown(_results(**_translation_extras(ctx)))
    assert f"`{TRANSLATION_STEP_RATIOS}` not found" in md  # named, not the absolute path
    shutil.copy(RESULTS / TRANSLATION_STEP_RATIOS, tmp_path / TRANSLATION_STEP_RATIOS)
    committed = json.loads((RESULTS / TRANSLATION_STEP_RATIOS).read_text())
    if same:
        ctx.cache.source = committed["provenance"]["source_hash"]
    md = markdown(_results(**_translation_extras(ctx)))
    for case in committed["cases"]:
        assert (
            f"{case['architecture']} {case['ratio']:.2f} ({case['seconds_per_step']['method']:.3f} s vs" in md
        )
    assert ("the same training code as these runs" in md) is same


def test_the_table_states_what_its_runs_cost_each_run_once():
    """The issue notes need the CPU spent: the Markdown sums the runs' records, a reused run once."""
    from semiseg.bench.runner import training_cost

    runs = [{"run_dir": "a", "seconds": 7200, "cpu_seconds": 5400}, {"run_dir": "a", "seconds": 7200, "cpu_seconds": 5400},
            {"run_dir": "b", "seconds": 3600, "cpu_seconds": 3600}]  # fmt: skip
    cost = training_cost(runs)
    assert cost == {"runs": 2, "wall_hours": 3.0, "cpu_hours": 2.5, "runs_without_cpu_seconds": 0}
    text = markdown(_results(training_cost=cost))
    assert "Training cost of the table's 2 runs" in text and "2.5 CPU-hours." in text
    # an MRF or ensemble row names a trained run's folder (after it, as the runner lists rows): it
    # neither replaces that run's record nor counts as a run
    post = [{"run_dir": "a", "seconds": 3.0, "status": "post-processed"},
            {"run_dir": "b", "seconds": 5.0, "status": "ensembled"}]  # fmt: skip
    assert training_cost(runs + post) == cost


def test_every_figure_of_a_table_is_named():
    md = markdown(_results(figure_moons="r/ssldec-moons.png", figure_mnist="r/ssldec-mnist.png"))
    assert "Figure (moons): `ssldec-moons.png`" in md and "Figure (mnist): `ssldec-mnist.png`" in md
    md = markdown(_results(figure="r/ioda-fig6.png", figure_image="validation 10"))
    assert "Figure: `ioda-fig6.png`" in md and "validation 10`" not in md


def test_distances_of_the_same_runs_render_by_row_with_missed_classes_unit_and_memory():
    p = {
        "distances": {
            "HD95 (voxels)": {
                "a | 3 patients": summarise([2.0, 4.0, 6.0]),
                "b | 7 patients": summarise([5.0]),
            },
            "ASD (voxels)": {"a | 3 patients": summarise([1.0, 1.0, 1.0])},
        },
        "distance_unit": "voxels of the native grid",
        "missed_classes": {"note": "left out of the means", "a | 3 patients": {"missed": 2, "pairs": 240}},
        "peak_memory_mib_3d": {"a | 3 patients": 1234.4},
        "peak_memory_note": "an upper bound",
    }
    md = markdown(_results([_row("one", 3, 1.0, 0.5)], **p))
    assert "| method | setting | HD95 (voxels) | ASD (voxels) | (volume, class) pairs without HD95 |" in md
    assert "| a | 3 patients | 4.00 ± 2.00 (n=3) | 1.00 ± 0.00 (n=3) | 2 of 240 |" in md
    assert "| b | 7 patients | 5.00† (n=1) | – | – |" in md  # one run: marked, no spread
    assert "Unit: voxels of the native grid" in md and "Missed: left out of the means" in md
    assert "Peak resident memory of the 3D runs: a | 3 patients: 1234 MiB (an upper bound)." in md
    assert "Distances" not in markdown(_results([_row("one", 3, 1.0, 0.5)]))  # no extras, no section


def test_distance_rows_follow_the_table_order_also_without_the_metric_part_of_the_setting():
    rows = [{**_row("sup", 3, 10.0, 1.0), "setting": "3 patients, mean over RV/MYO/LV"},
            {**_row("FixMatch", 3, 10.0, 1.0), "setting": "3 patients, mean over RV/MYO/LV"}]  # fmt: skip
    hd95 = {"HD95 (voxels)": {"FixMatch | 3 patients": summarise([1.0, 2.0]), "sup | 3 patients": summarise([3.0, 4.0])},
            "empty": {}}  # fmt: skip
    md = markdown(_results(rows, hd95=hd95, hd95_unit="voxels"))
    assert md.index("| sup | 3 patients | 3.50") < md.index("| FixMatch | 3 patients | 1.50")  # table order
    assert "empty" not in md  # a measure without rows gets no column
