"""Cross pseudo supervision: the cross terms, their gradients, the ramp-up, prediction, end to end."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_methods import K, batch, build

from semiseg.config import build_config, load_yaml
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.run import train
from semiseg.errors import ConfigError
from semiseg.methods.cps import cross_pseudo_supervision

RAW = {
    "data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20, "shapes_classes": 3,
             "split": {"labeled": 4, "seed": 0}},  # the rest unlabeled
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "cps", "ramp_up_steps": 4},
    "train": {"epochs": 3, "batch_size": 4, "iters_per_epoch": 2, "lr": 0.01, "progress": False,
              "plots": False, "log_every": 1},
}  # fmt: skip
AUG = ("train.augment.hflip=true", "train.augment.rotate_degrees=10", "train.scheduler=cosine")


def config(*overrides: str):
    return build_config(copy.deepcopy(RAW), list(overrides), source="test")


def epochs(out: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in (out / "epochs.jsonl").open()
    ]


def same_state(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["method_state"], load_checkpoint(b)["method_state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------- units
def test_the_two_networks_start_differently_and_a_predicts():
    method = build("cps").eval()
    a, b = dict(method.model.named_parameters()), dict(method.model_b.named_parameters())
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(method.predict(x), method.model(x))
    mean = build("cps", predict_mean=True).eval()
    expected = ((mean.model(x).softmax(1) + mean.model_b(x).softmax(1)) / 2).log()
    torch.testing.assert_close(mean.predict(x), expected)
    assert torch.equal(mean.predict(x).argmax(1), expected.exp().argmax(1))


def test_cross_terms_equal_the_formula_and_pseudo_labels_carry_no_gradient():
    method = build("cps").train()
    data = batch()
    out = method.training_step(data, "train", "main")
    unl = data["unlabeled"].image  # the unlabeled batch alone (its own batch statistics)
    logits_a, logits_b = method.model(unl), method.model_b(unl)
    torch.testing.assert_close(out["cps_a"], F.cross_entropy(logits_a, logits_b.argmax(1)))
    torch.testing.assert_close(out["cps_b"], F.cross_entropy(logits_b, logits_a.argmax(1)))
    # A's cross term reaches A only: B's arg-max is a constant target
    method.zero_grad(set_to_none=True)
    out["cps_a"].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in method.model_b.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
    method.zero_grad(set_to_none=True)
    out["cps_b"].backward()
    assert all(p.grad is None or not p.grad.any() for p in method.model.parameters())


def test_cross_pseudo_supervision_function():
    a = torch.randn(2, K, 5, 6, requires_grad=True)
    b = torch.randn(2, K, 5, 6)
    ce_a, ce_b = cross_pseudo_supervision(a, b)
    torch.testing.assert_close(ce_a, F.cross_entropy(a, b.argmax(1)))
    torch.testing.assert_close(ce_b, F.cross_entropy(b, a.argmax(1)))
    with pytest.raises(ValueError, match="differ"):
        cross_pseudo_supervision(a, b[:1])


def test_loss_is_both_supervised_losses_plus_ramped_cross_terms():
    method = build("cps", ramp_up_steps=100, cps_weight=0.3)
    data = batch()
    for step, weight in ((0, 0.3 * math.exp(-5)), (50, 0.3 * math.exp(-5 * 0.25)), (100, 0.3), (500, 0.3)):
        method.phase_step = step
        out = method.training_step(data, "train", "main")
        assert out["cps_weight"] == pytest.approx(weight)
        expected = out["sup_a"] + out["sup_b"] + weight * (out["cps_a"] + out["cps_b"])
        torch.testing.assert_close(out["loss"], expected)
    assert 0.0 <= float(out["agreement"]) <= 1.0


@pytest.mark.parametrize("joint", [False, True])
def test_cross_supervision_on_labeled_images_adds_their_terms(joint):
    data = batch()
    n = len(data["labeled"])
    method = build("cps", cps_on_labeled=True, joint_batch=joint).train()
    out = method.training_step(data, "train", "main")
    lab, unl = data["labeled"].image, data["unlabeled"].image
    if joint:  # one batch of labeled + unlabeled images per network (SSL4MIS)
        images = torch.cat([lab, unl])
        la, lb = method.model(images), method.model_b(images)
    else:  # one forward per stream
        la = torch.cat([method.model(lab), method.model(unl)])
        lb = torch.cat([method.model_b(lab), method.model_b(unl)])
    expected = F.cross_entropy(la[n:], lb[n:].argmax(1)) + F.cross_entropy(la[:n], lb[:n].argmax(1))
    torch.testing.assert_close(out["cps_a"], expected)
    # batch norm makes the two settings differ: the test tells them apart
    other = build("cps", cps_on_labeled=True, joint_batch=not joint).train()
    assert not torch.allclose(other.training_step(data, "train", "main")["cps_a"], out["cps_a"])


def test_sparse_labels_train_both_networks():
    method = build("cps").train()
    out = method.training_step(batch("sparse"), "train", "main")
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    for net in (method.model, method.model_b):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # without the cross terms each network learns from the sparse labels alone: both get gradient
    alone = build("cps", cps_weight=0.0).train()
    out = alone.training_step(batch("sparse"), "train", "main")
    assert out["sup_a"] > 0 and out["sup_b"] > 0
    torch.testing.assert_close(out["loss"], out["sup_a"] + out["sup_b"])
    out["loss"].backward()
    for net in (alone.model, alone.model_b):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("cps_weight", -0.1, "must be >= 0"),
        ("ramp_up_steps", -1, "must be >= 0"),
        ("ramp_shape", "cos", "must be"),
    ],
)
def test_bad_options_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=f"method.{key}' {message}"):
        build("cps", **{key: value})


# ------------------------------------------------------------------------------------ end to end
def test_resume_after_a_crash_in_epoch_3_is_exact(tmp_path, resume_check):
    log = resume_check(config(*AUG), tmp_path)
    straight = tmp_path / "straight"
    assert same_state(straight / "best.pt", tmp_path / "crashed" / "best.pt")
    state = load_checkpoint(straight / "last.pt")["method_state"]
    assert any(k.startswith("model_b.") for k in state)
    assert log[-1]["train/cps_weight"] == pytest.approx(0.1)  # ramp of 4 steps done after 6
    assert all(h["train/cps_a"] > 0 and h["train/cps_b"] > 0 for h in log)


@pytest.mark.parametrize(
    "overrides, logged",
    [
        (("method.regularizers=[{name: tv, weight: 0.1}]",), ("train/reg/tv_a", "train/reg/tv_b")),
        (("data.split.supervision=sparse", "data.split.sparse_pixels=20"), ("train/sup_a", "train/cps_a")),
    ],
)
def test_regularizer_and_sparse_labels_run(tmp_path, overrides, logged):
    results = train(config("train.epochs=1", *overrides), output_dir=tmp_path)
    record = epochs(tmp_path)[-1]
    assert all(math.isfinite(record[k]) for k in logged)
    assert "dice/mean" in results["val"]


def test_recipe_budgets():
    raw = load_yaml("cps-acdc")
    full, quick = build_config(raw), build_config(raw, quick=True)
    assert full.method["name"] == "cps" and full.data.split.unlabeled == "rest"
    assert full.train.epochs * full.train.iters_per_epoch == 30000 and full.train.batch_size == 12
    assert full.method["ramp_up_steps"] == 30000 and full.data.image_size == [256, 256]
    assert quick.train.epochs * quick.train.iters_per_epoch == 1000 and quick.train.batch_size == 8
    assert quick.method["ramp_up_steps"] == 1000 and quick.data.image_size == [128, 128]


def test_examples_run():
    import doctest

    import semiseg.methods.cps as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
