"""``semiseg evaluate --postprocess mrf``: fixed weight, weight tuned on the validation split only,
contrast-sensitive weights, and one-line errors for bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from semiseg.cli import main

SHAPES = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 20,
        "shapes_classes": 2,  # two classes: the exact graph-cut solver
        "split": {"labeled": 4, "val_fraction": 0.2},
    },
    "model": {"name": "unet", "width": 4, "depth": 2},
    "method": {"name": "supervised"},
    "train": {
        "epochs": 1,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "progress": False,
        "plots": False,
    },
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """One tiny trained model shared by the tests of this file."""
    root = tmp_path_factory.mktemp("mrf-cli")
    recipe = root / "shapes.yaml"
    recipe.write_text(yaml.safe_dump(SHAPES))
    out = root / "run"
    assert main(["train", "-c", str(recipe), "-o", str(out)]) == 0
    assert (out / "best.pt").is_file()
    return out / "best.pt"


def evaluate(checkpoint: Path, out: Path, *args: str) -> tuple[int, dict | None]:
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu", "-o", str(out), *args])
    return code, json.loads(out.read_text()) if out.is_file() else None


def assert_one_line_error(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("semiseg evaluate: error: "), err
    for f in fragments:
        assert f in err, err


def test_fixed_weight(checkpoint, tmp_path, capsys):
    code, result = evaluate(checkpoint, tmp_path / "mrf.json", "--postprocess", "mrf", "--mrf-weight", "1")
    assert code == 0
    assert result["split"] == "test" and result["n"] == len(result["cases"]) > 0
    assert result["postprocess"] == {"name": "mrf", "weight": 1.0, "contrast_sigma": None}
    assert "mrf weight" not in capsys.readouterr().err  # nothing tuned


def test_no_postprocess_is_recorded_and_weight_zero_is_the_argmax(checkpoint, tmp_path):
    code, plain = evaluate(checkpoint, tmp_path / "plain.json")
    assert code == 0 and plain["postprocess"] == {"name": "none"}
    code, zero = evaluate(checkpoint, tmp_path / "zero.json", "--postprocess", "mrf", "--mrf-weight", "0")
    assert code == 0 and zero["postprocess"]["weight"] == 0.0
    for key, value in plain["metrics"].items():
        assert zero["metrics"][key] == (None if value is None else pytest.approx(value)), (
            key
        )  # null: undefined


def test_weight_is_tuned_on_the_validation_split(checkpoint, tmp_path, capsys):
    code, result = evaluate(checkpoint, tmp_path / "tuned.json", "--postprocess", "mrf")
    assert code == 0
    post = result["postprocess"]
    assert post["name"] == "mrf" and result["split"] == "test"
    tuning = post["tuning"]
    assert tuning["split"] == "val" and tuning["metric"] == "pixel_error"
    split = json.loads((checkpoint.parent / "split.json").read_text())
    n_val = len(split["val"])
    assert tuning["n"] == n_val > 0 and result["n"] == len(split["test"])  # validation cases, not test
    table = {float(w): v for w, v in tuning["table"].items()}
    assert post["weight"] in table
    assert table[post["weight"]] == min(table.values())
    assert f"mrf weight {post['weight']:g} (tuned on {n_val} validation cases)" in capsys.readouterr().err


def test_contrast_sigma_is_recorded(checkpoint, tmp_path):
    args = ("--postprocess", "mrf", "--mrf-weight", "2", "--mrf-contrast-sigma", "0.5", "--split", "val")
    code, result = evaluate(checkpoint, tmp_path / "contrast.json", *args)
    assert code == 0 and result["split"] == "val"
    assert result["postprocess"] == {"name": "mrf", "weight": 2.0, "contrast_sigma": 0.5}


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--split", "val"], ["--mrf-weight", "required with --split val"]),
        (["--mrf-weight", "-1"], ["--mrf-weight", "must be a finite number >= 0"]),
        (["--mrf-weight", "nan"], ["--mrf-weight", "must be a finite number >= 0, got nan"]),
        (["--mrf-weight", "1", "--mrf-contrast-sigma", "0"], ["--mrf-contrast-sigma", "must be > 0"]),
    ],
    ids=["val-without-weight", "negative-weight", "nan-weight", "zero-contrast-sigma"],
)
def test_bad_options_exit_2(checkpoint, tmp_path, capsys, args, fragments):
    capsys.readouterr()
    code, result = evaluate(checkpoint, tmp_path / "bad.json", "--postprocess", "mrf", *args)
    assert code == 2 and result is None  # nothing written
    assert_one_line_error(capsys, *fragments)


def test_mrf_options_without_the_mrf_are_refused(checkpoint, tmp_path, capsys):
    capsys.readouterr()
    code, result = evaluate(checkpoint, tmp_path / "bad.json", "--mrf-weight", "1")
    assert code == 2 and result is None
    assert_one_line_error(capsys, "--mrf-weight / --mrf-contrast-sigma: apply with --postprocess mrf")


def test_the_mrf_says_it_replaces_a_validation_chosen_threshold(tmp_path, capsys):
    recipe = tmp_path / "t.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20, "shapes_classes": 2,
                 "split": {"labeled": 4}},
        "model": {"name": "unet", "width": 4, "depth": 2},
        "train": {"epochs": 2, "batch_size": 4, "iters_per_epoch": 2, "progress": False, "plots": False,
                  "threshold": "val"},
    }))  # fmt: skip
    assert main(["train", "-c", str(recipe), "-o", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    report = tmp_path / "m.json"
    args = ["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--postprocess", "mrf"]
    assert main([*args, "--mrf-weight", "0", "-o", str(report)]) == 0
    assert "note: the MRF replaces the run's validation-chosen threshold" in capsys.readouterr().err
    assert "replaces_threshold" in json.loads(report.read_text())["postprocess"]
