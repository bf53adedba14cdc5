"""The curriculum size-constraint method: bound sources, phases, regressor, proposals, end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_methods import K, batch, build, stream

from semiseg.config import build_config
from semiseg.data.records import IGNORE_INDEX, Record
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.run import train
from semiseg.errors import ConfigError
from semiseg.losses.size import size_penalty
from semiseg.methods.size import region_targets, rotate_flip


def test_region_targets_on_a_hand_made_mask():
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, 0, :2] = 1  # 2 pixels of class 1 at row 0, columns 0..1
    mask[0, 3, 3] = IGNORE_INDEX
    area, centroid = region_targets(mask, 3)
    assert area[0].tolist() == pytest.approx([13 / 16, 2 / 16, 0.0])
    assert centroid[0, 1].tolist() == pytest.approx([0.0, 1 / 6], abs=1e-5)


def test_rotate_flip_moves_image_and_mask_together():
    torch.manual_seed(0)
    mask = torch.zeros(4, 32, 32, dtype=torch.long)
    mask[:, 8:20, 10:26] = 1
    image = mask[:, None].float()

    def rngs(salt=0):
        return [np.random.default_rng([salt, i]) for i in range(4)]

    img, m = rotate_flip(image, mask, degrees=0.0, flips=True, rngs=rngs())
    assert torch.equal(img[:, 0].long(), m)  # flips only: exact
    img, m = rotate_flip(image, mask, degrees=45.0, flips=True, rngs=rngs())
    again, _ = rotate_flip(image, mask, degrees=45.0, flips=True, rngs=rngs())
    assert torch.equal(img, again)  # the draws are the generators', not torch's global RNG
    other, _ = rotate_flip(image, mask, degrees=45.0, flips=True, rngs=rngs(1))
    assert not torch.equal(img, other)
    inside = m != IGNORE_INDEX
    agree = (img[:, 0].round().long() == m) | ~inside
    assert agree.float().mean() > 0.97  # bilinear image vs nearest mask differ only on edges
    assert (m == IGNORE_INDEX).any()  # corners rotated in from outside
    assert (m == 1).sum().item() == pytest.approx((mask == 1).sum().item(), rel=0.1)


@pytest.mark.parametrize(
    "source, names",
    [
        ("regressor", ["regressor", "segmenter"]),
        ("oracle", ["segmenter"]),
        ("fs", ["train"]),
        ("proposals", ["fs", "proposals"]),
        ("proposals-0", ["proposals"]),
    ],  # fmt: skip
)
def test_phases_per_source(source, names):
    if source == "proposals-0":  # no FS phase: the starting model (train.init) is the teacher
        method = build("size", source="proposals", fs_epochs=0)
    else:
        method = build("size", source=source)
    phases = method.phases()
    assert [p.name for p in phases] == names
    assert phases[-1].final and all(not p.final and p.restore_best for p in phases[:-1])
    if source == "regressor":
        assert phases[0].val_metric == "size_mae" and phases[0].optimizers == ("regressor",)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="method.source"):
        build("size", source="nope")
    with pytest.raises(ConfigError, match="method.classes"):
        build("size", classes=[5])
    with pytest.raises(ConfigError, match="centroid bounds come from the regressor"):
        build("size", source="oracle", centroid_margin=0.1)


def test_oracle_needs_sizes_on_the_unlabeled_images():
    method = build("size", source="oracle")
    with pytest.raises(ConfigError, match="unlabeled_supervision: size"):
        method.training_step(batch(), "segmenter", "main")
    data = {"labeled": stream("dense"), "unlabeled": stream("size", b=3, seed=1)}
    out = method.training_step(data, "segmenter", "main")
    probs = method.model(data["unlabeled"].image).softmax(1)
    expected = size_penalty(probs, data["unlabeled"].sizes, 0.1, [1, 2])
    assert out["size_penalty"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["ce"] + 0.01 * out["size_penalty"]).item(), rel=1e-5)


def test_regressed_sizes_bound_the_segmenter(monkeypatch):
    method = build("size", source="regressor", size_weight=2.0)
    data = batch()
    n_pix = 32 * 32
    area = torch.tensor([[0.25, 0.5]] * 3)
    monkeypatch.setattr(method, "regress", lambda x: (area, None))
    out = method.training_step(data, "segmenter", "main")
    probs = method.model(data["unlabeled"].image).softmax(1)
    sizes = torch.full((3, K), math.nan)
    sizes[:, 1:] = area * n_pix
    assert out["size_penalty"].item() == pytest.approx(size_penalty(probs, sizes, 0.1).item(), rel=1e-5)


@pytest.mark.parametrize("arch", ["cnn", "density"])
def test_regressor_step_learns_sizes_and_validation_reports_the_error(arch):
    torch.manual_seed(0)
    method = build("size", source="regressor", regressor_rotate_degrees=0.0, regressor_flips=False,
                   regressor_arch=arch)  # fmt: skip
    data = batch()
    opt = torch.optim.Adam(method.regressor.parameters(), 1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = method.training_step(data, "regressor", "regressor")["loss"]
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.2 * first
    method.eval()
    lab = data["labeled"]
    records = [Record(id=f"r{i}", image=lab.image[i].numpy(), mask=lab.mask[i].clamp(min=0).numpy())
               for i in range(2)]  # fmt: skip
    metrics = method.validation_metrics("regressor", records, (32, 32), torch.device("cpu"))
    assert set(metrics) == {"size_mae", "size_mae_fraction"}
    # the error of this (trained) regressor's areas against the masks' foreground fractions
    with torch.no_grad():
        pred, _ = method.regress(lab.image)
    true = torch.stack([(lab.mask == c).float().mean(dim=(1, 2)) for c in method.classes], 1)
    want = float((pred - true).abs().mean())
    assert metrics["size_mae_fraction"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert metrics["size_mae"] == pytest.approx(want * 32 * 32, rel=1e-5, abs=1e-4)
    assert method.validation_metrics("segmenter", records, (32, 32), torch.device("cpu")) is None


def test_density_regressor_outputs_areas_and_centroids_of_its_density_map():
    from semiseg.models.regressor import DensityRegressor

    torch.manual_seed(0)
    reg = DensityRegressor(1, regions=2, centroids=True, width=4, depth=2)
    x = torch.rand(3, 1, 16, 16)
    out = reg(x)
    density = torch.sigmoid(reg.net(x))
    assert out.shape == (3, 2 + 4)
    assert torch.allclose(out[:, :2], density.mean(dim=(-2, -1)))
    assert ((out[:, 2:] >= 0) & (out[:, 2:] <= 1)).all()
    method = build("size", source="regressor", regressor_arch="density", centroid_margin=0.1)
    area, centroid = method.regress(x)
    assert area.shape == (3, K - 1) and centroid.shape == (3, K - 1, 2)
    with pytest.raises(ConfigError, match="method.regressor_arch"):
        build("size", source="regressor", regressor_arch="resnet")


def test_regressor_needs_dense_or_size_labels():
    method = build("size", source="regressor")
    with pytest.raises(ConfigError, match="dense masks or size labels"):
        method.training_step(batch("sparse"), "regressor", "regressor")
    out = method.training_step(batch("size"), "regressor", "regressor")  # sizes as targets
    assert torch.isfinite(out["loss"])


def test_centroid_option_regresses_and_penalises_centroids():
    method = build("size", source="regressor", centroid_margin=0.05, centroid_min_size=0.0)
    assert method.regressor.head[-1].out_features == 3 * (K - 1)
    out = method.training_step(batch(), "regressor", "regressor")
    assert "centroid_loss" in out
    out = method.training_step(batch(), "segmenter", "main")
    assert "centroid_penalty" in out and torch.isfinite(out["centroid_penalty"])


def test_proposals_use_the_frozen_fs_model_on_foreground_pixels_only():
    method = build("size", source="proposals")
    data = batch()
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    method.on_phase_start("proposals")  # the engine's call when the phase starts
    out = method.training_step(data, "proposals", "main")
    assert "proposal_ce" in out
    # the teacher is the model as it was when the phase started (BatchNorm statistics too)
    teacher = method.teacher.state_dict()
    for n, p in before.items():
        assert torch.equal(p, teacher[n]), n
    bn = next(k for k in before if k.endswith("running_mean"))
    assert not torch.equal(before[bn], method.model.state_dict()[bn])  # while the model's moved on
    mask = method._proposal_mask(data["unlabeled"].image)
    assert not (mask == 0).any()  # background predictions are not used
    assert not any(p.requires_grad for p in method.teacher.parameters())


# ------------------------------------------------------------------------------------- end to end
RAW = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 24,
        "shapes_classes": 2,
        "split": {"labeled": 4, "seed": 0},
    },  # fmt: skip
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "size", "regressor_epochs": 2, "regressor_width": 4, "regressor_depth": 2},
    "train": {
        "epochs": 2,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "progress": False,
        "plots": False,
    },
}


@pytest.mark.parametrize(
    "overrides",
    [[], ["method.source=oracle", "data.split.unlabeled_supervision=size"], ["method.source=proposals"]],
)
def test_train_end_to_end(tmp_path, overrides):
    cfg = build_config(json.loads(json.dumps(RAW)), overrides)
    results = train(cfg, output_dir=tmp_path)
    history = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    final = history[-1]["phase"]
    assert results["best"]["phase"] == final and np.isfinite(results["test"]["dice/mean"])
    if not overrides:
        assert [h["phase"] for h in history] == ["regressor"] * 2 + ["segmenter"] * 2
        assert "val/size_mae" in history[0] and "val/dice/mean" not in history[0]
        assert "train/size_penalty" in history[-1]
        assert load_checkpoint(tmp_path / "best_regressor.pt")["best"]["phase"] == "regressor"


def test_train_init_starts_the_segmenter_from_another_runs_checkpoint(tmp_path):
    fs = build_config(json.loads(json.dumps(RAW)), ["method.source=fs"])
    train(fs, output_dir=tmp_path / "fs")
    start = tmp_path / "fs" / "best.pt"
    fs_model = {k[6:]: v for k, v in load_checkpoint(start)["method_state"].items() if k.startswith("model.")}
    cfg = build_config(
        json.loads(json.dumps(RAW)),
        ["method.source=proposals", "method.fs_epochs=0", f"train.init={start}", "train.epochs=1"],
    )
    train(cfg, output_dir=tmp_path / "prop")
    teacher = load_checkpoint(tmp_path / "prop" / "last.pt")["method_state"]
    for k, v in fs_model.items():  # the frozen teacher is the FS model the run started from
        assert torch.equal(teacher[f"teacher.{k}"], v), k


def test_train_init_errors_are_one_line_config_errors(tmp_path):
    raw = json.loads(json.dumps(RAW))
    with pytest.raises(Exception, match="no_such.pt"):
        train(build_config(raw, ["train.init=" + str(tmp_path / "no_such.pt")]), output_dir=tmp_path / "a")
    fs = build_config(raw, ["method.source=fs", "train.epochs=1"])
    train(fs, output_dir=tmp_path / "fs")
    wider = build_config(raw, ["model.width=8", f"train.init={tmp_path / 'fs' / 'best.pt'}"])
    with pytest.raises(ConfigError, match="train.init: .*best.pt: its segmenter does not fit"):
        train(wider, output_dir=tmp_path / "b")


def test_oracle_trains_on_rough_sizes_from_a_file_for_images_without_masks(tmp_path):
    """A folder whose unmasked images carry only a rough size in sizes.json: the oracle size method
    bounds their soft sizes by it (sizes at the image's resolution, scaled to the training grid)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    sizes = {}
    for i in range(16):
        mask = np.zeros((40, 40), np.uint8)
        r = 5 + i % 6
        mask[20 - r : 20 + r, 20 - r : 20 + r] = 1
        image = (rng.integers(0, 60, (40, 40)) + 150 * mask).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i:02d}.png")
        if i < 8:
            Image.fromarray(mask).save(root / "masks" / f"im{i:02d}.png")
        else:  # no mask: a rough size (10 % off) instead
            sizes[f"im{i:02d}"] = {"1": round(1.1 * float(mask.sum()))}
    (root / "sizes.json").write_text(json.dumps(sizes))
    raw = json.loads(json.dumps(RAW))
    raw["data"] = {"dataset": "folder", "path": str(root), "image_size": [32, 32],
                   "split": {"labeled": 4, "seed": 0, "val_fraction": 0.25, "test_fraction": 0.0,
                             "unlabeled_supervision": "size"}}  # fmt: skip
    cfg = build_config(raw, ["method.source=oracle"])
    from semiseg.data import prepare_data

    data = prepare_data(cfg)
    got = {data.unlabeled.ids[i]: float(data.unlabeled.sizes[i, 1]) for i in range(len(data.unlabeled))}
    for stem, given in sizes.items():
        if stem in got:
            assert got[stem] == pytest.approx(given["1"] * (32 * 32) / (40 * 40))
    assert set(sizes) & set(got)
    train(cfg, output_dir=tmp_path / "run")
    history = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert all(math.isfinite(h["train/size_penalty"]) for h in history if h["phase"] == "segmenter")
