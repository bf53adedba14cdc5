"""The benchmark runner on a tiny temporary table: results JSON / Markdown and their schema,
statistics over seeds, validation-only tuning, MRF rows that reuse trained runs, provenance (user
overrides, mode) and ``row_config``."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from bench_helpers import (
    COMMIT,
    MODEL,
    MRF,
    SOURCE,
    SUP,
    THROUGHPUT,
    TV,
    TV_WEIGHTS,
    USER,
    Spy,
    check_schema,
    registered,
    runs_of,
    simple_table,
    tiny_table,
    write_recipe,
)

from semiseg.bench import provenance
from semiseg.bench.cache import run_key
from semiseg.bench.render import markdown
from semiseg.bench.runner import Row, row_config, run_table
from semiseg.config import to_dict
from semiseg.errors import ConfigError

HW = provenance.hardware()
HERE = f"{HW['cpu']}, {HW['cores']} cores" + (f", {HW['gpu']}" if HW["gpu"] else "")  # this machine


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One quick run of the tiny table: 2 seeds, 2 tuning trials (5 trainings in all)."""
    root = tmp_path_factory.mktemp("bench")
    table = tiny_table(write_recipe(root / "tiny.yaml"))
    with pytest.MonkeyPatch.context() as mp, registered(table):
        spy = Spy(mp)
        results = run_table(
            "tiny-tv", quick=True, results_dir=root / "results", work_dir=root / "work", overrides=USER
        )
    return {"results": results, "spy": spy, "root": root, "table": table}


# ---------------------------------------------------------------------------------------- files, schema
def test_results_written_with_the_required_schema(bench):
    results, results_dir = bench["results"], bench["root"] / "results"
    written = json.loads((results_dir / "tiny-tv.json").read_text())
    assert written == json.loads(json.dumps(results, default=float))
    check_schema(written)
    assert written["table"] == "tiny-tv" and written["title"] == "Tiny TV table"
    assert [(r["method"], r["setting"]) for r in written["rows"]] == [
        ("supervised", "20 px"),
        ("MRF post-processing", "20 px"),
        ("TV", "20 px"),
    ]
    assert [r["paper"] for r in written["rows"]] == [12.5, None, 9.0]
    assert all(r["metric"] == "pixel error (%)" for r in written["rows"])
    md = (results_dir / "tiny-tv.md").read_text()
    assert md == markdown(written)
    assert md.startswith("# tiny-tv: Tiny TV table")
    assert "| TV | 20 px | pixel error (%) |" in md and "Mode: **quick**" in md
    assert "Tuned on the validation split" in md and "12.5 images/s" in md
    assert "n=1" not in md and "does not support a claim" not in md  # every row has 2 runs


def test_mean_and_std_are_over_the_runs(bench):
    results = bench["results"]
    for row in results["rows"]:
        values = [r["test"] for r in runs_of(results, f"{row['method']} | {row['setting']}")]
        assert [r["seed"] for r in runs_of(results, f"{row['method']} | {row['setting']}")] == [0, 1]
        assert row["n_runs"] == len(values) == 2
        assert all(0 <= v <= 100 for v in values)  # pixel error in percent
        assert row["mean"] == pytest.approx(statistics.mean(values), abs=1e-3)
        assert row["std"] == pytest.approx(statistics.stdev(values), abs=1e-3)  # sample std (ddof=1)
    assert "ddof=1" in results["provenance"]["std"]


