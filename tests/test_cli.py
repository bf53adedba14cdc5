"""The CLI: fast --help, train → evaluate → predict on generated data, one-line errors for user mistakes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from semiseg.cli import main

SHAPES = {
    "data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20, "split": {"labeled": 4}},
    "model": {"name": "unet", "width": 4, "depth": 2},
    "method": {"name": "supervised", "dice_weight": 0.5},
    "train": {
        "epochs": 2,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "progress": False,
        "plots": False,
    },
}


def write_recipe(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def run_module(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "semiseg.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def assert_one_line_error(capsys, command: str, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith(f"semiseg {command}: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err
    return err


# ------------------------------------------------------------------------------------------ start-up
def test_help_runs_and_lists_commands():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    for command in ("train", "evaluate", "predict", "demo", "bench", "data"):
        assert command in result.stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "import semiseg.cli as cli\n"
        "for argv in (['--help'], ['train', '--help'], ['predict', '--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'matplotlib', 'scipy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = run_module(code=code)
    assert result.returncode == 0, result.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "semiseg"
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: semiseg" in result.stdout


# ------------------------------------------------------------------------------------------ end to end
def test_flip_tta_from_the_cli_and_the_config(tmp_path, capsys):
    """--tta flip on evaluate / predict (the metrics JSON says which); inference.tta in the config
    applies to the run's final evaluation, and a resume may change it (validation does not use it)."""
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    out = tmp_path / "run"
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=1"]) == 0
    plain, flipped = tmp_path / "plain.json", tmp_path / "flip.json"
    ckpt = str(out / "best.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "-o", str(plain)]) == 0
    assert main(["evaluate", "--checkpoint", ckpt, "--tta", "flip", "-o", str(flipped)]) == 0
    plain, flipped = json.loads(plain.read_text()), json.loads(flipped.read_text())
    assert plain["tta"] == "none" and flipped["tta"] == "flip"
    assert flipped["metrics"] != plain["metrics"]  # four network calls averaged: other probabilities
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((np.random.default_rng(0).random((30, 40)) * 255).astype(np.uint8)).save(images / "a.png")
    masks = {}
    for tta in ("none", "flip"):
        target = tmp_path / f"masks-{tta}"
        assert (
            main(["predict", "--checkpoint", ckpt, "--input", str(images), "-o", str(target), "--tta", tta])
            == 0
        )
        masks[tta] = np.asarray(Image.open(target / "a.png"))
    assert masks["none"].shape == masks["flip"].shape == (30, 40)
    capsys.readouterr()
    # in the config: the final test scores are the flipped ones, and best.pt carries the setting
    flip_run = ["train", "-c", recipe, "-o", str(out), "--set", "inference.tta=flip"]
    assert main([*flip_run, "--set", "train.epochs=1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["dice/mean"] == pytest.approx(flipped["metrics"]["dice/mean"], abs=1e-6)
    assert torch.load(out / "best.pt", weights_only=True)["config"]["inference"]["tta"] == "flip"
    capsys.readouterr()
    # a resume may not change it (best.pt would keep the old setting; --tta on evaluate / predict does)
    assert main(["train", "-c", recipe, "-o", str(out), "--resume", "--set", "train.epochs=2"]) == 2
    assert_one_line_error(capsys, "train", "config differs from the checkpoint at 'inference.tta'")
    # a checkpoint written before a config key existed resumes: the key takes its default
    state = torch.load(out / "last.pt", weights_only=True)
    del state["config"]["inference"]["tta"]
    torch.save(state, out / "last.pt")
    assert main(["train", "-c", recipe, "-o", str(out), "--resume", "--set", "train.epochs=2"]) == 0
    capsys.readouterr()
    refused = tmp_path / "moons"
    assert (
        main(
            [
                "train",
                "--config",
                "ssldec-moons",
                "--quick",
                "--set",
                "inference.tta=flip",
                "-o",
                str(refused),
            ]
        )
        == 2
    )
    assert_one_line_error(capsys, "train", "inference.tta: 'flip' applies to segmentations", "'moons'")
    assert not refused.exists()


def test_train_evaluate_predict(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    out = tmp_path / "run"
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=2"]) == 0
    assert "done: " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())

    report = tmp_path / "eval" / "test.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "test", "-o", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "dice/mean" in printed and "hd95_px/mean" in printed
    result = json.loads(report.read_text())
    assert result["split"] == "test" and result["n"] == len(metrics["test_cases"]) == 4
    for key, value in metrics["test"].items():  # same model, same split: the training run's final test scores
        assert result["metrics"][key] == (None if value is None else pytest.approx(value, abs=1e-6)), key
    # the cases each mean leaves out (undefined, written as null: e.g. HD95 of a class one of prediction and
    # truth lacks), counted
    nans = {
        k: sum(c[k] is None for c in metrics["test_cases"])
        for k in metrics["test"]
        if k in metrics["test_cases"][0]
    }
    assert metrics["test_undefined"] == result["undefined"] == {k: n for k, n in nans.items() if n}
    assert any(nans.values())  # the tiny run leaves some HD95 undefined: the null path is exercised
    assert "NaN" not in (out / "metrics.json").read_text() + report.read_text()  # strict JSON
    for key, n in result["undefined"].items():
        assert f"(over {4 - n} of 4 cases)" in next(
            line for line in printed.splitlines() if line.startswith(key + " ")
        )

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a": (30, 40), "b": (32, 32), "c": (50, 25)}  # (H, W)
    for stem, (h, w) in sizes.items():
        pixels = (rng.random((h, w)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{stem}.png")
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(images / "d.jpg")  # colour → gray
    (images / "notes.txt").write_text("not an image")
    masks = tmp_path / "masks"
    assert (
        main(
            ["predict", "--checkpoint", str(out / "best.pt"), "--input", str(images), "--output", str(masks)]
        )
        == 0
    )
    assert "wrote 4 masks" in capsys.readouterr().out
    sizes["d"] = (20, 24)
    assert sorted(p.name for p in masks.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    for stem, (h, w) in sizes.items():
        with Image.open(masks / f"{stem}.png") as im:
            assert im.size == (w, h) and im.mode == "L"
            assert np.asarray(im).max() < 3  # class indices of the 3-class shapes set


def test_train_no_test_scores_validation_only(tmp_path, capsys):
    """A development run (--no-test) prints and writes no test number."""
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    out = tmp_path / "run"
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=1", "--no-test"]) == 0
    printed = capsys.readouterr().out
    assert "best val" in printed and "; test" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert "val" in metrics and not any(key.startswith("test") for key in metrics)
    assert not any("test" in json.dumps(v) for k, v in metrics.items() if k == "last")


def test_data_check_and_split(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    assert main(["data", "check", "-c", recipe, "-o", str(tmp_path / "stats.json")]) == 0
    out = capsys.readouterr().out
    assert (
        "shapes: 3 classes, 1 channel(s); labeled 4" in out
        and "channel 0: mean" in out
        and "% of pixels" in out
    )
    stats = json.loads((tmp_path / "stats.json").read_text())
    labeled = stats["parts"]["labeled"]
    assert labeled["items"] == labeled["with_mask"] == 4 and len(labeled["channels"]) == 1
    shares = [v["pixel_share"] for v in labeled["classes"].values()]
    assert (
        len(shares) == 3
        and abs(sum(shares) - 1) < 1e-3
        and labeled["classes"]["background"]["items_with_class"] == 1
    )
    assert (
        main(
            ["data", "split", "-c", recipe, "-o", str(tmp_path / "split.json"), "--set", "data.split.draw=1"]
        )
        == 0
    )
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["labeled"]) == 4 and split["spec"]["draw"] == 1


# ------------------------------------------------------------------------------------------ user mistakes
def test_bad_config_key_exits_2_with_one_line(tmp_path):
    recipe = write_recipe(tmp_path / "bad.yaml", {**SHAPES, "train": {**SHAPES["train"], "epoch": 3}})
    result = run_module("train", "-c", recipe, "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    err = result.stderr.strip()
    assert err == f"semiseg train: error: {recipe}: unknown key 'train.epoch' (did you mean 'epochs'?)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "train.epochs=zero"], ["'train.epochs' must be int"]),
        (["--set", "model.norm=layer"], ["'model.norm' must be one of"]),
        (["--set", "method.name=nope"], ["unknown method 'nope'"]),
        (["--set", "method.tv_wieght=1"], ["unknown key 'method.tv_wieght'"]),
        (["--set", "train.device=gpu9"], ["train.device: invalid device 'gpu9'"]),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, args, fragments):
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    assert main(["train", "-c", recipe, "-o", str(tmp_path / "out"), *args]) == 2
    assert_one_line_error(capsys, "train", *fragments)


def test_bad_demo_and_bench_numbers_exit_2(tmp_path, capsys):
    assert main(["demo", "--epochs", "0", "-o", str(tmp_path / "demo")]) == 2
    assert_one_line_error(capsys, "demo", "--epochs: must be at least 1, got 0")
    assert (
        main(
            ["bench", "supervised-horse", "--quick", "--status", "--seeds", "-1", "--work-dir", str(tmp_path)]
        )
        == 2
    )
    assert_one_line_error(capsys, "bench", "--seeds: must be 0 or more, got -1")
    assert not (tmp_path / "demo").exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert_one_line_error(capsys, "train", "nope.yaml: config file not found")


def test_diverged_training_exits_3(tmp_path, capsys, monkeypatch):
    from semiseg.methods.supervised import Supervised

    original = Supervised.training_step
    monkeypatch.setattr(
        Supervised,
        "training_step",
        lambda self, *a: {**original(self, *a), "loss": original(self, *a)["loss"] * float("inf")},
    )
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    assert main(["train", "-c", recipe, "-o", str(tmp_path / "out")]) == 3
    assert_one_line_error(capsys, "train", "non-finite loss")


# ------------------------------------------------------------------------------------------ bad data (folder)
def make_folder(root: Path, n: int = 8, size: tuple[int, int] = (32, 32)) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros(size, dtype=np.uint8)
        mask[8:20, 6 + i : 18 + i] = 1
        image = (60 + 120 * mask + rng.integers(0, 40, size)).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i:03d}.png")
    return root


def folder_recipe(tmp_path: Path, root: Path) -> str:
    recipe = {
        **SHAPES,
        "data": {"dataset": "folder", "path": str(root), "image_size": [32, 32], "num_classes": 2},
    }
    return write_recipe(tmp_path / "folder.yaml", recipe)


def test_folder_dataset_trains(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    assert (
        main(
            [
                "train",
                "-c",
                folder_recipe(tmp_path, root),
                "-o",
                str(tmp_path / "out"),
                "--set",
                "train.epochs=1",
            ]
        )
        == 0
    )
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert (len(split["labeled"]), len(split["val"]), len(split["test"])) == (5, 1, 2)


def _size_mismatch(root: Path) -> Path:
    bad = root / "masks" / "img003.png"
    Image.fromarray(np.zeros((30, 32), dtype=np.uint8)).save(bad)
    return bad


def _bad_values(root: Path) -> Path:
    bad = root / "masks" / "img005.png"
    Image.fromarray(np.full((32, 32), 5, dtype=np.uint8)).save(bad)
    return bad


def _unreadable(root: Path) -> Path:
    bad = root / "images" / "img002.png"
    bad.write_bytes(b"\x89PNG this is not really a png")
    return bad


def _nan_pixels(root: Path) -> Path:
    (root / "images" / "img004.png").unlink()
    bad = root / "images" / "img004.tif"
    pixels = np.full((32, 32), 0.5, dtype=np.float32)
    pixels[3, 7] = np.nan
    Image.fromarray(pixels, mode="F").save(bad)
    return bad


def _no_masks(root: Path) -> Path:
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    return root


@pytest.mark.parametrize(
    "damage, what",
    [
        (_size_mismatch, "mask size 30x32 does not match image size 32x32"),
        (_bad_values, "mask values [5] outside classes 0..1"),
        (_unreadable, "cannot read image"),
        (_nan_pixels, "NaN"),
        (_no_masks, "labeled training set is empty"),
    ],
    ids=["size-mismatch", "mask-values", "unreadable", "nan-pixels", "empty-labeled"],
)
def test_bad_folder_data_exits_2_naming_the_file(tmp_path, capsys, damage, what):
    root = make_folder(tmp_path / "data")
    bad = damage(root)
    out = tmp_path / "out"
    assert main(["train", "-c", folder_recipe(tmp_path, root), "-o", str(out)]) == 2
    names = [str(bad)]  # the damaged file, or the dataset folder for the empty labeled set
    assert_one_line_error(capsys, "train", what, *names)
    assert not (out / "last.pt").exists()  # nothing was trained


def test_missing_data_root_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SEMISEG_DATA", raising=False)
    recipe = write_recipe(
        tmp_path / "w.yaml", {**SHAPES, "data": {"dataset": "weizmann", "image_size": [32, 32]}}
    )
    missing = tmp_path / "no-such-root"
    assert main(["train", "-c", recipe, "--data-root", str(missing)]) == 2
    assert_one_line_error(capsys, "train", str(missing), "data root not found (from --data-root)")
    assert main(["train", "-c", recipe]) == 2
    assert_one_line_error(capsys, "train", "no data root: pass --data-root DIR or set SEMISEG_DATA")
    monkeypatch.setenv("SEMISEG_DATA", str(missing))
    assert main(["data", "check", "-c", recipe]) == 2
    assert_one_line_error(capsys, "data", "data root not found (from SEMISEG_DATA)")


def test_missing_folder_dataset_exits_2(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    assert main(["train", "-c", folder_recipe(tmp_path, missing)]) == 2
    assert_one_line_error(capsys, "train", str(missing))


def test_missing_or_bad_checkpoint_exits_2(tmp_path, capsys):
    missing = tmp_path / "none.pt"
    assert main(["evaluate", "--checkpoint", str(missing)]) == 2
    assert_one_line_error(capsys, "evaluate", f"{missing}: checkpoint not found")
    junk = tmp_path / "junk.pt"
    junk.write_text("junk")
    assert (
        main(
            ["predict", "--checkpoint", str(junk), "--input", str(tmp_path), "--output", str(tmp_path / "o")]
        )
        == 2
    )
    assert_one_line_error(capsys, "predict", f"{junk}: cannot read checkpoint")


def test_predict_bad_input_folder_exits_2(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    out = tmp_path / "run"
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["predict", "--checkpoint", str(out / "best.pt"), "--output", str(tmp_path / "masks")]
    assert main([*args, "--input", str(empty)]) == 2
    assert_one_line_error(capsys, "predict", str(empty), "no images found")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(empty / "good.png")
    (empty / "bad.png").write_bytes(b"garbage")
    assert main([*args, "--input", str(empty)]) == 2
    assert_one_line_error(capsys, "predict", str(empty / "bad.png"))
    assert not (tmp_path / "masks").exists()  # all inputs are checked before anything is written


# ------------------------------------------------------------------------------------------ data generate
def test_data_generate_cluttered_mnist_writes_a_folder_dataset(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent / "data"))
    from test_cluttered_mnist import write_fake_mnist

    from semiseg.data import cluttered_mnist as cm

    write_fake_mnist(tmp_path / "data" / "mnist")
    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cm, "FOLD_SIZES", (20, 10, 10))
    monkeypatch.setattr(cm, "load_variant", functools.partial(cm.load_variant, fold_sizes=(20, 10, 10)))
    out = tmp_path / "export"
    argv = ["data", "generate", "cluttered-mnist", "--variant", "48-simple", "-o", str(out),
            "--data-root", str(tmp_path / "data")]  # fmt: skip
    assert main(argv) == 0
    assert "images per fold: train 40, val 20, test 20" in capsys.readouterr().out
    assert len(list((out / "train" / "images").glob("*.png"))) == 40
    assert len(list((out / "val" / "masks").glob("*.png"))) == 20
    labels = json.loads((out / "labels.json").read_text())
    assert sum(v is None for v in labels.values()) == 40 and len(labels) == 80
    # read back as a folder dataset: tags follow from the masks
    from semiseg.config import DataConfig
    from semiseg.data import load_bundle

    bundle = load_bundle(DataConfig(dataset="folder", path=str(out), image_size=[48, 48]))
    assert len(bundle.train) == 40 and sum(r.mask.any() for r in bundle.train) == 20
    # labels.json gives the digits back, so the digit rule works on the exported folder too
    assert all(r.label == labels[r.id] for r in bundle.train)
    assert all((r.label is None) == (not r.mask.any()) for r in bundle.train)  # digits on present images
    # the folder exists now: a one-line error, exit 2, nothing written
    assert main(argv) == 2
    assert_one_line_error(capsys, "data", str(out), "exists already")


def test_classification_train_and_evaluate(tmp_path, capsys):
    # SSLDEC on generated moons: the run, then `evaluate` reports accuracy / error of the same model
    recipe = Path(__file__).resolve().parents[1] / "src" / "semiseg" / "configs" / "ssldec-moons.yaml"
    out = tmp_path / "run"
    sets = ["data.num_images=60", "method.pretrain_epochs=5", "method.max_rounds=1", "method.max_retrain_epochs=2",
            "train.progress=false"]  # fmt: skip
    assert main(["train", "-c", str(recipe), "-o", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    assert "test accuracy = " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert not (out / "best.pt").exists()  # no phase validates: the last state is scored
    report = tmp_path / "test.json"
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--split", "test", "-o", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "error" in printed and "dice" not in printed
    result = json.loads(report.read_text())
    assert result["n"] == 60 and result["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--postprocess", "mrf"]) == 2
    assert "applies to segmentations" in capsys.readouterr().err


def test_a_setup_error_after_the_data_leaves_no_output_folder(tmp_path, capsys):
    """An error found while building the run (here a missing train.init checkpoint) exits 2 with one
    line and removes the output folder it created; a folder that existed before is kept."""
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    out = tmp_path / "out"
    args = ["train", "-c", recipe, "-o", str(out), "--set", f"train.init={tmp_path / 'missing.pt'}"]
    assert main(args) == 2
    assert_one_line_error(capsys, "train", "missing.pt")
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    assert main(args) == 2
    assert (out / "mine.txt").read_text() == "kept"


def test_train_on_masks_of_a_few_clicked_pixels(tmp_path, capsys):
    """A user's clicks: training masks with 255 on every unclicked pixel (data.mask_unlabeled), full
    masks for validation and test. Training sees only the clicked pixels."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3), ("test", 3)):
        (tmp_path / "data" / split / "images").mkdir(parents=True)
        (tmp_path / "data" / split / "masks").mkdir()
        for i in range(n):
            mask = np.zeros((24, 24), np.uint8)
            mask[6 + i % 4 : 16 + i % 4, 5:15] = 1
            image = (rng.integers(0, 80, (24, 24)) + 150 * mask).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / "data" / split / "images" / f"{split}{i}.png")
            if split == "train":  # 10 clicked pixels, the rest unlabeled
                clicks = np.full_like(mask, 255)
                ys, xs = rng.integers(0, 24, 10), rng.integers(0, 24, 10)
                clicks[ys, xs] = mask[ys, xs]
                mask = clicks
            Image.fromarray(mask).save(tmp_path / "data" / split / "masks" / f"{split}{i}.png")
    recipe = write_recipe(tmp_path / "clicks.yaml", {
        **SHAPES,
        "data": {"dataset": "folder", "path": str(tmp_path / "data"), "image_size": [24, 24], "mask_unlabeled": 255,
                 "split": {"labeled": None}},
    })  # fmt: skip
    assert main(["train", "-c", recipe, "-o", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["dice/mean"] <= 1.0
    from semiseg.config import build_config
    from semiseg.data import prepare_data

    data = prepare_data(build_config(yaml.safe_load(Path(recipe).read_text())))
    labeled = [int((data.labeled[i]["mask"] != 255).sum()) for i in range(len(data.labeled))]
    assert len(labeled) == 8 and all(1 <= n <= 10 for n in labeled)  # the clicks only
    assert main(["data", "check", "-c", recipe]) == 0
    out = capsys.readouterr().out
    assert "labeled: 8 items (8 with a mask in the source)" in out


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.dropout=1.5", "'model.dropout' must be a probability in [0, 1)"),
        ("train.augment.rotate_degrees=.nan", "'train.augment.rotate_degrees' must be a finite number >= 0"),
        ("train.augment.noise_std=-1", "'train.augment.noise_std' must be a finite number >= 0"),
        ("inference.sigma_scale=.nan", "'inference.sigma_scale' must be a finite number > 0"),
        ("train.save_epochs=[0]", "'train.save_epochs' epochs count from 1"),
        ("method.ce_weight=-1", "'method.ce_weight' must be a finite number >= 0"),
        ("method.dice_weight=0", "'method.ce_weight' and 'method.dice_weight' are both 0"),
    ],
)
def test_bad_values_are_one_line_errors_before_any_output(tmp_path, capsys, override, fragment):
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    extra = ["--set", "method.ce_weight=0"] if override == "method.dice_weight=0" else []
    assert main(["train", "-c", recipe, "-o", str(tmp_path / "out"), "--set", override, *extra]) == 2
    assert_one_line_error(capsys, "train", fragment)
    assert not (tmp_path / "out").exists()


def test_an_output_under_a_file_is_a_one_line_error_before_the_work(tmp_path, capsys):
    """train, evaluate, predict, demo and data split: an output path whose parent is a file fails in
    one line (naming it) before any training or evaluation, and leaves nothing."""
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "-c", recipe, "-o", str(blocker / "run")]) == 2
    assert_one_line_error(capsys, "train", "file: is a file, not a folder to write into")
    assert main(["demo", "--epochs", "1", "-o", str(blocker / "demo")]) == 2
    assert_one_line_error(capsys, "demo", "is a file")
    assert main(["data", "split", "-c", recipe, "-o", str(blocker / "s.json")]) == 2
    assert_one_line_error(capsys, "data", "is a file")
    run = tmp_path / "run"
    assert main(["train", "-c", recipe, "-o", str(run), "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    checkpoint = str(run / "best.pt")
    assert (
        main(["evaluate", "--checkpoint", checkpoint, "--split", "val", "-o", str(blocker / "m.json")]) == 2
    )
    err = assert_one_line_error(capsys, "evaluate", "is a file")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "a.png")
    assert (
        main(["predict", "--checkpoint", checkpoint, "--input", str(images), "--output", str(blocker / "p")])
        == 2
    )
    assert_one_line_error(capsys, "predict", "is a file")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                checkpoint,
                "--input",
                str(images / "a.png"),
                "--output",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    assert_one_line_error(capsys, "predict", "a.png: is a file: --input takes a folder")
    assert list(blocker.parent.glob("file*")) == [blocker] and err


def test_bench_status_refuses_a_work_dir_or_ledger_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for option in ("--work-dir", "--ledger"):
        assert main(["bench", "supervised-horse", "--quick", "--status", option, str(blocker)]) == 2
        assert_one_line_error(capsys, "bench", f"{option} {blocker}: is a file, not a folder")
    assert main(["bench", "list", "--ledger", str(blocker)]) == 0  # listing the tables reads neither
    # a ledger folder that does not exist: every run shows as pending, and a note says why
    args = ["bench", "supervised-horse", "--quick", "--status", "--work-dir", str(tmp_path / "w")]
    assert main([*args, "--ledger", str(tmp_path / "nowhere")]) == 0
    assert f"note: --ledger {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_a_config_that_is_a_folder_is_named_as_one(tmp_path, capsys):
    assert main(["train", "-c", str(tmp_path)]) == 2
    assert_one_line_error(capsys, "train", f"{tmp_path}: is a folder, not a YAML recipe")


def test_data_commands_check_their_output_before_loading(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    missing = str(tmp_path / "no-such-recipe.yaml")  # the output is refused before the recipe is read
    for action in ("split", "check"):
        assert main(["data", action, "-c", missing, "-o", str(blocker / "out.json")]) == 2
        assert_one_line_error(capsys, "data", "file: is a file, not a folder to write into")
    assert main(["data", "generate", "cluttered-mnist", "-o", str(blocker / "gen")]) == 2
    assert_one_line_error(capsys, "data", "file: is a file, not a folder to write into")


def test_an_os_refusal_of_a_named_file_is_one_line(tmp_path, capsys, monkeypatch):
    import semiseg.cli as cli

    def refuse(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setitem(cli.COMMANDS, "demo", refuse)
    assert main(["demo"]) == 2
    assert_one_line_error(capsys, "demo", f"{tmp_path / 'x'}: Permission denied")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["evaluate", "--checkpoint", "x", "--split", "nope"], "argument --split: invalid choice: 'nope'"),
        (["train"], "the following arguments are required: --config/-c"),
        (["demo", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    ],
)
def test_command_line_mistakes_are_one_line_with_a_pointer_to_help(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "usage:" not in err and fragment in err, err
    assert err.endswith(f"(see semiseg {argv[0]} --help)")


def test_evaluate_refuses_data_whose_split_differs_from_the_run_s(tmp_path, capsys):
    """A folder that gained cases after training re-draws the split (its test cases could be training
    cases of the run): evaluate compares with the run's split.json and refuses, naming it."""
    root = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    assert (
        main(["train", "-c", folder_recipe(tmp_path, root), "-o", str(out), "--set", "train.epochs=1"]) == 0
    )
    capsys.readouterr()
    ckpt = str(out / "best.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "--split", "test"]) == 0  # the same data: fine
    assert "note:" not in capsys.readouterr().err
    for i in range(8, 12):  # four more cases
        for kind in ("images", "masks"):
            (root / kind / f"img{i:03d}.png").write_bytes((root / kind / "img000.png").read_bytes())
    for split in ("test", "val"):
        assert main(["evaluate", "--checkpoint", ckpt, "--split", split]) == 2
        assert_one_line_error(
            capsys, "evaluate", f"{out / 'split.json'}: the data now give another {split} split"
        )
    (out / "split.json").unlink()  # a checkpoint without its run folder: drawn again, and said so
    assert main(["evaluate", "--checkpoint", ckpt, "--split", "test"]) == 0
    assert "note: no split.json beside" in capsys.readouterr().err


def test_resume_refuses_data_whose_split_differs_from_the_run_s(tmp_path, capsys):
    """A folder that gained cases re-draws the split: resumed epochs would train on the interrupted
    run's validation or test cases. The resume is refused, naming split.json, and nothing changes."""
    root = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    recipe = folder_recipe(tmp_path, root)
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=1"]) == 0
    for i in range(8, 12):  # four more cases
        for kind in ("images", "masks"):
            (root / kind / f"img{i:03d}.png").write_bytes((root / kind / "img000.png").read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=2", "--resume"]) == 2
    assert_one_line_error(
        capsys, "train", f"{out / 'split.json'}: the data now give another", "resume with the data the run"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a changed split option is a changed config (named as such), not changed data
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=2", "--resume",
                 "--set", "data.split.labeled=3"]) == 2  # fmt: skip
    assert_one_line_error(capsys, "train", "data.split.labeled")
    for i in range(8, 12):  # the same data again: the resume goes on
        for kind in ("images", "masks"):
            (root / kind / f"img{i:03d}.png").unlink()
    assert main(["train", "-c", recipe, "-o", str(out), "--set", "train.epochs=2", "--resume"]) == 0


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_val_or_test_image_without_a_mask_is_a_one_line_error_before_training(tmp_path, capsys, split):
    root = tmp_path / "data"
    make_folder(root / "train")
    make_folder(root / "val", n=2)
    make_folder(root / "test", n=2)
    (root / split / "masks" / "img001.png").unlink()
    out = tmp_path / "out"
    assert (
        main(["train", "-c", folder_recipe(tmp_path, root), "-o", str(out), "--set", "train.epochs=1"]) == 2
    )
    name = "validation" if split == "val" else "test"
    assert_one_line_error(capsys, "train", f"img001.png: a {name} image needs a mask")
    assert not out.exists()
    assert main(["data", "check", "-c", folder_recipe(tmp_path, root)]) == 2
    assert_one_line_error(capsys, "data", f"a {name} image needs a mask")


def test_a_mask_learning_method_refuses_labeled_items_without_masks(tmp_path, capsys):
    """supervised with image tags (or sizes) on its labeled items would train on nothing (loss 0)."""
    root = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "-c", folder_recipe(tmp_path, root), "-o", str(out), "--set", "train.epochs=1"]
    assert main([*args, "--set", "data.split.supervision=tag"]) == 2
    assert_one_line_error(capsys, "train", "data.split.supervision: 'tag' gives the labeled images no masks",
                          "method 'supervised' learns from dense or sparse masks")  # fmt: skip
    assert not out.exists()
    # sizes of the labeled images read by a size regulariser on them: a weakly supervised run, allowed
    reg = "method.regularizers=[{name: size, weight: 0.01, streams: [labeled]}]"
    assert main([*args, "--set", "data.split.supervision=size", "--set", reg]) == 0


MOONS_SSLDEC = ["-c", "ssldec-moons", "--set", "data.num_images=40", "--set", "method.pretrain_epochs=2",
                "--set", "method.max_rounds=1", "--set", "method.max_retrain_epochs=2"]  # fmt: skip


SIGTERM_SCRIPT = """
import os, signal, sys, time
from semiseg import cli

def terminated(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this
    finally:
        print("cleaned up", flush=True)
    return 0

cli.COMMANDS["demo"] = terminated
before = signal.getsignal(signal.SIGTERM)
code = cli.main(["demo"])
print("handler restored" if signal.getsignal(signal.SIGTERM) == before else "handler left", flush=True)
sys.exit(code)
"""


def test_sigterm_runs_the_command_s_clean_up_and_a_closed_pipe_is_quiet(monkeypatch, capsys):
    """SIGTERM (timeout, SLURM) stops a command as Ctrl-C does, so its clean-up runs (a killed
    `data generate` left a hidden half-written folder); the handler is the caller's again after (in a
    child process: without the handler SIGTERM ends the process). A reader that closes the pipe
    (| head) ends the command quietly, exit 141."""
    from semiseg import cli

    child = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT], capture_output=True, text=True, timeout=60)
    assert child.returncode == 130, child.stderr
    assert child.stdout.split("\n")[:2] == ["cleaned up", "handler restored"]
    assert child.stderr.strip() == "semiseg demo: interrupted"

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(cli.COMMANDS, "demo", broken)
    assert main(["demo"]) == 141
    assert capsys.readouterr().err == ""


def test_moons_points_predict_from_files_as_from_arrays(tmp_path, capsys):
    """A moons point is a [2, 1, 1] "image" of coordinates: predict reads .npy points as they are, as
    the API's arrays (min-max scaling mapped every point to (0, 1) or (1, 0))."""
    import csv

    import semiseg

    out = tmp_path / "run"
    assert main(["train", *MOONS_SSLDEC, "-o", str(out)]) == 0
    points = tmp_path / "points"
    points.mkdir()
    rng = np.random.default_rng(0)
    arrays = {f"p{i}": (rng.random((2, 1, 1)) * 3 - 1).astype(np.float32) for i in range(4)}
    for stem, a in arrays.items():
        np.save(points / f"{stem}.npy", a)
    checkpoint = next(p for p in (out / "best.pt", out / "last.pt") if p.is_file())
    assert (
        main(["predict", "--checkpoint", str(checkpoint), "--input", str(points), "-o", str(tmp_path / "o")])
        == 0
    )
    rows = {Path(r["image"]).stem: r for r in csv.DictReader((tmp_path / "o" / "predictions.csv").open())}
    model = semiseg.load(checkpoint)
    for stem, a in arrays.items():
        want = model.probabilities(a).ravel()
        assert [float(rows[stem][f"p_{k}"]) for k in range(len(want))] == pytest.approx(
            want.tolist(), abs=1e-5
        )


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        # a regulariser that could never act: on class vectors, on a stream the split leaves empty,
        # reading size labels that no stream has, on a method that applies none
        ([*MOONS_SSLDEC, "--set", "method.regularizers=[{name: tv, weight: 0.1}]"],
         "method.regularizers: 'tv' acts on segmentation maps, and data.dataset 'moons' is a classification"),
        (["--set", "method.regularizers=[{name: tv, weight: 0.1, streams: [unlabeled]}]",
          "--set", "data.split.unlabeled=none"],
         "method.regularizers: 'tv' looks at the unlabeled images, and data.split leaves none"),
        (["--set", "method.regularizers=[{name: size, weight: 0.01}]"],
         "method.regularizers: 'size' reads size labels, and none of its streams (labeled, unlabeled) carries"),
        (["--set", "method={name: translation, regularizers: [{name: tv, weight: 0.1}]}",
          "--set", "data.split.unlabeled_supervision=tag"],
         "method.regularizers: method 'translation' does not apply regularisers"),
        (["--set", "method.regularizers=[{name: shape_prior, weight: 0.1}]", "--set", "data.split.supervision=sparse"],
         "method.regularizers: 'shape_prior' learns shapes from dense masks, and data.split.supervision: 'sparse'"),
        # weak labels of the unlabeled images that nothing in the run reads
        (["--set", "data.split.unlabeled_supervision=tag"],
         "data.split.unlabeled_supervision: 'tag' labels the unlabeled images, and nothing in this run reads them"),
        (["--set", "method={name: size, source: regressor}", "--set", "data.split.unlabeled_supervision=size"],
         "data.split.unlabeled_supervision: 'size' labels the unlabeled images, and nothing in this run reads them"),
        # found by a phase once training is set up, before its first step: no folder left either
        (["--set", "method={name: size, source: oracle}"],
         "method.source: oracle needs data.split.unlabeled_supervision: size"),
    ],
)  # fmt: skip
def test_checks_found_at_or_after_setup_are_one_line_errors_leaving_no_folder(
    tmp_path, capsys, overrides, fragment
):
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    args = ["train", "-c", recipe, *overrides] if overrides[0] != "-c" else ["train", *overrides]
    assert main([*args, "-o", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, "train", fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["method={name: size, source: regressor}"],
         "method 'size': method.source: regressor counts the labeled masks' sizes, and 31% of this labeled "
         "image's mask is unlabeled"),
        (["method.regularizers=[{name: size, weight: 0.01, source: regressor}]"],
         "method.regularizers: 'size' source: regressor counts the labeled masks' sizes, and 31% of"),
        (["method.regularizers=[{name: shape_prior, weight: 0.1}]"],
         "method.regularizers: 'shape_prior' learns shapes from the labeled masks, and 31% of this"),
        ([], None),  # the supervised loss ignores the unlabeled pixels: fine
    ],
)  # fmt: skip
def test_sizes_and_shapes_are_not_learned_from_folder_masks_that_are_mostly_unlabeled(
    tmp_path, capsys, overrides, fragment
):
    """A folder's "dense" masks may hold unlabeled pixels (data.mask_unlabeled): from masks of clicks a
    regressor would count too small sizes, a shape prior learn the clicks' shapes. Refused before
    training above a quarter of a mask; a thin unlabeled border (a void edge) stays accepted."""
    root = make_folder(tmp_path / "data", n=10)
    for i in (8, 9):  # unlabeled images (the size method needs some)
        (root / "masks" / f"img00{i}.png").unlink()
    sets = [a for o in ("data.mask_unlabeled=255", "train.epochs=1", *overrides) for a in ("--set", o)]
    recipe = folder_recipe(tmp_path, root)
    for rows in (2, 10):  # 2 of 32 rows unlabeled: accepted in every case; 10 (31 %): refused
        for path in (root / "masks").iterdir():
            mask = np.array(Image.open(path))
            mask[:rows] = 255
            Image.fromarray(mask).save(path)
        out = tmp_path / f"out{rows}"
        code = main(["train", "-c", recipe, "-o", str(out), "--no-test", *sets])
        if rows == 2 or fragment is None:
            assert code == 0
            continue
        assert code == 2
        err = assert_one_line_error(capsys, "train", fragment, "it needs (nearly) whole masks")
        assert f"error: {root / 'images'}" in err  # the image whose mask it is
        assert not out.exists()


def test_quick_needs_a_quick_section(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "shapes.yaml", SHAPES)
    assert main(["train", "-c", recipe, "--quick", "-o", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, "train", f"--quick: {recipe} has no quick section")
    assert not (tmp_path / "out").exists()
    # an explicit empty section says the recipe is already CPU-sized: --quick runs it as it is
    empty = write_recipe(tmp_path / "sized.yaml", {**SHAPES, "quick": {}})
    assert main(["train", "-c", empty, "--quick", "--no-test", "-o", str(tmp_path / "sized")]) == 0


def test_an_error_whose_wrapped_message_has_line_breaks_prints_as_one_line(monkeypatch, capsys):
    """nibabel's message for a truncated NIfTI holds a line break: the user still gets one line."""
    from semiseg import cli
    from semiseg.errors import DataError

    def boom(args):
        raise DataError(
            "c.nii.gz",
            "cannot read NIfTI file (OSError: got 3920 bytes from \n - could the file be damaged?)",
        )

    monkeypatch.setitem(cli.COMMANDS, "train", boom)
    assert cli.main(["train", "-c", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bytes from - could the file" in err
