"""The ``tv`` method (Javanmardi et al.): CE on the labeled pixels + α(step)·TV of the softmax maps of
labeled and unlabeled images; its ramp-up, streams, gradients at unlabeled pixels, and a tiny run."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from semiseg.config import ModelConfig, build_config
from semiseg.core import Batch
from semiseg.data.records import IGNORE_INDEX
from semiseg.engine import run as engine_run
from semiseg.losses import masked_cross_entropy
from semiseg.losses.ramp import ramp_weight
from semiseg.losses.tv import total_variation
from semiseg.methods import build_method

K = 3
MODEL = ModelConfig(width=4, depth=2)


def batch(seed: int = 0, unlabeled_seed: int = 1, hw=(16, 16)) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, K, (2, *hw), generator=g)
    mask[torch.rand(2, *hw, generator=g) < 0.9] = IGNORE_INDEX  # ~10 % labeled pixels
    unlabeled = torch.rand(3, 1, *hw, generator=torch.Generator().manual_seed(unlabeled_seed))
    return {
        "labeled": Batch.of(torch.rand(2, 1, *hw, generator=g), mask, num_classes=K),
        "unlabeled": Batch.of(unlabeled, num_classes=K),
    }


def build_tv(seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_method({"name": "tv", **options}, MODEL, in_channels=1, num_classes=K).train()


def manual_loss(method, data, weight, operator="sobel", norm="l1", reduction="mean", streams=None):
    """CE on labeled pixels + weight · mean over streams of TV(softmax(logits)), with the same model."""
    streams = streams or list(data)
    with torch.no_grad():
        logits = {s: method.model(data[s].image) for s in data}
    ce = masked_cross_entropy(logits["labeled"], data["labeled"].mask)
    tv = torch.stack(
        [total_variation(logits[s].softmax(1), operator, norm, reduction) for s in streams]
    ).mean()
    return ce, tv, ce + weight * tv


@pytest.mark.parametrize(
    "options",
    [{}, {"operator": "forward", "norm": "l2", "reduction": "sum"}, {"norm": "l2"}],
    ids=["paper", "forward_l2_sum", "sobel_l2"],
)
def test_loss_is_ce_plus_weighted_tv_over_both_streams(options):
    method = build_tv(tv_weight=0.3, **options)
    data = batch()
    out = method.training_step(data, "train", "main")
    assert set(out) == {"loss", "ce", "reg/tv"}
    ce, tv, loss = manual_loss(method, data, 0.3, **options)
    torch.testing.assert_close(out["ce"].detach(), ce)
    torch.testing.assert_close(out["reg/tv"].detach(), tv)
    torch.testing.assert_close(out["loss"].detach(), loss)
    assert out["reg/tv"] > 0


def test_default_weight_is_the_config_default():
    method = build_tv()
    assert len(method.regularizers) == 1 and method.regularizers[0].spec.weight == 0.1
    out = method.training_step(batch(), "train", "main")
    torch.testing.assert_close(out["loss"], out["ce"] + 0.1 * out["reg/tv"])


@pytest.mark.parametrize(
    ("step", "factor"), [(0, math.exp(-5)), (50, math.exp(-5 * 0.25)), (100, 1.0), (1000, 1.0)]
)
def test_ramp_up(step, factor):
    method = build_tv(tv_weight=0.3, ramp_up_steps=100)
    method.global_step = step
    out = method.training_step(batch(), "train", "main")
    assert ramp_weight(0.3, step, 100) == pytest.approx(0.3 * factor)
    torch.testing.assert_close(out["loss"], out["ce"] + 0.3 * factor * out["reg/tv"])


def test_tv_on_unlabeled_false_ignores_the_unlabeled_stream():
    method = build_tv(tv_weight=0.3, tv_on_unlabeled=False)
    assert method.phases()[0].optional_streams == ()
    data, other = batch(unlabeled_seed=1), batch(unlabeled_seed=2)
    out = method.training_step(data, "train", "main")
    _, tv, loss = manual_loss(method, data, 0.3, streams=["labeled"])
    torch.testing.assert_close(out["reg/tv"].detach(), tv)
    torch.testing.assert_close(out["loss"].detach(), loss)
    assert torch.equal(method.training_step(other, "train", "main")["loss"], out["loss"])


def test_tv_on_unlabeled_uses_the_unlabeled_stream_when_present():
    method = build_tv(tv_weight=0.3)
    assert method.phases()[0].optional_streams == ("unlabeled",)
    data, other = batch(unlabeled_seed=1), batch(unlabeled_seed=2)
    assert not torch.equal(
        method.training_step(data, "train", "main")["loss"],
        method.training_step(other, "train", "main")["loss"],
    )
    # without unlabeled data (a split with unlabeled: none) TV is on the labeled images only
    out = method.training_step({"labeled": data["labeled"]}, "train", "main")
    _, tv, _ = manual_loss(method, {"labeled": data["labeled"]}, 0.3)
    torch.testing.assert_close(out["reg/tv"].detach(), tv)


def test_built_in_tv_comes_after_the_user_regularizers():
    method = build_tv(tv_weight=0.3, regularizers=[{"name": "tv", "weight": 2.0, "norm": "l2"}])
    out = method.training_step(batch(), "train", "main")
    # the method's own TV is appended after the user's (whose index is in error messages) and keeps
    # the bare key, as without the user's; the user's TV is logged under its index
    assert set(out) == {"loss", "ce", "reg/tv", "reg/tv0"}
    torch.testing.assert_close(out["loss"], out["ce"] + 2.0 * out["reg/tv0"] + 0.3 * out["reg/tv"])
    alone = build_tv(tv_weight=0.3).training_step(batch(), "train", "main")
    torch.testing.assert_close(out["reg/tv"], alone["reg/tv"])  # the same term under the same key


@pytest.mark.parametrize("tv_weight", [0.0, 0.5])
def test_ignored_pixels_get_gradient_from_tv_only(tv_weight):
    method = build_tv(tv_weight=tv_weight)
    logits = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        logits.append(output)

    method.model.register_forward_hook(keep)
    data = batch()
    method.training_step(data, "train", "main")["loss"].backward()
    labeled_logits, unlabeled_logits = logits  # forward order = batch order
    mask = data["labeled"].mask
    ignored = (mask == IGNORE_INDEX).unsqueeze(1).expand_as(labeled_logits)
    assert ignored.any() and (~ignored).any()
    grad = labeled_logits.grad
    assert (grad[~ignored] != 0).any()  # CE at the labeled pixels
    if tv_weight == 0:
        assert (grad[ignored] == 0).all()
        assert (unlabeled_logits.grad == 0).all()
    else:
        per_pixel = grad.abs().sum(1)[mask == IGNORE_INDEX]
        assert (per_pixel > 0).float().mean() > 0.9  # TV reaches (almost) every unlabeled pixel
        assert (unlabeled_logits.grad.abs().sum(1) > 0).float().mean() > 0.9


# ---------------------------------------------------------------------------------------- end to end
TINY = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 20,
        "shapes_classes": 3,
        "split": {"labeled": 4, "supervision": "sparse", "sparse_pixels": 10, "seed": 0},
    },
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "tv", "tv_weight": 0.5, "ramp_up_steps": 4},
    "train": {
        "epochs": 3,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "progress": False,
        "plots": False,
        "log_every": 1,
    },
}


def test_three_epoch_run_on_sparse_shapes_logs_tv(tmp_path):
    cfg = build_config(copy.deepcopy(TINY), [], source="tiny")
    engine_run.train(cfg, output_dir=tmp_path, final_eval=False)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        assert math.isfinite(s["reg/tv"]) and s["reg/tv"] > 0
        # the engine sets global_step = step − 1 before the step: the ramped weight of that step
        weight = ramp_weight(0.5, s["step"] - 1, 4)
        assert s["loss"] == pytest.approx(s["ce"] + weight * s["reg/tv"], rel=1e-5)
    epochs = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert len(epochs) == 3 and all("train/reg/tv" in e for e in epochs)
    assert (tmp_path / "last.pt").is_file()


def test_the_tv_method_takes_axis_weights_checked_against_the_model():
    """Thick slices: the method's own TV term weighs the depth derivative (``method.axis_weights``),
    and weights that do not fit the model are one config error naming the option."""
    from semiseg.errors import ConfigError

    model = ModelConfig(width=4, depth=2, spatial_dims=3)
    method = build_method(
        {"name": "tv", "axis_weights": [0.2, 1.0, 1.0]}, model, in_channels=1, num_classes=2
    )
    assert method.regularizers[-1].spec.axis_weights == [0.2, 1.0, 1.0]
    with pytest.raises(
        ConfigError, match=r"^method.axis_weights: needs one weight per spatial axis of the 3D"
    ):
        build_method({"name": "tv", "axis_weights": [1.0, 1.0]}, model, in_channels=1, num_classes=2)