def test_provenance(bench):
    p, spy = bench["results"]["provenance"], bench["spy"]
    assert p["mode"] == "quick" and p["seeds"] == [0, 1]
    assert p["git_commit"] == COMMIT and p["source_hash"] == SOURCE
    config = p["config"]
    assert config["recipe"] == bench["table"].recipe
    assert config["user_overrides"] == USER
    assert config["tuned_rows"] == [TV]
    assert config["row_overrides"][TV] == {"method.name": "tv"}
    for key in (SUP, TV):  # quick section and the user's override are in every resolved config
        resolved = config["resolved_first_seed"][key]
        assert resolved["train"]["lr"] == 0.02 and resolved["train"]["weight_decay"] == 0.0001
        assert resolved["train"]["seed"] == 0 and resolved["data"]["split"]["draw"] == 0
    assert all(cfg.train.weight_decay == 0.0001 and cfg.train.lr == 0.02 for cfg, _ in spy.trained)
    assert spy.throughput == [MODEL]  # the model dict of the first row's config
    assert p["throughput"] == {"model": MODEL, **THROUGHPUT}
    assert p["run_keys"] == sorted([SUP, MRF, TV])  # the table's extras are merged into the provenance
    for run in bench["results"]["runs"]:  # every run records the code it was trained with
        assert run["git_commit"] == COMMIT and run["source_hash"] == p["source_hash"]
    # and its budget: optimizer steps by phase (1 epoch of 2 iterations)
    assert all(
        r["steps_by_phase"] == {"train": 2}
        for r in bench["results"]["runs"]
        if r["method"] != "MRF post-processing"
    )


# ---------------------------------------------------------------------------------------- tuning
def test_tuning_on_validation_picks_the_best_trial(bench):
    tuning = bench["results"]["provenance"]["tuning"]
    assert tuning["row"] == TV and tuning["seed"] == 0 and tuning["split"] == "val"
    trials = tuning["trials"]
    assert [t["overrides"] for t in trials] == [{"method.tv_weight": w} for w in TV_WEIGHTS]
    assert all(t["val_metric"] == "pixel_error" and math.isfinite(t["val"]) for t in trials)
    best = min(trials, key=lambda t: t["val"])  # pixel_error: lower is better; first wins ties
    assert tuning["chosen"] == best["overrides"]
    resolved = bench["results"]["provenance"]["config"]["resolved_first_seed"][TV]
    assert resolved["method"]["name"] == "tv"
    assert resolved["method"]["tv_weight"] == best["overrides"]["method.tv_weight"]
    # seed 0 of the tuned row is the chosen tuning run itself (same config → from the cache)
    tv0 = runs_of(bench["results"], TV)[0]
    assert tv0["val_best"]["value"] == best["val"] and tv0["status"] == "reused"
    assert tv0["run_dir"] == best["run_dir"]


def test_mrf_rows_post_process_the_supervised_runs(bench):
    spy, results = bench["spy"], bench["results"]
    supervised_dirs = [out for cfg, out in spy.trained if cfg.method["name"] == "supervised"]
    assert spy.postprocessed == supervised_dirs
    assert all((d / "best.pt").is_file() and (d / "bench-mrf.json").is_file() for d in supervised_dirs)
    for run in runs_of(results, MRF):
        table = {float(w): v for w, v in run["mrf_tuning_val"].items()}
        assert run["mrf_weight"] in table and table[run["mrf_weight"]] == min(table.values())
        assert math.isfinite(run["test"]) and run["status"] == "post-processed"
    for run in runs_of(results, SUP):
        assert "mrf_weight" not in run and run["val_best"]["value"] is not None


# ---------------------------------------------------------------------------------------- run cache
def test_each_config_is_trained_once_in_its_cache_folder(bench):
    spy, cache = bench["spy"], bench["root"] / "work" / "cache"
    # supervised seeds 0 and 1, two tuning trials, TV seed 1; TV seed 0 = a tuning trial; MRF: none
    assert len(spy.trained) == 5 and not any(spy.resumed)
    source = bench["results"]["provenance"]["source_hash"]
    for cfg, out in spy.trained:
        assert out == cache / run_key(source, to_dict(cfg), cfg.train.seed)
        record = json.loads((out / "bench-run.json").read_text())
        assert record["finished"] and record["source_hash"] == source and record["git_commit"] == COMMIT
        assert record["config"] == to_dict(cfg) and record["seed"] == cfg.train.seed
    assert len({out for _, out in spy.trained}) == 5
    assert [(cfg.method["name"], cfg.train.seed, cfg.data.split.draw) for cfg, _ in spy.trained[2:]] == [
        ("supervised", 0, 0),
        ("supervised", 1, 1),
        ("tv", 1, 1),
    ]
    assert bench["results"]["provenance"]["cache"] == {
        "dir": str(cache),
        "trained": 5,
        "resumed": 0,
        "reused": 1,
    }
    index = json.loads((bench["root"] / "work" / "tiny-tv" / "runs.json").read_text())
    assert index[f"{TV} | seed 1"] == str(spy.trained[-1][1])


