"""The ``bcp`` method: box masks, bidirectional copy-paste of images and targets (pre-training and
self-training), the alpha weighting of unlabeled-origin pixels, pseudo-labels, the EMA teacher,
gradients to the student only, regularisers on the unmixed images, and tiny runs that resume
exactly (with a regulariser, with sparse labels)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_mean_teacher import PLAIN, build, epochs, perturb_student, tiny_config, train
from test_methods import K, batch

from semiseg.config import ModelConfig
from semiseg.core import IGNORE_INDEX, Batch
from semiseg.errors import ConfigError
from semiseg.methods import bcp as bcp_module
from semiseg.methods.bcp import BOX_SALT, bidirectional_copy_paste, box_masks, largest_components

BATCH_NORM = ModelConfig(width=4, depth=2, norm="batch")


def build_bcp(model: ModelConfig = PLAIN, **options):
    return build("bcp", model=model, **options)


def keyed(b: Batch, stream_seed: int) -> Batch:
    """``b`` with distinct per-sample keys (so per-sample draws differ between samples)."""
    n = len(b)
    key = torch.stack([torch.full((n,), stream_seed), torch.zeros(n, dtype=torch.long), torch.arange(n)], 1)
    return dataclasses.replace(b, key=key)


def data(labeled_kind: str = "dense", n_unlabeled: int = 3) -> dict[str, Batch]:
    d = batch(labeled_kind)
    unl = d["unlabeled"]
    unl = Batch.of(unl.image[:n_unlabeled], num_classes=K)
    return {"labeled": keyed(d["labeled"], 11), "unlabeled": keyed(unl, 12)}


class Spy:
    """Records the student's inputs and the (target, region, weight) of every region loss."""

    def __init__(self, method, monkeypatch):
        self.inputs, self.losses = [], []
        method.model.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach()))
        original = bcp_module.BCP.region_loss

        def region_loss(this, logits, target, region, weight):
            self.losses.append((target, region, weight))
            return original(this, logits, target, region, weight)

        monkeypatch.setattr(bcp_module.BCP, "region_loss", region_loss)


# ------------------------------------------------------------------------------------------ boxes
def test_box_masks_have_the_ratio_side_and_a_per_sample_position():
    rngs = [np.random.default_rng(i) for i in range(6)]
    boxes = box_masks(6, (32, 30), 2 / 3, rngs)
    assert boxes.shape == (6, 32, 30) and boxes.dtype == torch.bool
    for b in boxes:
        rows, cols = b.any(1).nonzero()[:, 0], b.any(0).nonzero()[:, 0]
        assert len(rows) == 21 and len(cols) == 20  # int(2/3 · 32), int(2/3 · 30)
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        assert b.sum() == 21 * 20  # one solid box
    assert len({tuple(b.nonzero()[0].tolist()) for b in boxes}) > 1  # positions differ
    again = box_masks(6, (32, 30), 2 / 3, [np.random.default_rng(i) for i in range(6)])
    assert torch.equal(boxes, again)
    centred = box_masks(2, (32, 30), 0.5)
    assert torch.equal(centred[0], centred[1])
    assert centred[0].nonzero().min(0).values.tolist() == [8, 7]  # (32 - 16) // 2, (30 - 15) // 2
    assert centred[0].nonzero().max(0).values.tolist() == [23, 21]


def test_largest_components_keep_each_classs_largest_blob():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 0:3, 0:3] = 1  # 9 pixels
    labels[0, 5:7, 5:7] = 1  # 4 pixels: dropped
    labels[0, 3, 3] = 1  # touches the big blob diagonally only: kept (full connectivity)
    labels[0, 0, 6:8] = 2  # the only class-2 blob: kept
    labels[1] = 2
    out = largest_components(labels, 3)
    expected = labels.clone()
    expected[0, 5:7, 5:7] = 0
    assert torch.equal(out, expected)


# ------------------------------------------------------------------------------------------ copy-paste
def test_bidirectional_copy_paste_moves_exactly_the_box():
    g = torch.Generator().manual_seed(0)
    a, u = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g) + 2
    ya, yu = torch.ones(2, 16, 16, dtype=torch.long), torch.full((2, 16, 16), 2)
    box = box_masks(2, (16, 16), 0.5, [np.random.default_rng(i) for i in range(2)])
    x_in, y_in, x_out, y_out = bidirectional_copy_paste(a, ya, u, yu, box)
    inside = box[:, None]
    assert torch.equal(x_in, torch.where(inside, a, u)) and torch.equal(x_out, torch.where(inside, u, a))
    assert torch.equal(y_in, torch.where(box, ya, yu)) and torch.equal(y_out, torch.where(box, yu, ya))
    # the labeled pixels of x_in are exactly the box
    assert torch.equal(x_in[:, 0] < 2, box) and torch.equal(y_in == 1, box)
    assert torch.equal(x_out[:, 0] >= 2, box) and torch.equal(y_out == 2, box)


