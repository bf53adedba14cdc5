"""The benchmark runner on a tiny temporary table (generated shapes, 32x32, width-4 UNet, 2 iterations):
results JSON / Markdown and their schema, statistics over seeds, validation-only tuning, MRF rows that
reuse trained runs, the run cache, provenance (user overrides, mode) and ``row_config``."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

import semiseg.engine.run as engine_run
from semiseg.bench import runner
from semiseg.bench.runner import Row, Table, Tuning, markdown, row_config, run_table
from semiseg.bench.tables import TABLES
from semiseg.config import to_dict
from semiseg.errors import ConfigError

RECIPE = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 24,
        "shapes_classes": 2,
        "split": {
            "labeled": 6,
            "supervision": "sparse",
            "sparse_pixels": 20,
            "val_supervision": "same",
            "val_fraction": 0.25,
            "test_fraction": 0.25,
            "seed": 0,
        },
    },
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "supervised"},
    "train": {
        "epochs": 1,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "progress": False,
        "plots": False,
        "val_metric": "pixel_error",
        "val_mode": "min",
    },
    "quick": {"train.lr": 0.02},
}
MODEL = RECIPE["model"]
SUP, MRF, TV = "supervised | 20 px", "MRF post-processing | 20 px", "TV | 20 px"
TV_WEIGHTS = [0.05, 0.5]
USER = ["train.weight_decay=0.0001"]
THROUGHPUT = {"images_per_second": 12.5, "peak_rss_mib": 100.0}


def write_recipe(path: Path) -> Path:
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def tiny_table(recipe: Path, name: str = "tiny-tv") -> Table:
    return Table(
        name=name,
        title="Tiny TV table",
        recipe=str(recipe),
        rows=[
            Row("supervised", "20 px", {"data.split.sparse_pixels": 20}, paper=12.5),
            Row("MRF post-processing", "20 px", postprocess="mrf", reuse=SUP),
            Row("TV", "20 px", {"method.name": "tv"}, tuned=True, paper=9.0),
        ],
        metric="pixel_error",
        metric_label="pixel error (%)",
        seeds=[0, 1, 2],
        quick_seeds=[0, 1],
        notes="tiny test table",
        tuning=Tuning(row=TV, grid={"method.tv_weight": TV_WEIGHTS}),
        extras=lambda ctx: {"run_keys": sorted({k for k, _ in ctx.run_dirs})},
    )


def register_table(mp: pytest.MonkeyPatch, recipe: Path, name: str, rows: list[Row], **kwargs) -> Table:
    """A tiny pixel-error table on ``recipe``, registered under ``name`` for this test."""
    table = Table(name=name, title=f"Tiny table {name}", recipe=str(recipe), rows=rows, metric="pixel_error",
                  metric_label="pixel error (%)", **kwargs)  # fmt: skip
    mp.setitem(TABLES, name, lambda: table)
    return table


class Spy:
    """Stubs the throughput subprocess and git; records training and post-processing calls."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.trained: list[tuple[Any, Path]] = []
        self.postprocessed: list[Path] = []
        self.throughput: list[dict] = []
        train, postprocessed = engine_run.train, runner._postprocessed

        def counting_train(cfg, **kwargs):
            self.trained.append((cfg, Path(kwargs["output_dir"])))
            return train(cfg, **kwargs)

        def recording_postprocessed(ctx, run_dir):
            self.postprocessed.append(Path(run_dir))
            return postprocessed(ctx, run_dir)

        def fake_throughput(model, steps=10, warmup=3):
            self.throughput.append(model)
            return {"model": model, **THROUGHPUT}

        mp.setattr(engine_run, "train", counting_train)  # the runner imports it at call time
        mp.setattr(runner, "_postprocessed", recording_postprocessed)
        mp.setattr(runner, "measure_throughput", fake_throughput)
        mp.setattr(runner, "git_commit", lambda: "0123abcd")  # no git subprocess in tests


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One quick run of the tiny table: 2 seeds, 2 tuning trials (5 trainings in all)."""
    root = tmp_path_factory.mktemp("bench")
    table = tiny_table(write_recipe(root / "tiny.yaml"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TABLES, "tiny-tv", lambda: table)
        spy = Spy(mp)
        results = run_table(
            "tiny-tv", quick=True, results_dir=root / "results", work_dir=root / "work", overrides=USER
        )
    return {"results": results, "spy": spy, "root": root, "table": table}


def runs_of(results: dict, key: str) -> list[dict]:
    return [r for r in results["runs"] if f"{r['method']} | {r['setting']}" == key]


def check_schema(results: dict) -> None:
    assert isinstance(results["table"], str)
    assert isinstance(results["rows"], list) and results["rows"]
    for row in results["rows"]:
        assert set(row) == {"method", "setting", "metric", "mean", "std", "n_runs", "paper"}
        assert isinstance(row["method"], str) and isinstance(row["setting"], str)
        assert isinstance(row["metric"], str)
        assert isinstance(row["mean"], float) and isinstance(row["std"], float)
        assert isinstance(row["n_runs"], int) and row["n_runs"] >= 1
        assert row["paper"] is None or isinstance(row["paper"], float)
    p = results["provenance"]
    assert {"git_commit", "config", "seeds", "hardware", "wall_seconds", "mode"} <= set(p)
    assert isinstance(p["git_commit"], str) and isinstance(p["config"], dict)
    assert isinstance(p["seeds"], list) and all(isinstance(s, int) for s in p["seeds"])
    assert isinstance(p["hardware"], dict) and p["hardware"]["cores"] >= 1
    assert isinstance(p["wall_seconds"], float | int) and p["wall_seconds"] >= 0
    assert p["mode"] in ("quick", "full")


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
    assert p["git_commit"] == "0123abcd"
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


# ---------------------------------------------------------------------------------------- tuning, cache
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
    # seed 0 of the tuned row is the chosen tuning run itself (same config → cached, not retrained)
    assert runs_of(bench["results"], TV)[0]["val_best"]["value"] == best["val"]


def test_each_config_is_trained_once(bench):
    spy, work = bench["spy"], bench["root"] / "work" / "tiny-tv"
    trained = spy.trained
    # supervised seeds 0 and 1, two tuning trials, TV seed 1; TV seed 0 = a tuning trial; MRF: none
    assert len(trained) == 5
    keys = [json.dumps(to_dict(cfg), sort_keys=True) for cfg, _ in trained]
    assert len(set(keys)) == 5
    outs = [out for _, out in trained]
    assert outs[:2] == [work / "tuning" / f"tv_weight{w}" for w in TV_WEIGHTS]
    sup, tv = work / runner._slug(SUP), work / runner._slug(TV)
    assert outs[2:] == [sup / "seed0", sup / "seed1", tv / "seed1"]
    assert [(cfg.method["name"], cfg.train.seed, cfg.data.split.draw) for cfg, _ in trained[2:]] == [
        ("supervised", 0, 0),
        ("supervised", 1, 1),
        ("tv", 1, 1),
    ]


def test_mrf_rows_post_process_the_supervised_runs(bench):
    spy, results = bench["spy"], bench["results"]
    supervised_dirs = [out for cfg, out in spy.trained if cfg.method["name"] == "supervised"]
    assert spy.postprocessed == supervised_dirs
    assert all((d / "best.pt").is_file() for d in supervised_dirs)
    for run in runs_of(results, MRF):
        table = {float(w): v for w, v in run["mrf_tuning_val"].items()}
        assert run["mrf_weight"] in table and table[run["mrf_weight"]] == min(table.values())
        assert math.isfinite(run["test"])
    for run in runs_of(results, SUP):
        assert "mrf_weight" not in run and run["val_best"]["value"] is not None


# ---------------------------------------------------------------------------------------- full mode, errors
def test_full_mode_single_seed(tmp_path, monkeypatch):
    register_table(
        monkeypatch, write_recipe(tmp_path / "tiny.yaml"), "tiny-sup", [Row("supervised", "20 px")]
    )
    spy = Spy(monkeypatch)
    results = run_table("tiny-sup", results_dir=tmp_path / "results", work_dir=tmp_path / "work", seeds=[3])
    check_schema(results)
    p = results["provenance"]
    assert p["mode"] == "full" and p["seeds"] == [3] and "tuning" not in p
    assert p["config"]["user_overrides"] == []
    resolved = p["config"]["resolved_first_seed"]["supervised | 20 px"]
    assert resolved["train"]["lr"] == 0.01  # no quick section
    assert resolved["train"]["seed"] == 3 and resolved["data"]["split"]["draw"] == 3
    (row,) = results["rows"]
    assert row["n_runs"] == 1 and row["std"] == 0.0 and row["paper"] is None
    assert row["mean"] == pytest.approx(results["runs"][0]["test"], abs=1e-3)
    assert len(spy.trained) == 1 and spy.throughput == [MODEL]
    assert "Mode: **full**" in (tmp_path / "results" / "tiny-sup.md").read_text()


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
    recipe = write_recipe(tmp_path / "tiny.yaml")
    register_table(monkeypatch, recipe, "tiny-q", rows, seeds=[0, 1], quick_seeds=[0, 1])
    Spy(monkeypatch)
    results = run_table("tiny-q", quick=quick, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    assert [r["seed"] for r in runs_of(results, "supervised | 20 px")] == expected
    assert [r["seed"] for r in runs_of(results, "supervised | dense")] == [1]  # fixed seeds in both modes


def test_rows_start_from_an_earlier_rows_checkpoint_of_the_same_seed(tmp_path, monkeypatch):
    continued = Row(
        "continued", "20 px", {"train.epochs": 2}, init_from=SUP, quick_overrides={"train.epochs": 1}
    )
    recipe = write_recipe(tmp_path / "tiny.yaml")
    table = register_table(
        monkeypatch, recipe, "tiny-init", [Row("supervised", "20 px"), continued], quick_seeds=[0, 1]
    )
    spy = Spy(monkeypatch)
    results = run_table("tiny-init", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    by_dir = {out: cfg for cfg, out in spy.trained}
    for seed in (0, 1):
        cfg = by_dir[tmp_path / "w" / "tiny-init" / runner._slug("continued | 20 px") / f"seed{seed}"]
        start = tmp_path / "w" / "tiny-init" / runner._slug(SUP) / f"seed{seed}" / "best.pt"
        assert cfg.train.init == str(start) and start.is_file()
        assert cfg.train.epochs == 1  # the quick override wins over the row's full-mode value
    assert results["provenance"]["config"]["row_init_from"] == {"continued | 20 px": SUP}
    assert row_config(table, table.rows[1], 0, quick=False).train.epochs == 2


def test_init_from_a_row_without_runs_is_a_config_error(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "tiny.yaml")
    register_table(monkeypatch, recipe, "tiny-bad-init", [Row("continued", "20 px", init_from=SUP)])
    Spy(monkeypatch)
    with pytest.raises(ConfigError, match="starts from 'supervised \\| 20 px'.*seed 0"):
        run_table("tiny-bad-init", quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w")


def test_step_time_ratio_gives_the_baseline_every_streams_images():
    from semiseg.methods.size import SizeConstrained
    from semiseg.methods.supervised import Supervised

    seen: dict[str, list] = {}

    def recording(cls):
        original = cls.training_step

        def step(self, batch, phase, optimizer):
            seen.setdefault(cls.__name__, []).append(
                (phase, {s: b["image"].shape[0] for s, b in batch.items()})
            )
            return original(self, batch, phase, optimizer)

        return step

    with pytest.MonkeyPatch.context() as mp:
        for cls in (Supervised, SizeConstrained):
            mp.setattr(cls, "training_step", recording(cls))
        out = runner.step_time_ratio(
            {"name": "size", "source": "oracle"},
            {"name": "supervised"},
            MODEL,
            image_size=16,
            batch_size=2,
            steps=1,
            streams=("labeled", "unlabeled"),
            phase="segmenter",
        )
    assert out["ratio"] > 0 and out["streams"] == ["labeled", "unlabeled"] and out["phase"] == "segmenter"
    assert seen["Supervised"] and all(x == ("train", {"labeled": 4}) for x in seen["Supervised"])
    sized = seen["SizeConstrained"]
    assert sized and all(x == ("segmenter", {"labeled": 2, "unlabeled": 2}) for x in sized)