def test_running_the_table_again_takes_every_run_from_the_cache(bench, tmp_path):
    root = bench["root"]
    with pytest.MonkeyPatch.context() as mp, registered(bench["table"]):
        spy = Spy(mp)
        mp.setattr("semiseg.postprocess.tune_mrf_weight", None)  # MRF scores come from the cache too
        again = run_table("tiny-tv", quick=True, results_dir=tmp_path, work_dir=root / "work", overrides=USER)
    assert spy.trained == []
    assert again["rows"] == bench["results"]["rows"]  # the same numbers, nothing re-trained
    first = {(r["method"], r["seed"]): r for r in bench["results"]["runs"]}
    for run in again["runs"]:
        assert run["test"] == first[(run["method"], run["seed"])]["test"]
        assert run["status"] in ("reused", "post-processed")
    assert again["provenance"]["cache"]["trained"] == 0 and again["provenance"]["cache"]["reused"] == 6


def test_another_source_hash_trains_again(tmp_path, monkeypatch):
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-src", [Row("supervised", "20 px")])
    spy = Spy(monkeypatch)
    with registered(table):
        kwargs = dict(quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w", seeds=[0])
        first = run_table("tiny-src", **kwargs)
        monkeypatch.setattr(provenance, "load_training_code", lambda: "0000000000000000")
        second = run_table("tiny-src", **kwargs)
    assert len(spy.trained) == 2 and spy.trained[0][1] != spy.trained[1][1]
    assert first["runs"][0]["source_hash"] != second["runs"][0]["source_hash"] == "0000000000000000"


def test_an_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """First session: 1 of 2 epochs, then an interrupt. Second session: resumed from last.pt; the
    result equals that of an uninterrupted run."""
    import semiseg.engine.run as engine_run

    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=2)
    table = simple_table(recipe, "tiny-resume", [Row("supervised", "20 px")])
    real_train = engine_run.train

    def interrupted(cfg, **kwargs):
        import dataclasses

        short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
        real_train(short, **kwargs)  # writes last.pt after epoch 1 (train.epochs may differ on resume)
        raise KeyboardInterrupt

    kwargs = dict(quick=True, results_dir=tmp_path / "r", seeds=[0])
    with registered(table):
        with pytest.MonkeyPatch.context() as mp:
            Spy(mp, train=interrupted)
            with pytest.raises(KeyboardInterrupt):
                run_table("tiny-resume", work_dir=tmp_path / "w", **kwargs)
        (run_dir,) = (tmp_path / "w" / "cache").iterdir()
        record = json.loads((run_dir / "bench-run.json").read_text())
        assert not record["finished"] and (run_dir / "last.pt").is_file() and record["seconds"] > 0
        spy = Spy(monkeypatch)
        with pytest.MonkeyPatch.context() as mp:  # the second session on another machine
            mp.setattr("semiseg.bench.cache._machine", lambda: "Other CPU, 2 cores")
            resumed = run_table("tiny-resume", work_dir=tmp_path / "w", **kwargs)
        assert spy.resumed == [True] and resumed["runs"][0]["status"] == "resumed"
        assert resumed["provenance"]["cache"] == {"dir": str(tmp_path / "w" / "cache"), "trained": 0,
                                                  "resumed": 1, "reused": 0}  # fmt: skip
        epochs = [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]
        record = json.loads((run_dir / "bench-run.json").read_text())
        assert record["finished"] and record["resumed_at"] == [COMMIT]
        assert record["trained_on"] == resumed["runs"][0]["trained_on"] == [HERE, "Other CPU, 2 cores"]
        whole = run_table("tiny-resume", work_dir=tmp_path / "w2", **kwargs)  # uninterrupted
    assert whole["runs"][0]["status"] == "trained" and whole["runs"][0]["trained_on"] == [HERE]
    assert resumed["runs"][0]["test"] == pytest.approx(whole["runs"][0]["test"], abs=1e-6)
    assert resumed["runs"][0]["val_best"] == whole["runs"][0]["val_best"]


