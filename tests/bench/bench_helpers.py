"""Shared pieces of the bench tests: a tiny recipe (generated shapes, 32x32, width-4 UNet, 2
iterations), tiny tables, and a spy that records training while stubbing git and the throughput
subprocess."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import semiseg.engine.run as engine_run
from semiseg.bench import provenance, runner, timing
from semiseg.bench.spec import TABLES, Row, Table, Tuning
from semiseg.config import ModelConfig

RECIPE: dict[str, Any] = {
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
MODEL = dataclasses.asdict(ModelConfig(**RECIPE["model"]))  # the resolved model config (defaults filled in)
SUP, MRF, TV = "supervised | 20 px", "MRF post-processing | 20 px", "TV | 20 px"
TV_WEIGHTS = [0.05, 0.5]
USER = ["train.weight_decay=0.0001"]
THROUGHPUT = {"images_per_second": 12.5, "peak_rss_mib": 100.0}
COMMIT = "0123abcd"
SOURCE = "5ca1ab1e5ca1ab1e"  #: the training-code hash the spy reports (the real one changes with every edit)


def write_recipe(path: Path, **train: Any) -> Path:
    """The tiny recipe at ``path``, with ``train`` values changed."""
    recipe = copy.deepcopy(RECIPE)
    recipe["train"].update(train)
    path.write_text(yaml.safe_dump(recipe))
    return path


def tiny_table(recipe: Path, name: str = "tiny-tv") -> Table:
    """Supervised, MRF post-processing of it, and TV tuned on validation: 3 rows, 2 quick seeds."""
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


@contextlib.contextmanager
def registered(table: Table) -> Iterator[Table]:
    """``table`` in the table registry for the duration of the block."""
    TABLES.register(table.name, lambda: table)
    try:
        yield table
    finally:
        TABLES.pop(table.name)


def simple_table(recipe: Path, name: str, rows: list[Row], **kwargs: Any) -> Table:
    return Table(name=name, title=f"Tiny table {name}", recipe=str(recipe), rows=rows, metric="pixel_error",
                 metric_label="pixel error (%)", **kwargs)  # fmt: skip


class Spy:
    """Stubs the throughput subprocess, git and the training-code hash (so that edits of the package
    while the tests run do not change the cache keys); records training and post-processing calls."""

    def __init__(self, mp: pytest.MonkeyPatch, train=None):
        self.trained: list[tuple[Any, Path]] = []
        self.resumed: list[bool] = []
        self.postprocessed: list[Path] = []
        self.throughput: list[dict] = []
        real_train, postprocessed = engine_run.train, runner._postprocessed
        train = train or real_train

        def counting_train(cfg, **kwargs):
            self.trained.append((cfg, Path(kwargs["output_dir"])))
            self.resumed.append(kwargs.get("resume", False))
            return train(cfg, **kwargs)

        def recording_postprocessed(ctx, run_dir):
            self.postprocessed.append(Path(run_dir))
            return postprocessed(ctx, run_dir)

        def fake_throughput(model, steps=10, warmup=3):
            self.throughput.append(model)
            return {"model": model, **THROUGHPUT}

        mp.setattr(engine_run, "train", counting_train)  # the cache looks it up at call time
        mp.setattr(runner, "_postprocessed", recording_postprocessed)
        mp.setattr(timing, "measure_throughput", fake_throughput)
        mp.setattr(provenance, "git_commit", lambda: COMMIT)  # no git subprocess in tests
        mp.setattr(provenance, "load_training_code", lambda: SOURCE)


def runs_of(results: dict, key: str) -> list[dict]:
    return [r for r in results["runs"] if f"{r['method']} | {r['setting']}" == key]


def check_schema(results: dict) -> None:
    """The results JSON schema documented in benchmarks/README.md."""
    assert isinstance(results["table"], str)
    assert isinstance(results["rows"], list) and results["rows"]
    for row in results["rows"]:
        assert set(row) == {"method", "setting", "metric", "mean", "std", "n_runs", "paper"}
        assert isinstance(row["method"], str) and isinstance(row["setting"], str)
        assert isinstance(row["metric"], str)
        assert isinstance(row["n_runs"], int) and row["n_runs"] >= 1
        assert isinstance(row["mean"], float)
        assert row["std"] is None if row["n_runs"] == 1 else isinstance(row["std"], float)
        assert row["paper"] is None or isinstance(row["paper"], float)
    for run in results["runs"]:
        assert {"method", "setting", "seed", "test", "seconds", "status", "run_dir"} <= set(run)
        assert {"git_commit", "source_hash"} <= set(run)
    p = results["provenance"]
    assert {
        "git_commit",
        "source_hash",
        "config",
        "seeds",
        "hardware",
        "wall_seconds",
        "mode",
        "cache",
    } <= set(p)
    assert isinstance(p["git_commit"], str) and isinstance(p["config"], dict)
    assert isinstance(p["seeds"], list) and all(isinstance(s, int) for s in p["seeds"])
    assert isinstance(p["hardware"], dict) and p["hardware"]["cores"] >= 1
    assert isinstance(p["wall_seconds"], float | int) and p["wall_seconds"] >= 0
    assert p["mode"] in ("quick", "full")
