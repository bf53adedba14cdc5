"""ONNX export: onnxruntime's logits equal PyTorch's within 1e-4 at other batch and image sizes, predict
--model writes the masks predict --checkpoint writes, and bad inputs are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from semiseg.cli import main

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


def _rgb_folder(root: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((24, 28), np.uint8)
        mask[4 + i % 6 : 14 + i % 6, 6:20] = 1
        mask[16:22, 2 + i : 8 + i] = 2
        image = (
            rng.integers(0, 60, (24, 28, 3))
            + 90 * (mask[..., None] == 1) * [1, 0, 1]
            + 120 * (mask[..., None] == 2)
        )
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"im{i}.png")
        if i < 8:
            Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    root = _rgb_folder(tmp / "data")
    recipe = {
        "data": {"dataset": "folder", "path": str(root), "image_size": [32, 32], "num_classes": 3,
                 "split": {"labeled": 4, "val_fraction": 0.2, "test_fraction": 0.2}},
        "model": {"name": "unet", "width": 4, "depth": 2},
        "method": {"name": "mean_teacher"},
        "train": {"epochs": 2, "batch_size": 2, "iters_per_epoch": 2, "progress": False, "plots": False},
    }  # fmt: skip
    (tmp / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "-c", str(tmp / "r.yaml"), "-o", str(tmp / "run")]) == 0
    model = tmp / "model.onnx"
    assert (
        main(["export", "--checkpoint", str(tmp / "run" / "best.pt"), "--format", "onnx", "-o", str(model)])
        == 0
    )
    return tmp, model


def test_onnxruntime_equals_pytorch_at_other_batch_and_image_sizes(trained):
    from semiseg.engine.export import TOLERANCE, OnnxModel
    from semiseg.engine.run import load_trained

    tmp, path = trained
    method, cfg, state = load_trained(tmp / "run" / "best.pt")
    model = OnnxModel(path)
    assert model.state["num_classes"] == 3 and model.state["in_channels"] == 3
    assert model.state["image_size"] == [32, 32] and model.cfg.method["name"] == "mean_teacher"
    generator = torch.Generator().manual_seed(1)
    for shape in [
        (1, 3, 32, 32),
        (5, 3, 48, 64),
        (2, 3, 45, 70),
        (1, 3, 31, 17),
    ]:  # any size, not only multiples
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            want = method.predict(x)
        got = model.predict(x)
        assert got.shape == want.shape == (shape[0], 3, *shape[2:])
        assert (got - want).abs().max().item() <= TOLERANCE


def test_predict_with_the_exported_model_writes_the_checkpoints_masks(trained):
    tmp, path = trained
    images = tmp / "data" / "images"
    assert main(["predict", "--checkpoint", str(tmp / "run" / "best.pt"), "--input", str(images), "-o",
                 str(tmp / "torch")]) == 0  # fmt: skip
    assert main(["predict", "--model", str(path), "--input", str(images), "--output", str(tmp / "onnx")]) == 0
    names = sorted(p.name for p in (tmp / "torch").iterdir())
    assert names == sorted(p.name for p in (tmp / "onnx").iterdir()) and len(names) == 10
    for name in names:
        a = np.asarray(Image.open(tmp / "torch" / name))
        b = np.asarray(Image.open(tmp / "onnx" / name))
        assert np.array_equal(a, b), name


def test_bad_models_and_options_are_one_line_errors(trained, tmp_path, capsys):
    import onnx

    _, path = trained
    stripped = onnx.load(str(path))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "plain.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    cases = [
        (["predict", "--model", str(tmp_path / "plain.onnx")], "not a model exported by semiseg"),
        (["predict", "--model", str(tmp_path / "junk.onnx")], "cannot read ONNX model"),
        (["predict", "--model", str(tmp_path / "none.onnx")], "model file not found"),
        # the source flag names the backend: an ONNX model is run by onnxruntime on the CPU only
        (["predict", "--model", str(tmp_path / "best.pt")], "--model: "),
        (["predict", "--checkpoint", str(path)], "--checkpoint: "),
        (["predict", "--model", str(path), "--device", "cuda"], "runs on onnxruntime's CPU provider"),
    ]
    for args, fragment in cases:
        assert main([*args, "--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and fragment in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_bfloat16_and_threads_options(trained, tmp_path, capsys):
    """``--dtype bfloat16`` runs the checkpoint under autocast (float32 logits close to float32's);
    ``--threads`` reaches onnxruntime's session; ONNX + bfloat16 and bad values are one-line errors."""
    import semiseg

    tmp, onnx_path = trained
    checkpoint = tmp / "run" / "best.pt"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = semiseg.load(checkpoint)
    bf16 = semiseg.load(checkpoint, dtype="bfloat16")
    with torch.no_grad():
        want, got = fp32.network(x), bf16.network(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert 0 < float((got - want).abs().max()) < 0.1 * float(want.abs().max())  # rounded, not another model
    onnx_model = semiseg.load(onnx_path, threads=1)
    assert onnx_model.network.__self__.session.get_session_options().intra_op_num_threads == 1
    assert main(["predict", "--checkpoint", str(checkpoint), "--dtype", "bfloat16", "--input",
                 str(tmp / "data" / "images"), "-o", str(tmp_path / "bf16")]) == 0  # fmt: skip
    assert len(list((tmp_path / "bf16").glob("*.png"))) == 10
    for args, fragment in (
        (["--model", str(onnx_path), "--dtype", "bfloat16"], "an ONNX model runs in float32"),
        (["--checkpoint", str(checkpoint), "--threads", "0"], "threads must be a whole number of at least 1"),
    ):
        assert (
            main(["predict", *args, "--input", str(tmp / "data" / "images"), "-o", str(tmp_path / "x")]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and fragment in err and "Traceback" not in err, err
        assert not (tmp_path / "x").exists()


def test_five_channel_npy_images_train_export_and_predict(tmp_path, capsys):
    """Images of more than 3 channels (``.npy`` [C, H, W]) go through training, ``data check``, the ONNX
    export and both predict paths, which write the same masks."""
    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(8):
        mask = np.zeros((20, 24), np.uint8)
        mask[3 + i : 12 + i, 5:17] = 1
        image = rng.normal(0, 1, (5, 20, 24)) + 2.0 * mask * np.arange(5)[:, None, None] / 4
        np.save(root / "images" / f"c{i}.npy", image.astype(np.float32))
        if i < 6:
            np.save(root / "masks" / f"c{i}.npy", mask)
    recipe = {
        "data": {"dataset": "folder", "path": str(root), "image_size": [24, 24], "num_classes": 2,
                 "split": {"labeled": 3, "val_fraction": 0.2, "test_fraction": 0.2}},
        "model": {"name": "unet", "width": 4, "depth": 2},
        "train": {"epochs": 1, "batch_size": 2, "iters_per_epoch": 2, "progress": False, "plots": False},
    }  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["data", "check", "-c", str(tmp_path / "r.yaml")]) == 0
    assert "2 classes, 5 channel(s)" in capsys.readouterr().out
    assert main(["train", "-c", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run")]) == 0
    model = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "best.pt"), "-o", str(model)]) == 0
    for args, out in (
        (["--checkpoint", str(tmp_path / "run" / "best.pt")], "t"),
        (["--model", str(model)], "o"),
    ):
        assert main(["predict", *args, "--input", str(root / "images"), "-o", str(tmp_path / out)]) == 0
    names = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert len(names) == 8 and names == sorted(p.name for p in (tmp_path / "o").iterdir())
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("t", "o"))
        assert a.shape == (20, 24) and np.array_equal(a, b), name


#: methods whose prediction network is not the plain UNet of the fixture above (translation: the
#: residual decoder with norm parameters from an MLP; ioda: a fully connected map at a fixed grid;
#: ssldec: the clustering head)
OWN_NETWORKS = {
    "translation": ({"unique_channels": 4, "mlp_hidden": 8, "disc_width": 4, "disc_scales": 2},
                    {"name": "unet", "width": 4, "depth": 2}),
    "ioda": ({}, {"name": "mlp", "output": "map", "hidden": [8, 8], "activation": "tanh"}),
    "ssldec": ({}, {"name": "unet", "width": 4, "depth": 2, "head": "clustering"}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OWN_NETWORKS))
def test_networks_that_resize_to_their_training_grid_export_for_any_batch_and_size(name):
    """A network that resizes inputs to its training grid (and skips the resize at that size) once
    exported only at the traced batch and size: the export must take any."""
    from semiseg.config import ModelConfig
    from semiseg.engine.export import TOLERANCE, _Network, _session, to_onnx
    from semiseg.methods import build_method

    options, model = OWN_NETWORKS[name]
    torch.manual_seed(0)
    method = build_method({"name": name, **options}, ModelConfig(**model), in_channels=1, num_classes=2,
                          image_size=(32, 32)).eval()  # fmt: skip
    network = _Network(method).eval()
    session = _session(to_onnx(network, torch.rand(2, 1, 32, 32)).SerializeToString())
    generator = torch.Generator().manual_seed(1)
    for shape in [(1, 1, 32, 32), (3, 1, 35, 41), (1, 1, 17, 9)]:
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            want = network(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == want.shape == (shape[0], 2, *shape[2:])
        assert np.abs(got - want).max() <= TOLERANCE, shape


def test_export_refuses_an_output_it_cannot_write_before_exporting_and_stays_quiet(trained, tmp_path, capsys):
    """A folder, or a path under a file, is a one-line error before the slow export; a successful
    export prints none of the exporter's own warnings (torchvision operators, pytree)."""
    tmp, _ = trained
    (tmp_path / "file").write_text("x")
    checkpoint = str(tmp / "run" / "best.pt")
    before = Path(checkpoint).read_bytes()
    for output, fragment in (
        (tmp_path, "is a folder"),
        (tmp_path / "file" / "m.onnx", "is a file"),
        (tmp_path / "m.txt", "an ONNX model's file name ends in .onnx"),  # predict / load go by it
        (checkpoint, "an ONNX model's file name ends in .onnx"),  # it replaced the checkpoint it read
    ):
        assert main(["export", "--checkpoint", checkpoint, "-o", str(output)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and fragment in err and "Traceback" not in err, err
    assert Path(checkpoint).read_bytes() == before and not (tmp_path / "m.txt").exists()
    assert main(["export", "--checkpoint", checkpoint, "-o", str(tmp_path / "m.onnx")]) == 0
    err = capsys.readouterr().err
    assert "torchvision" not in err and "FutureWarning" not in err, err


def test_a_classifier_exports_checked_at_its_own_input_size(tmp_path, capsys):
    """A classifier takes inputs of its training size only (an MLP on 2-D points): the export checks it
    there, not also on a larger image, which it cannot take."""
    run, onnx = tmp_path / "moons", tmp_path / "moons.onnx"
    tiny = ["data.num_images=60", "method.pretrain_epochs=2", "method.max_rounds=1", "method.max_retrain_epochs=2",
            "train.progress=false"]  # fmt: skip
    assert (
        main(["train", "-c", "ssldec-moons", "-o", str(run), *[a for s in tiny for a in ("--set", s)]]) == 0
    )
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run / "last.pt"), "-o", str(onnx)]) == 0
    assert onnx.is_file()