@pytest.mark.parametrize("placement", ["random", "center"])
def test_selftrain_pastes_the_box_in_images_and_targets_alike(monkeypatch, placement):
    method = build_bcp(box_placement=placement, alpha=0.25)
    spy = Spy(method, monkeypatch)
    d = data("sparse", n_unlabeled=2)
    lab, unl = d["labeled"], d["unlabeled"]
    pseudo = torch.randint(0, K, (2, 32, 32), generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(method, "teacher_labels", lambda images, valid=None: pseudo)
    method.training_step(d, "selftrain", "main")
    expected_box = box_masks(2, (32, 32), 2 / 3, unl.generators(BOX_SALT) if placement == "random" else None)
    x_in, x_out = spy.inputs
    (y_in, box_in, w_in), (y_out, box_out, w_out) = spy.losses
    assert torch.equal(box_in, expected_box) and torch.equal(box_out, ~expected_box)
    assert (w_in, w_out) == (0.25, 0.25)  # alpha on the unlabeled-origin pixels
    inside = expected_box[:, None]
    assert torch.equal(x_in, torch.where(inside, lab.image, unl.image))
    assert torch.equal(x_out, torch.where(inside, unl.image, lab.image))
    assert torch.equal(y_in, torch.where(expected_box, lab.mask, pseudo))  # sparse: IGNORE stays
    assert torch.equal(y_out, torch.where(expected_box, pseudo, lab.mask))
    assert (y_in == IGNORE_INDEX).any() and not (y_in[~expected_box] == IGNORE_INDEX).any()
    if placement == "random":
        assert not torch.equal(expected_box[0], expected_box[1])  # per-sample positions


def test_pretrain_pastes_the_box_of_the_neighbour_image(monkeypatch):
    method = build_bcp()
    spy = Spy(method, monkeypatch)
    d = data()
    lab = d["labeled"]
    method.training_step({"labeled": lab}, "pretrain", "main")
    (x,) = spy.inputs
    ((y, box, weight),) = spy.losses
    assert torch.equal(box, box_masks(2, (32, 32), 2 / 3, lab.generators(BOX_SALT)))
    assert weight == 1.0  # both regions are labeled
    inside = box[:, None]
    partner = torch.tensor([1, 0])
    assert torch.equal(x, torch.where(inside, lab.image[partner], lab.image))
    assert torch.equal(y, torch.where(box, lab.mask[partner], lab.mask))


# ------------------------------------------------------------------------------------------ the loss
def test_region_loss_weights_the_other_pixels(monkeypatch):
    method = build_bcp(dice_weight=0.5, ce_weight=0.5)
    logits = torch.randn(2, K, 16, 16, requires_grad=True)
    target = torch.randint(0, K, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    region = box_masks(2, (16, 16), 0.5)
    out = method.region_loss(logits, target, region, 0.3)
    inside = method.supervised_loss(logits, target.masked_fill(~region, IGNORE_INDEX))
    outside = method.supervised_loss(logits, target.masked_fill(region, IGNORE_INDEX))
    for k in ("loss", "ce", "dice"):
        torch.testing.assert_close(out[k], inside[k] + 0.3 * outside[k])
    # alpha = 0: pixels outside the region get no gradient
    method.region_loss(logits, target, region, 0.0)["loss"].backward()
    grad = logits.grad.abs().sum(1)
    assert (grad[region] > 0).all() and (grad[~region] == 0).all()


def test_with_alpha_zero_pseudo_labels_do_not_matter(monkeypatch):
    method = build_bcp(alpha=0.0)
    d = data()
    losses = []
    for seed in (0, 1):
        pseudo = torch.randint(0, K, (3, 32, 32), generator=torch.Generator().manual_seed(seed))
        monkeypatch.setattr(method, "teacher_labels", lambda images, valid=None, p=pseudo: p)
        losses.append(method.training_step(d, "selftrain", "main")["loss"])
    torch.testing.assert_close(losses[0], losses[1])


def test_selftrain_loss_adds_both_mixed_images():
    method = build_bcp()
    out = method.training_step(data(), "selftrain", "main")
    torch.testing.assert_close(out["loss"].detach(), out["loss_in"] + out["loss_out"])
    torch.testing.assert_close(out["loss"], 0.5 * out["ce"] + 0.5 * out["dice"])


def test_pseudo_labels_are_the_teachers_argmax_reduced_to_components():
    method = build_bcp(largest_component=False)
    images = data()["unlabeled"].image
    assert torch.equal(method.teacher_labels(images), method.teacher(images).argmax(1))
    method = build_bcp()
    labels = method.teacher(images).argmax(1)
    assert torch.equal(method.teacher_labels(images), largest_components(labels, K))


def test_padding_is_background_for_the_components_then_ignored(monkeypatch):
    """3D patch padding (``valid`` False): a teacher's foreground there neither wins the largest
    component over the image's foreground nor becomes a pseudo-label."""
    method = build_bcp()
    labels = torch.zeros(1, 1, 8, dtype=torch.long)
    labels[0, 0, 1:3] = 1  # the image's blob: 2 pixels
    labels[0, 0, 4:8] = 1  # a bigger blob on the padding
    valid = torch.zeros(1, 1, 8, dtype=torch.bool)
    valid[0, 0, :4] = True
    logits = torch.nn.functional.one_hot(labels, K).movedim(-1, 1).float()
    monkeypatch.setattr(method.teacher, "forward", lambda images: logits)
    out = method.teacher_labels(torch.zeros(1, 1, 1, 8), valid)
    assert out.tolist() == [[[0, 1, 1, 0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]]
    assert method.teacher_labels(torch.zeros(1, 1, 1, 8)).tolist() == [[[0, 0, 0, 0, 1, 1, 1, 1]]]


# ------------------------------------------------------------------------------------------ phases, teacher
def test_phases():
    pretrain, selftrain = build_bcp(pretrain_epochs=4).phases()
    assert (pretrain.name, pretrain.epochs, pretrain.streams) == ("pretrain", 4, ("labeled",))
    assert pretrain.validate and pretrain.restore_best and not pretrain.final
    assert selftrain.name == "selftrain" and selftrain.streams == ("labeled", "unlabeled")
    assert selftrain.epochs is None and selftrain.final and not selftrain.views
    (only,) = build_bcp(pretrain_epochs=0).phases()
    assert only.name == "selftrain"
    pretrain, _ = build_bcp(regularizers=[{"name": "tv", "weight": 0.1}]).phases()
    assert pretrain.optional_streams == ("unlabeled",)


def test_teacher_starts_as_the_pretrained_student_and_follows_with_the_ema():
    method = build_bcp(model=BATCH_NORM)
    method.training_step(data(), "selftrain", "main")  # batch-norm statistics move
    perturb_student(method)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    method.on_step_end("pretrain", "main")  # no teacher in pre-training
    assert all(torch.equal(v, before[k]) for k, v in method.teacher.state_dict().items())
    method.phase_step = 0  # no warm-up: the decay is 0.99 from the first step (BCP's code)
    method.on_step_end("selftrain", "main")
    student, params = method.model.state_dict(), {n for n, _ in method.teacher.named_parameters()}
    for k, v in method.teacher.state_dict().items():
        if k in params:
            torch.testing.assert_close(v, 0.99 * before[k] + 0.01 * student[k])
        else:
            assert torch.equal(v, student[k])
    method.on_phase_start("selftrain")
    assert all(torch.equal(v, student[k]) for k, v in method.teacher.state_dict().items())


@pytest.mark.parametrize("phase", ["pretrain", "selftrain"])
def test_one_step_gives_gradients_to_the_student_only(phase):
    method = build_bcp(model=BATCH_NORM)
    perturb_student(method)
    d = data()
    out = method.training_step(d if phase == "selftrain" else {"labeled": d["labeled"]}, phase, "main")
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())


@pytest.mark.parametrize("phase", ["pretrain", "selftrain"])
def test_regularizers_see_the_student_on_the_unmixed_images(phase):
    method = build_bcp(regularizers=[{"name": "tv", "weight": 0.3}])
    d = data()
    out = method.training_step(d, phase, "main")
    with torch.no_grad():
        logits = {s: method.model(d[s].image) for s in ("labeled", "unlabeled")}
        expected = method.regularizers[0](logits, d)
    torch.testing.assert_close(out["reg/tv"].detach(), expected)
    torch.testing.assert_close(out["loss"], 0.5 * out["ce"] + 0.5 * out["dice"] + 0.3 * out["reg/tv"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"box_ratio": 0.0}, r"'method\.box_ratio' must be in \(0, 1\]"),
        ({"box_placement": "corner"}, r"method\.box_placement"),
        ({"alpha": -0.5}, r"'method\.alpha' must be a finite number >= 0"),
        ({"ema_decay": 2.0}, r"'method\.ema_decay' must be in \[0, 1\]"),
        ({"pretrain_epochs": -1}, r"'method\.pretrain_epochs' must be >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        build_bcp(**option)


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("pretrain_epochs", [2, 3])  # crash in self-training / in pre-training
def test_tiny_run_resumes_exactly(tmp_path, resume_check, pretrain_epochs):
    cfg = tiny_config({"name": "bcp", "pretrain_epochs": pretrain_epochs})
    log = resume_check(cfg, tmp_path)
    assert [e["phase"] for e in log] == ["pretrain"] * pretrain_epochs + ["selftrain"] * 3
    assert (tmp_path / "straight" / "best_pretrain.pt").is_file()
    assert all(math.isfinite(e["train/loss_in"]) for e in log if e["phase"] == "selftrain")


@pytest.mark.parametrize("supervision", ["dense", "sparse"])
def test_runs_with_a_regularizer_dense_and_sparse(tmp_path, supervision):
    method = {"name": "bcp", "pretrain_epochs": 1, "regularizers": [{"name": "tv", "weight": 0.1}]}
    train(tiny_config(method, f"data.split.supervision={supervision}", "train.epochs=2"), tmp_path)
    log = epochs(tmp_path)
    assert [e["phase"] for e in log] == ["pretrain", "selftrain", "selftrain"]
    assert all(math.isfinite(e["train/reg/tv"]) and e["train/reg/tv"] > 0 for e in log)
    assert all(math.isfinite(e["train/loss"]) for e in log)