# ---------------------------------------------------------------------------------------- full mode, errors
def test_full_mode_single_seed(tmp_path, monkeypatch):
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-sup", [Row("supervised", "20 px")])
    spy = Spy(monkeypatch)
    with registered(table):
        results = run_table(
            "tiny-sup", results_dir=tmp_path / "results", work_dir=tmp_path / "work", seeds=[3]
        )
    check_schema(results)
    p = results["provenance"]
    assert p["mode"] == "full" and p["seeds"] == [3] and "tuning" not in p
    assert p["config"]["user_overrides"] == []
    resolved = p["config"]["resolved_first_seed"]["supervised | 20 px"]
    assert resolved["train"]["lr"] == 0.01  # no quick section
    assert resolved["train"]["seed"] == 3 and resolved["data"]["split"]["draw"] == 3
    (row,) = results["rows"]
    assert row["n_runs"] == 1 and row["std"] is None and row["paper"] is None  # no spread from one run
    assert row["mean"] == pytest.approx(results["runs"][0]["test"], abs=1e-3)
    assert len(spy.trained) == 1 and spy.throughput == [MODEL]
    md = (tmp_path / "results" / "tiny-sup.md").read_text()
    assert "Mode: **full**" in md and "| n=1 | 1 |" in md and "does not support a claim" in md


def test_unknown_table_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown table 'no-such-table'.*tv-horse"):
        run_table("no-such-table", results_dir=tmp_path / "results", work_dir=tmp_path / "work")
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


def test_row_config_applies_the_quick_section_only_when_quick(tmp_path):
    table = tiny_table(write_recipe(tmp_path / "tiny.yaml"))
    sup, tv = table.rows[0], table.rows[2]
    full = row_config(table, sup, 2, quick=False)
    quick = row_config(table, sup, 2, quick=True)
    assert full.train.lr == 0.01 and quick.train.lr == 0.02
    for cfg in (full, quick):
        assert cfg.train.seed == 2 and cfg.data.split.draw == 2 and cfg.train.progress is False
        assert cfg.data.split.sparse_pixels == 20
    cfg = row_config(table, tv, 0, quick=False, extra={"method.tv_weight": 0.3}, user=["train.lr=0.5"])
    assert cfg.method == {"name": "tv", "tv_weight": 0.3} and cfg.train.lr == 0.5
    # the user's overrides come last: they win over the row's and the quick section's values
    cfg = row_config(table, sup, 0, quick=True, user=["data.split.sparse_pixels=5", "train.lr=0.5"])
    assert cfg.data.split.sparse_pixels == 5 and cfg.train.lr == 0.5
    with pytest.raises(ConfigError, match="unknown key"):
        row_config(table, sup, 0, quick=False, user=["train.nope=1"])


