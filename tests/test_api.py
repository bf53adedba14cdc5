"""The Python API: the README's example runs as written; arrays and files predict like the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import semiseg
from semiseg.errors import ConfigError, DataError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_the_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = readme_example().replace('"train.epochs": 2', '"train.epochs": 1, "train.iters_per_epoch": 2')
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api-example" / "best.pt").is_file()


def test_predict_matches_the_cli_and_bad_inputs_are_one_line_errors(tmp_path):
    import random

    from PIL import Image

    from semiseg.cli import main

    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    run = semiseg.train(
        {"data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 16, "split": {"labeled": 4}},
         "model": {"name": "unet", "width": 4, "depth": 2},
         "train": {"epochs": 1, "batch_size": 4, "iters_per_epoch": 2, "progress": False, "plots": False}},
        overrides={"train.lr": 0.01}, output_dir=tmp_path / "run",
    )  # fmt: skip
    after = torch.get_rng_state(), np.random.get_state()[1], random.getstate()
    assert torch.equal(states[0], after[0]) and np.array_equal(states[1], after[1]) and states[2] == after[2]
    scores = run.evaluate("test")
    assert run.cfg.train.lr == 0.01 and set(scores) >= {"dice/mean", "hd95_px/mean"}
    assert all(v is None or v == v for v in scores.values())  # undefined means are None, not NaN
    assert run.dir.is_absolute()  # found again after an os.chdir
    reopened = semiseg.open_run(tmp_path / "run")  # a finished run's folder, later
    assert (
        reopened.metrics == run.metrics and reopened.cfg == run.cfg and reopened.checkpoint == run.checkpoint
    )
    for folder, message in ((tmp_path, "is not a finished run's folder (no config.json)"),
                            (tmp_path / "nope", "is not a folder")):  # fmt: skip
        with pytest.raises(DataError, match=re.escape(message)):
            semiseg.open_run(folder)
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "in" / f"x{i}.png")
    assert main(["predict", "--checkpoint", str(run.checkpoint), "--input", str(tmp_path / "in"),
                 "-o", str(tmp_path / "out")]) == 0  # fmt: skip
    model = semiseg.load(run.checkpoint)
    for i in range(3):
        cli = np.asarray(Image.open(tmp_path / "out" / f"x{i}.png"))
        by_path = model.predict(tmp_path / "in" / f"x{i}.png")
        by_array = model.predict(np.asarray(Image.open(tmp_path / "in" / f"x{i}.png")))  # uint8: / 255
        assert np.array_equal(cli, by_path) and np.array_equal(cli, by_array)
    tensor = torch.from_numpy(np.asarray(Image.open(tmp_path / "in" / "x0.png")).astype(np.float32) / 255)
    assert np.array_equal(model.predict(tensor), model.predict(tmp_path / "in" / "x0.png"))  # a tensor too
    assert model.predict(tensor.bfloat16()).shape == (40, 36)  # NumPy has no bfloat16
    # "cpu:0" is the CPU (torch.load's map_location refused it: the checkpoint was called unreadable)
    assert np.array_equal(semiseg.load(run.checkpoint, device="cpu:0").predict(tensor), model.predict(tensor))
    # a checkpoint of a method this process has not registered (a custom one): the error names the file
    state = torch.load(run.checkpoint, weights_only=True)
    state["config"]["method"]["name"] = "my_custom_method"
    torch.save(state, tmp_path / "custom.pt")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / 'custom.pt'))}: .*my_custom_method"):
        semiseg.load(tmp_path / "custom.pt")
    default = torch.get_default_dtype()
    try:  # a caller's float64 default: the saved float32 network still predicts
        torch.set_default_dtype(torch.float64)
        assert np.array_equal(semiseg.load(run.checkpoint).predict(tensor), model.predict(tensor))
    finally:
        torch.set_default_dtype(default)
    with pytest.raises(DataError, match="does not fit a model of 1 channel"):
        model.predict(np.zeros((2, 3, 8, 8)))
    with pytest.raises(DataError, match="image file not found"):
        model.predict(tmp_path / "nope.png")
    for bad, message in (
        (
            np.zeros((32, 32, 3)),
            r"looks like \[H, W, C\] \(channels last\); the model reads 1 channel: pass \[H, W\], in",
        ),
        (
            np.zeros((32, 32, 1)),
            r"looks like \[H, W, C\] \(channels last\); .* pass \[H, W\] \(array\[\.\.\., 0\]\)",
        ),
        (  # a volume, channels last: the same advice ((16, 16, 8, 1) was read as 16 channels)
            np.zeros((16, 16, 8, 1)),
            r"looks like \[D, H, W, C\] \(channels last\); .* pass \[D, H, W\] \(array\[\.\.\., 0\]\)",
        ),
        (np.full((16, 16), np.nan), "NaN or infinite values"),
        (np.array([]), "expected a non-empty numeric array"),
        (np.array([["a"]]), "expected a non-empty numeric array"),
        ([np.zeros((40, 50)), np.zeros((30, 20))], "takes one image .* got a list; call it once per image"),
    ):
        with pytest.raises(DataError, match=message):
            model.predict(bad)
    with pytest.raises(ConfigError, match="train.nonsense"):
        semiseg.train("supervised-shapes", overrides={"train.nonsense": 1}, output_dir=tmp_path / "bad")
    with pytest.raises(ConfigError, match="split must be"):
        run.evaluate("train")


def test_errors_through_the_api_use_its_argument_names(tmp_path):
    """Messages shared with the CLI name its flags (--set, --resume); through the API they name the
    arguments (overrides, resume), and stay semiseg errors of one line."""
    with pytest.raises(ConfigError, match=r"^overrides: bad key ''$"):
        semiseg.train("supervised-shapes", overrides={"": 1})
    with pytest.raises(ConfigError, match=r"^resume: no checkpoint at .*last\.pt$"):
        semiseg.train("supervised-shapes", resume=True, output_dir=tmp_path / "none")
    default = torch.get_default_dtype()
    try:  # a caller's float64 default: refused before anything is written
        torch.set_default_dtype(torch.float64)
        with pytest.raises(ConfigError, match=r"^training runs in float32, and this process's default dtype"):
            semiseg.train("supervised-shapes", {"train.epochs": 1}, quick=True, output_dir=tmp_path / "f64")
    finally:
        torch.set_default_dtype(default)
    assert not (tmp_path / "f64").exists()
    run = semiseg.train("supervised-shapes", {"train.epochs": 1}, quick=True, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="overrides and quick apply to a recipe"):
        semiseg.train(run.cfg, {"train.epochs": 2})


def test_wrong_arguments_are_semiseg_config_errors():
    """Mistakes in the Python API's arguments raise semiseg's ConfigError with a clear message."""
    import numpy as np

    from semiseg.api import _config
    from semiseg.errors import ConfigError

    for config, overrides, message in (
        (None, None, "config: a YAML path, a built-in recipe's name or a dict, got NoneType"),
        ("supervised-shapes", ["train.epochs=1"], "overrides: a dict of dotted keys"),
        ("supervised-shapes", {"train.epochs": object()}, "'train.epochs' has a value YAML cannot write"),
    ):
        with pytest.raises(ConfigError, match=message):
            semiseg.train(config, overrides)
    assert _config("supervised-shapes", {"train.epochs": np.int64(3)}, False).train.epochs == 3
    nested = {
        "data": {"dataset": "shapes", "image_size": [np.int64(32), 32]},
        "train": {"lr": np.float32(0.5)},
    }
    cfg = _config(nested, None, False)  # NumPy scalars in a dict config too
    assert list(cfg.data.image_size) == [32, 32] and cfg.train.lr == 0.5
    with pytest.raises(ConfigError, match="resume: True or False, got 'no'"):
        semiseg.train("supervised-shapes", resume="no")
    for path, threads, message in (
        (None, None, "the model is a checkpoint or .onnx file path, got NoneType"),
        ("best.pt", "2", "threads must be a whole number of at least 1, not '2'"),
        ("best.pt", 1.5, "threads must be a whole number of at least 1, not 1.5"),
    ):
        with pytest.raises(ConfigError, match=message):
            semiseg.load(path, threads=threads)


def test_a_run_without_best_pt_points_at_last_pt(tmp_path):
    """A run that selects no model (e.g. ssldec with validate: false) writes last.pt only."""
    run = semiseg.Run(tmp_path, None, {})
    (tmp_path / "last.pt").write_bytes(b"")
    assert run.checkpoint == tmp_path / "last.pt"
    (tmp_path / "best.pt").write_bytes(b"")
    assert run.checkpoint == tmp_path / "best.pt"


def test_arrays_are_scaled_as_the_training_files_were(tmp_path):
    """A model trained on a folder of 16-bit PNGs (min-max per image) or NIfTI volumes (min-max per
    volume) predicts from the raw array as from the file; before, such arrays went in unscaled."""
    from PIL import Image

    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(3)
    root, volumes = tmp_path / "png16", tmp_path / "nifti"
    for folder in (root, volumes):
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
    for i in range(6):
        image = rng.integers(0, 1200, (24, 24)).astype(np.uint16)  # 12-bit content, low
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i : 14 + i, 5:15] = 1
        image[mask == 1] += 2500
        Image.fromarray(image).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
        if i < 4:  # volumes (x, y, z) of CT-like values, spacing 0.7 x 0.7 x 3
            affine = np.diag([0.7, 0.7, 3.0, 1.0])
            volume = rng.normal(-500, 100, (16, 12, 4)).astype(np.float32)
            volume[4 + i : 10 + i, 3:9] += 900
            nib.save(nib.Nifti1Image(volume, affine), str(volumes / "images" / f"v{i}.nii.gz"))
            nib.save(
                nib.Nifti1Image((volume > 0).astype(np.uint8), affine),
                str(volumes / "masks" / f"v{i}.nii.gz"),
            )
    train = {"epochs": 1, "batch_size": 2, "iters_per_epoch": 2, "progress": False, "plots": False}
    model_cfg = {"name": "unet", "width": 4, "depth": 2}
    for folder, size, read in (
        (root, [24, 24], lambda p: np.asarray(Image.open(p))),
        (volumes, [16, 16], lambda p: nib.load(str(p)).get_fdata(dtype=np.float32).transpose(2, 1, 0)),
    ):
        run = semiseg.train(
            {"data": {"dataset": "folder", "path": str(folder), "image_size": size}, "model": model_cfg,
             "train": train}, output_dir=tmp_path / f"run-{folder.name}",
        )  # fmt: skip
        model = semiseg.load(run.checkpoint)
        path = sorted((folder / "images").iterdir())[0]
        raw = read(path)
        assert raw.max() > 2 or raw.min() < -2, "the raw values are beyond [0, 1]"
        by_path, by_array = model.probabilities(path), model.probabilities(raw)
        if by_path.ndim == 4:  # NIfTI: the file's (x, y, z) order back; the array's is (z, y, x)
            by_array = by_array.transpose(0, 3, 2, 1)
        np.testing.assert_allclose(by_array, by_path, atol=1e-5)
        if folder == root:  # trained on image files: a stack [D, H, W] is scaled slice by slice, as files
            assert model.state["volumes"] is False
            stack = np.stack([read(p) for p in sorted((folder / "images").iterdir())[:3]])
            stacked = model.probabilities(stack)
            for d in range(3):
                np.testing.assert_allclose(stacked[:, d], model.probabilities(stack[d]), atol=1e-5)
        else:
            assert model.state["volumes"] is True


def test_load_with_flip_tta_averages_the_flipped_predictions(tmp_path):
    run = semiseg.train(
        {"data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 12, "split": {"labeled": 4}},
         "model": {"name": "unet", "width": 4, "depth": 2},
         "train": {"epochs": 1, "batch_size": 4, "iters_per_epoch": 2, "progress": False, "plots": False}},
        output_dir=tmp_path / "run",
    )  # fmt: skip
    image = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    plain, flip = semiseg.load(run.checkpoint), semiseg.load(run.checkpoint, tta="flip")
    logits = [
        torch.from_numpy(plain.probabilities(np.ascontiguousarray(image[:: a or 1, :: b or 1]))).log()
        for a in (None, -1)
        for b in (None, -1)
    ]  # softmax logits up to a constant per pixel: log-probabilities average the same way
    mean = sum(lg.flip(d) if d else lg for lg, d in zip(logits, [(), (2,), (1,), (1, 2)])) / 4  # flipped back
    np.testing.assert_allclose(flip.probabilities(image), torch.softmax(mean, 0).numpy(), atol=1e-5)
    assert not np.allclose(flip.probabilities(image), plain.probabilities(image), atol=1e-4)
    with pytest.raises(ConfigError, match=r"^tta: must be one of none, flip, not 'mirror'$"):
        semiseg.load(run.checkpoint, tta="mirror")
    classifier = semiseg.train(  # a point classifier: refused when loaded, not at its first prediction
        "ssldec-moons", {"method.pretrain_epochs": 1, "method.max_rounds": 0, "train.progress": False},
        output_dir=tmp_path / "moons",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"^tta: 'flip' applies to segmentations, and .* is a classifier$"):
        semiseg.load(classifier.checkpoint, tta="flip")
    assert semiseg.load(classifier.checkpoint, tta="none").cfg.inference.tta == "none"
