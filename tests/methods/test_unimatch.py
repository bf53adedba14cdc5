"""The ``unimatch`` method: two CutMix-ed strong views with their own boxes, the feature-perturbation
stream on the weak view's encoder features, the paper's loss weights, the pass budget, models
without encode/decode, and tiny runs that resume exactly."""

from __future__ import annotations

import pytest
import torch
from test_fixmatch import (
    Spy,
    check_cutmix,
    check_low_confidence_pixels_get_no_gradient,
    check_recipe,
    check_regularized_run,
    check_strong_gradient_follows_confidence,
    tiny_config,
    with_boxes,
)
from test_methods import MODEL, batch, build

from semiseg.errors import ConfigError
from semiseg.methods import build_method
from semiseg.methods import fixmatch as fixmatch_module  # the pseudo-labels are made in fixmatch.py


def test_phase_asks_for_two_cutmixed_strong_views():
    (phase,) = build("unimatch").phases()
    assert phase.views["unlabeled"].strong == 2 and phase.views["unlabeled"].cutmix
    assert build("unimatch", strong_views=3).phases()[0].views["unlabeled"].strong == 3


@pytest.mark.parametrize("loss", ["ce", "dice"])
def test_low_confidence_pixels_get_no_gradient(loss):
    check_low_confidence_pixels_get_no_gradient(build("unimatch"), loss)


def test_strong_gradient_only_at_confident_pixels(monkeypatch):
    method = build("unimatch").train()
    check_strong_gradient_follows_confidence(method, with_boxes(batch(), 2), monkeypatch, fixmatch_module)


def test_each_strong_view_is_mixed_with_its_own_box(monkeypatch):
    method = build("unimatch").train()
    spy = Spy(method, monkeypatch, fixmatch_module)
    data = with_boxes(batch(), 2)
    assert not torch.equal(data["unlabeled"].cutmix[:, 0], data["unlabeled"].cutmix[:, 1])
    method.training_step(data, "train", "main")
    (strong_inputs,) = spy.inputs  # the model's forward runs once: the strong views
    check_cutmix(spy, data, strong_inputs, k=2)
    # the feature stream is trained towards the unmixed weak pseudo-labels
    _, labels, confidence = spy.weak[0]
    _, fp_labels, fp_confidence = spy.targets[2]
    assert torch.equal(fp_labels, labels) and torch.equal(fp_confidence, confidence)


def test_pass_budget_and_regularizer_input(monkeypatch):
    """Encoder on labeled + weak, one decode of [labeled, weak, perturbed weak], one pass over both
    strong views (which itself encodes and decodes); the regulariser sees the clean weak logits."""
    method = build("unimatch", regularizers=[{"name": "tv", "weight": 0.1}]).train()
    spy = Spy(method, monkeypatch, fixmatch_module)
    model, calls = method.model, {"encode": [], "decode": []}
    for name in calls:
        original = getattr(model, name)

        def counted(x, *args, _original=original, _name=name):
            calls[_name].append(len(x) if torch.is_tensor(x) else len(x[0]))
            return _original(x, *args)

        monkeypatch.setattr(model, name, counted)
    data = with_boxes(batch(), 2)
    out = method.training_step(data, "train", "main")
    n_l, n_u = len(data["labeled"]), len(data["unlabeled"])
    assert calls == {"encode": [n_l + n_u, 2 * n_u], "decode": [n_l + 2 * n_u, 2 * n_u]}
    (logits,) = spy.regularized
    assert logits["unlabeled"].requires_grad and len(logits["unlabeled"]) == n_u
    assert torch.equal(logits["unlabeled"].detach().softmax(1), spy.weak[0][0])
    assert out["reg/tv"] > 0


def test_feature_dropout_perturbs_the_weak_features(monkeypatch):
    """With dropout 0 the perturbed stream equals the clean weak logits; with 0.5 it differs."""
    data = with_boxes(batch(), 2)
    for rate, same in ((0.0, True), (0.5, False)):
        method = build("unimatch", fp_dropout=rate).train()
        spy = Spy(method, monkeypatch, fixmatch_module)
        method.training_step(data, "train", "main")
        fp_logits = spy.targets[2][0]
        assert torch.allclose(fp_logits.detach().softmax(1), spy.weak[0][0], atol=1e-6) == same


def test_loss_is_the_papers_weighted_sum():
    method = build("unimatch").train()
    out = method.training_step(with_boxes(batch("sparse"), 2), "train", "main")
    expected = (out["supervised"] + 0.5 * out["fp"] + 0.25 * out["strong1"] + 0.25 * out["strong2"]) / 2
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["supervised"], 0.5 * out["ce"] + 0.5 * out["dice"])
    cfg = method.cfg
    assert (cfg.threshold, cfg.fp_dropout, cfg.strong_views) == (0.95, 0.5, 2)


def test_without_feature_stream():
    method = build("unimatch", fp_weight=0.0, strong_weight=1.0, strong_views=1).train()
    out = method.training_step(with_boxes(batch(), 1), "train", "main")
    assert "fp" not in out
    torch.testing.assert_close(out["loss"], 0.5 * out["supervised"] + 0.5 * out["strong1"])


def test_model_without_encode_decode_is_a_one_line_error():
    monai = MODEL.__class__(name="monai_unet", width=4, depth=2)
    with pytest.raises(ConfigError, match=r"^model\.name: 'monai_unet' has no encode/decode[^\n]*$"):
        build_method({"name": "unimatch"}, monai, in_channels=1, num_classes=3)
    # without the feature stream any model works
    build_method({"name": "unimatch", "fp_weight": 0.0}, monai, in_channels=1, num_classes=3)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"strong_views": 0}, "'method.strong_views' must be at least 1"),
        ({"fp_dropout": 1.0}, "'method.fp_dropout' must be in"),
        ({"fp_weight": -0.5}, "fp_weight"),
        ({"threshold": -0.1}, "'method.threshold' must be in"),
    ],
)
def test_bad_options_are_one_line_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        build("unimatch", **option)


def test_recipe():
    check_recipe("unimatch")


def test_tiny_run_resumes_exactly(tmp_path, resume_check):
    log = resume_check(tiny_config("unimatch"), tmp_path)
    assert all(0 <= e["train/confident"] <= 1 and "train/fp" in e and "train/strong2" in e for e in log)


@pytest.mark.parametrize("supervision", ["dense", "sparse"])
def test_runs_with_a_regularizer_dense_and_sparse(tmp_path, supervision):
    check_regularized_run("unimatch", supervision, tmp_path)