@pytest.mark.parametrize("quick, expected", [(True, [0]), (False, [0, 1])])
def test_row_quick_seeds_apply_only_in_quick_mode(tmp_path, monkeypatch, quick, expected):
    rows = [Row("supervised", "20 px", quick_seeds=[0]), Row("supervised", "dense", seeds=[1])]
    table = simple_table(
        write_recipe(tmp_path / "tiny.yaml"), "tiny-q", rows, seeds=[0, 1], quick_seeds=[0, 1]
    )
    Spy(monkeypatch)
    with registered(table):
        results = run_table("tiny-q", quick=quick, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    assert [r["seed"] for r in runs_of(results, "supervised | 20 px")] == expected
    assert [r["seed"] for r in runs_of(results, "supervised | dense")] == [1]  # fixed seeds in both modes


def test_rows_start_from_an_earlier_rows_checkpoint_of_the_same_seed(tmp_path, monkeypatch):
    continued = Row(
        "continued", "20 px", {"train.epochs": 2}, init_from=SUP, quick_overrides={"train.epochs": 1}
    )
    recipe = write_recipe(tmp_path / "tiny.yaml")
    table = simple_table(recipe, "tiny-init", [Row("supervised", "20 px"), continued], quick_seeds=[0, 1])
    spy = Spy(monkeypatch)
    with registered(table):
        results = run_table("tiny-init", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    dirs = {(r["method"], r["seed"]): r["run_dir"] for r in results["runs"]}
    by_dir = {str(out): cfg for cfg, out in spy.trained}
    for seed in (0, 1):
        cfg = by_dir[dirs[("continued", seed)]]
        start = f"{dirs[('supervised', seed)]}/best.pt"
        assert cfg.train.init == start and Path(start).is_file()
        assert cfg.train.epochs == 1  # the quick override wins over the row's full-mode value
    assert results["provenance"]["config"]["row_init_from"] == {"continued | 20 px": SUP}
    assert row_config(table, table.rows[1], 0, quick=False).train.epochs == 2


def test_init_from_a_row_without_runs_is_a_config_error(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "tiny.yaml")
    with pytest.raises(ConfigError, match="init_from 'supervised \\| 20 px' is not a row of the table"):
        simple_table(recipe, "tiny-no-row", [Row("continued", "20 px", init_from=SUP)])
    rows = [Row("supervised", "20 px", seeds=[1]), Row("continued", "20 px", init_from=SUP)]  # no seed-0 run
    table = simple_table(recipe, "tiny-bad-init", rows, quick_seeds=[0, 1])
    Spy(monkeypatch)
    with registered(table), pytest.raises(ConfigError, match="starts from 'supervised \\| 20 px'.*seed 0"):
        run_table("tiny-bad-init", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")


def test_a_row_with_its_own_recipe_starts_from_it(tmp_path):
    table = tiny_table(write_recipe(tmp_path / "tiny.yaml"))
    other = write_recipe(tmp_path / "other.yaml", lr=0.5)
    own = Row("supervised", "other recipe", recipe=str(other))
    assert row_config(table, own, 0, quick=False).train.lr == 0.5
    assert row_config(table, table.rows[0], 0, quick=False).train.lr == 0.01


def test_last_checkpoint_scores_are_summarised_beside_the_best(tmp_path, monkeypatch):
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-last",
                         [Row("supervised", "20 px", {"train.eval_last": True}), Row("supervised", "dense")],
                         quick_seeds=[0, 1])  # fmt: skip
    Spy(monkeypatch)
    with registered(table):
        results = run_table("tiny-last", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    with_last, without = results["rows"]
    assert [r["test_last"] for r in runs_of(results, SUP)] and "last" in with_last and "last" not in without
    lasts = [r["test_last"] for r in runs_of(results, SUP)]
    assert with_last["last"]["mean"] == pytest.approx(sum(lasts) / 2, abs=1e-3)
    md = (tmp_path / "r" / "tiny-last.md").read_text()
    assert "last checkpoint (mean ± std)" in md and "| supervised | dense |" in md


def test_rows_on_another_data_config_train_on_their_own_dataset(tmp_path, monkeypatch):
    # e.g. cluttered MNIST 48x48 and 128x128 rows of one table: each run gets the dataset of its own
    # data settings, loaded once per data config (the split does not count)
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-data",
                         [Row("supervised", "few", {"data.num_images": 24}),
                          Row("supervised", "few, other split", {"data.num_images": 24, "data.split.labeled": 5}),
                          Row("supervised", "many", {"data.num_images": 30})], quick_seeds=[0])  # fmt: skip
    seen = []
    real = engine_run_train()

    def recording(cfg, **kwargs):
        seen.append((cfg.data.num_images, len(kwargs["bundle"].train), id(kwargs["bundle"])))
        return real(cfg, **kwargs)

    Spy(monkeypatch, train=recording)
    with registered(table):
        run_table("tiny-data", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    (n1, size1, id1), (n2, size2, id2), (n3, size3, id3) = seen
    assert id1 == id2 and id1 != id3  # one load per data config
    assert size1 == size2 < size3


def engine_run_train():
    from semiseg.engine import run as engine_run

    return engine_run.train


def test_ensemble_rows_average_the_members_of_one_pinned_draw(tmp_path, monkeypatch):
    members = Row("supervised", "members", {"train.eval_last": True}, draw=0)
    ensemble = Row("supervised, ensemble", "members", postprocess="ensemble", reuse=members.key)
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-ens", [members, ensemble], quick_seeds=[0, 1, 2],
                         score="last")  # fmt: skip
    spy = Spy(monkeypatch)
    with registered(table):
        results = run_table("tiny-ens", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    assert [(c.data.split.draw, c.train.seed) for c, _ in spy.trained] == [(0, 0), (0, 1), (0, 2)]
    assert results["provenance"]["config"]["row_draws"] == {members.key: 0}
    row = results["rows"][1]
    assert row["n_runs"] == 1 and row["std"] is None  # one ensemble: a single value
    run = runs_of(results, ensemble.key)[0]
    assert run["status"] == "ensembled" and len(run["members"]) == 3 and run["checkpoint"] == "last.pt"
    assert run["seed"] == [0, 1, 2]
    # the ensemble names member 0's folder: its cost stays member 0's training (3 runs, all with CPU time)
    cost = results["provenance"]["training_cost"]
    assert cost["runs"] == 3 and cost["runs_without_cpu_seconds"] == 0
    # --status lists the ensemble once, done (its memo is named by its members)
    from semiseg.bench.status import table_status

    with registered(table):
        states = table_status("tiny-ens", quick=True, work_dir=tmp_path / "w", source=SOURCE)
    (entry,) = [e for e in states if e["row"] == ensemble.key]
    assert "ensemble post-processing done" in entry["text"]
    # the memo of another set of members is not this ensemble's
    (memo,) = Path(run["run_dir"]).glob("bench-ensemble-*.json")
    memo.rename(memo.with_name("bench-ensemble-000000000000.json"))
    with registered(table):
        states = table_status("tiny-ens", quick=True, work_dir=tmp_path / "w", source=SOURCE)
    (entry,) = [e for e in states if e["row"] == ensemble.key]
    assert "post-processing done" not in entry["text"]


def test_an_ensemble_of_one_equals_its_member_and_last_scores_need_eval_last(tmp_path, monkeypatch):
    members = Row("supervised", "members", {"train.eval_last": True}, draw=0)
    ensemble = Row("supervised, ensemble", "members", postprocess="ensemble", reuse=members.key)
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-ens1", [members, ensemble], quick_seeds=[0],
                         score="last")  # fmt: skip
    Spy(monkeypatch)
    with registered(table):
        results = run_table("tiny-ens1", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    member, single = runs_of(results, members.key)[0], runs_of(results, ensemble.key)[0]
    assert single["test"] == pytest.approx(member["test"], abs=1e-9)
    assert "test_last" not in member  # the last state is the row's value, not a second column
    no_last = simple_table(write_recipe(tmp_path / "tiny2.yaml"), "tiny-nolast", [Row("supervised", "x")],
                           quick_seeds=[0], score="last")  # fmt: skip
    with registered(no_last), pytest.raises(ConfigError, match="train.eval_last"):
        run_table("tiny-nolast", quick=True, results_dir=tmp_path / "r2", work_dir=tmp_path / "w2")


def test_full_only_rows_are_left_out_of_quick_mode(tmp_path, monkeypatch):
    rows = [Row("supervised", "small"), Row("supervised", "big", {"train.epochs": 2}, full_only=True)]
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-full", rows, quick_seeds=[0], seeds=[0])
    assert [r.key for r in table.rows_for(quick=True)] == ["supervised | small"]
    assert len(table.rows_for(quick=False)) == 2
    spy = Spy(monkeypatch)
    with registered(table):
        results = run_table("tiny-full", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    assert [r["setting"] for r in results["rows"]] == ["small"] and len(spy.trained) == 1
