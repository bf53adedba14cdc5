"""SSLDEC (Alg. 1): balanced subsets, retraining until the threshold, DEC's stopping rule, targets,
pixel mode, the recipe, and resume-exactness through pretrain → dec → labeled phases."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_methods import build, stream

from semiseg.config import ModelConfig, build_config, load_yaml
from semiseg.core import IGNORE_INDEX, Batch
from semiseg.engine.run import train
from semiseg.errors import ConfigError
from semiseg.losses.dec import target_distribution
from semiseg.methods import build_method
from semiseg.methods.ssldec import FIT, SECOND, accuracy_counts, balanced_subset, round_of

RECIPE = Path(__file__).resolve().parents[2] / "src" / "semiseg" / "configs" / "ssldec-moons.yaml"


def moons_config(*overrides: str):
    """The moons recipe, shortened (100 points, 20 pre-training epochs, 3 rounds)."""
    raw = load_yaml(RECIPE)
    raw.pop("quick", None)
    base = ["data.num_images=100", "method.pretrain_epochs=20", "method.max_rounds=3", "method.max_retrain_epochs=4",
            "train.batch_size=32", "train.progress=false", "train.log_every=1"]  # fmt: skip
    return build_config(raw, base + list(overrides), source="test")


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ pieces
def test_round_names():
    assert round_of("dec12") == ("dec", 12) and round_of("labeled3") == ("labeled", 3)
    assert round_of("pretrain") is None and round_of("decay") is None


def test_balanced_subset_takes_n_min_items_per_predicted_class():
    assign = torch.tensor([0] * 7 + [1] * 3 + [3] * 5)  # class 2 predicted by none
    subset = balanced_subset(assign, np.random.default_rng(1))
    picked = assign[subset]
    assert [int((picked == c).sum()) for c in range(4)] == [3, 3, 0, 3]
    assert subset == sorted(subset) and len(set(subset)) == 9
    assert subset == balanced_subset(assign, np.random.default_rng(1))  # keyed
    assert subset != balanced_subset(assign, np.random.default_rng(2))


def test_accuracy_counts_images_and_pixels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    counts = accuracy_counts(logits, torch.tensor([0, 0, IGNORE_INDEX]), 2)
    assert counts.sum(0).tolist() == [[1.0, 0.0], [2.0, 0.0]]  # correct per class, labeled per class
    pixels = torch.zeros(1, 2, 2, 2)
    pixels[0, 1, 0] = 1.0  # top row predicted 1, bottom row 0
    mask = torch.tensor([[[1, 0], [0, IGNORE_INDEX]]])
    assert accuracy_counts(pixels, mask, 2)[0].tolist() == [[1.0, 1.0], [2.0, 1.0]]


def test_config_checks():
    for bad in ({"max_rounds": -1}, {"change_tol": 1.0}, {"retrain_threshold": 1.5}, {"dec_iters": 0},
                {"pretrain_epochs": 0, "max_rounds": 0}, {"targets": "soft"}, {"pretrain_threshold": 1.5},
                {"max_pretrain_fit_epochs": 0}, {"pretrain_threshold": 0.9, "pretrain_lr": None}):  # fmt: skip
        with pytest.raises(ConfigError):
            build("ssldec", **bad)


def test_phases_alternate_and_share_one_optimizer_state():
    method = build("ssldec", max_rounds=2)
    phases = method.phases()
    assert [p.name for p in phases] == ["pretrain", "dec1", "labeled1", "dec2", "labeled2"]
    pre = phases[0].optimizer_specs[0]
    assert pre.settings.scheduler == "linear" and pre.settings.lr == 1e-3 and pre.settings.end_factor == 0.1
    assert pre.persist is None and not phases[0].final
    for p in phases[1:]:
        spec = p.optimizer_specs[0]
        assert spec.persist == SECOND and spec.settings.lr == 1e-4 and spec.settings.scheduler == "none"
        assert p.final
    assert phases[1].stream_specs[0].name == "unlabeled" and phases[1].epochs == 1
    assert build("ssldec", max_rounds=0).phases()[0].final


def test_pretrain_fit_phase_goes_on_at_the_last_rate_with_the_pretraining_state():
    method = build("ssldec", max_rounds=1, pretrain_threshold=0.9, max_pretrain_fit_epochs=7)
    phases = method.phases()
    assert [p.name for p in phases] == ["pretrain", FIT, "dec1", "labeled1"]
    pre, fit = phases[0].optimizer_specs[0], phases[1].optimizer_specs[0]
    assert pre.persist == fit.persist == FIT and phases[1].epochs == 7
    assert fit.settings.scheduler == "none" and fit.settings.lr == pytest.approx(1e-4)  # 1e-3 · 0.1
    assert not phases[0].final and not phases[1].final
    only = build("ssldec", max_rounds=0, pretrain_threshold=0.9).phases()
    assert [p.name for p in only] == ["pretrain", FIT] and only[0].final and only[1].final
    assert [
        p.name for p in build("ssldec", max_rounds=0, pretrain_epochs=0, pretrain_threshold=0.9).phases()
    ] == [FIT]


def test_pretrain_fit_continues_the_adam_state_of_pretraining(tmp_path, monkeypatch):
    """pretrain_fit's optimizer starts from pre-training's moments and step count, not a fresh state."""
    from semiseg.engine.trainer import Trainer

    seen = {}
    original = Trainer._take_persisted

    def spy(self, phase, opts):
        original(self, phase, opts)
        if phase.name == FIT:
            state = opts["main"].state_dict()["state"]
            seen["steps"] = [float(v["step"]) for v in state.values()]

    monkeypatch.setattr(Trainer, "_take_persisted", spy)
    cfg = moons_config("method.pretrain_epochs=3", "method.pretrain_lr=1e-6", "method.pretrain_threshold=1.0",
                       "method.max_pretrain_fit_epochs=1", "method.max_rounds=0")  # fmt: skip
    train(cfg, output_dir=tmp_path)
    assert seen["steps"] and set(seen["steps"]) == {3.0}  # 3 one-step pre-training epochs


def test_image_mode_dec_step_uses_the_sweep_targets_of_its_items():
    method = build_method({"name": "ssldec"}, ModelConfig(name="mlp", width=8, depth=2, head="clustering"),
                          in_channels=2, num_classes=2)  # fmt: skip
    x = torch.rand(6, 2, 1, 1)
    q = method.model(x).exp().detach()
    method.targets = target_distribution(q)
    b = Batch.of(x[[4, 1]], num_classes=2)
    b.index = torch.tensor([4, 1])
    out = method.dec_loss(method.model(b.image), b)
    p = method.targets[[4, 1]]
    expected = (p * (p.log() - q[[4, 1]].log())).sum(1).mean()
    torch.testing.assert_close(out["kl"], expected)
    method.cfg.targets = "hard"
    hard = method._targets_of(q, None)
    assert torch.equal(hard, torch.nn.functional.one_hot(q.argmax(1), 2).float())


def test_pixel_keep_rates_balance_the_classes_and_are_keyed():
    method = build("ssldec")
    method.keep_rate.copy_(torch.tensor([0.1, 0.5, 1.0]))
    b = stream("none", b=2, hw=(64, 64))
    predicted = torch.arange(3).repeat_interleave(64 * 64 * 2 // 3 + 1)[: 2 * 64 * 64].view(2, 64, 64)
    keep = method._pixel_keep(predicted, b)
    assert torch.equal(keep, method._pixel_keep(predicted, b))  # a function of the batch's keys
    for c, rate in enumerate([0.1, 0.5, 1.0]):
        share = float(keep[predicted == c].mean())
        assert abs(share - rate) < 0.03, (c, share)
    other = Batch.of(b.image, num_classes=3)
    other.key = b.key + 1
    assert not torch.equal(keep, method._pixel_keep(predicted, other))


def test_pixel_dec_step_follows_the_frozen_teacher():
    method = build("ssldec")
    unl = stream("none", b=2)
    method.frequency.fill_(1.0)  # as after a refresh
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.add_(0.5)
    a = method.dec_loss(method.model(unl.image), unl)["kl"]
    method.teacher.load_state_dict(method.model.state_dict())
    b = method.dec_loss(method.model(unl.image), unl)["kl"]
    assert not torch.allclose(a, b)
    assert method.teacher.training  # its mode is restored after the eval-mode forward


# ------------------------------------------------------------------------------------- through the engine
def test_moons_run_alternates_retrains_to_the_threshold_and_balances(tmp_path):
    cfg = moons_config("method.pretrain_epochs=60", "method.pretrain_lr=0.03")
    results = train(cfg, output_dir=tmp_path)
    assert results["labeled"] == 8 and results["unlabeled"] == 100
    log = log_of(tmp_path)
    phases = [r["phase"] for r in log]
    assert phases[:60] == ["pretrain"] * 60 and "dec1" in phases and "labeled3" in phases
    dec = [r for r in log if r["phase"].startswith("dec") and "ended" not in r]
    for r in dec:  # P' holds as many items of each predicted class: an even count for 2 classes
        assert r["train/subset"] % 2 == 0 and 2 <= r["train/subset"] <= 100
        assert r["train/predicted_classes"] == 2.0
    # a labeled phase runs while the training accuracy is below 100 % and ends when it is reached
    for r in log:
        if r["phase"].startswith("labeled") and "ended" not in r:
            assert r["train/train_accuracy"] < 1.0
    ended = [r for r in log if r.get("ended") == "plan" and r["phase"].startswith("labeled")]
    assert ended  # some retraining phase reached 100 % and ended before its cap of 4 epochs
    assert "val" not in results and set(results["test"]) == {"accuracy", "error"}  # no validation labels


def test_unreachable_threshold_retrains_up_to_the_cap(tmp_path):
    cfg = moons_config("method.max_rounds=1", "method.retrain_threshold=1.0", "method.pretrain_epochs=1",
                       "method.pretrain_lr=1e-6", "method.lr=1e-6")  # fmt: skip
    train(cfg, output_dir=tmp_path)
    labeled = [r for r in log_of(tmp_path) if r["phase"] == "labeled1"]
    assert len(labeled) == 4 and all("ended" not in r for r in labeled)


def test_pretrain_fit_trains_until_the_labeled_items_are_fitted(tmp_path):
    """Too short a pre-training (1 epoch) leaves the 8 points unfitted; pretrain_fit
    trains on until all are, then the rounds start; a threshold already met trains no fit epoch."""
    cfg = moons_config("method.pretrain_epochs=1", "method.pretrain_lr=0.3", "method.pretrain_end_factor=0.1",
                       "method.pretrain_threshold=1.0", "method.max_pretrain_fit_epochs=200",
                       "method.max_rounds=1")  # fmt: skip
    train(cfg, output_dir=tmp_path / "a")
    log = log_of(tmp_path / "a")
    fit = [r for r in log if r["phase"] == FIT]
    trained = [r for r in fit if "ended" not in r]
    assert 1 <= len(trained) < 200 and all(r["train/train_accuracy"] < 1.0 for r in trained)
    assert fit[-1].get("ended") == "plan"  # reached 100 % before the cap
    assert [r["phase"] for r in log].index("dec1") > [r["phase"] for r in log].index(FIT)
    met = moons_config("method.pretrain_epochs=1", "method.pretrain_threshold=0.0", "method.max_rounds=0")
    train(met, output_dir=tmp_path / "b")
    assert [r.get("ended") for r in log_of(tmp_path / "b") if r["phase"] == FIT] == ["plan"]


def test_resume_is_exact_inside_pretrain_fit(tmp_path, resume_check):
    """Crashes at pretrain_fit's first epoch (the hand-over of pre-training's Adam state is read
    from the checkpoint) and at its second (its own state)."""
    cfg = moons_config("method.pretrain_epochs=1", "method.pretrain_lr=0.3", "method.pretrain_threshold=1.0",
                       "method.max_pretrain_fit_epochs=200", "method.max_rounds=1")  # fmt: skip
    for epoch in (0, 1):
        log = resume_check(
            cfg,
            tmp_path / str(epoch),
            crash_at=lambda trainer, phase, epoch=epoch: phase.name == FIT and trainer.epoch == epoch,
        )
    assert sum(r["phase"] == FIT and "ended" not in r for r in log) >= 2, "the crash points must be reached"


def test_change_tol_ends_the_rounds_and_skips_the_rest(tmp_path):
    cfg = moons_config("method.change_tol=0.999", "method.max_rounds=4")
    train(cfg, output_dir=tmp_path)
    log = log_of(tmp_path)
    trained = {r["phase"] for r in log if "ended" not in r}
    assert "dec1" in trained and "dec2" not in trained  # round 2's refresh: < 99.9 % changed
    ended = [r["phase"] for r in log if r.get("ended") == "plan"]
    assert {"dec2", "labeled2", "dec3", "labeled3", "dec4", "labeled4"} <= set(ended)


def test_max_rounds_zero_is_the_pretraining_of_a_full_run(tmp_path):
    short = train(moons_config("method.max_rounds=0"), output_dir=tmp_path / "a")
    train(moons_config("method.max_rounds=1"), output_dir=tmp_path / "b")
    full_log = [r for r in log_of(tmp_path / "b") if r["phase"] == "pretrain"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in log_of(tmp_path / "a")] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in full_log
    ]
    assert "test" in short


def test_targets_none_retrains_the_labeled_items_in_every_round_and_never_trains_on_unlabeled(tmp_path):
    """The equal-budget control: SSLDEC's rounds without their unlabeled epochs (no sweep), so the
    labeled retraining of every round runs, at the rounds' rate and caps."""
    cfg = moons_config("method.targets=none", "method.retrain_threshold=1.0", "method.lr=1e-6")
    train(cfg, output_dir=tmp_path)
    log = log_of(tmp_path)
    trained = [r["phase"] for r in log if "ended" not in r]
    assert not any(p.startswith("dec") for p in trained)
    assert [r["phase"] for r in log if r.get("ended") == "plan"] == ["dec1", "dec2", "dec3"]
    for r in (1, 2, 3):  # lr 1e-6 never fits the 8 points: each retraining runs to its cap of 4
        assert trained.count(f"labeled{r}") == 4
    assert all("train/subset" not in r for r in log)


def test_resume_is_exact_through_the_rounds(tmp_path, resume_check):
    cfg = moons_config("method.max_rounds=3", "method.change_tol=null")
    log = resume_check(
        cfg, tmp_path, crash_at=lambda trainer, phase: phase.name == "labeled2" and trainer.epoch == 1
    )
    assert any(r["phase"] == "labeled2" and "ended" not in r for r in log), "the crash point must be reached"


def test_resume_is_exact_across_a_refresh_and_the_stopping_rule(tmp_path, resume_check):
    # crash at the start of dec3's epoch: its refresh compares with previous_assign from the checkpoint
    # (resized on load) and DEC's rule stops the run there or later, in both runs alike
    cfg = moons_config("method.max_rounds=6", "method.change_tol=0.005")  # stops at dec4 (0 changes)
    log = resume_check(cfg, tmp_path / "a", crash_at=lambda trainer, phase: phase.name == "dec3")
    assert any(r["phase"] == "dec3" for r in log), "the crash point must be reached"
    assert [r["phase"] for r in log if r.get("ended") == "plan" and r["phase"].startswith("dec")] == [
        "dec4",
        "dec5",
        "dec6",
    ]


def test_refresh_targets_are_eq_2_over_the_whole_sweep_and_the_subset_is_balanced():
    method = build_method({"name": "ssldec", "change_tol": 0.5}, ModelConfig(name="mlp", width=8, depth=2,
                          head="clustering"), in_channels=2, num_classes=2).eval()  # fmt: skip
    x = torch.randn(50, 2, 1, 1)

    def sweep(stream, fn, batch_size=None):  # the engine's contract: fn over every item, in order
        assert stream == "unlabeled"
        parts = []
        for i in range(0, 50, 16):
            b = Batch.of(x[i : i + 16], num_classes=2)
            b.index = torch.arange(i, min(i + 16, 50))
            parts.append(fn(b))
        return torch.cat(parts)

    plan = method.plan_epoch("dec1", 0, sweep)
    with torch.no_grad():
        q = method.model(x).exp()
    torch.testing.assert_close(method.frequency, q.sum(0))  # f over every item swept
    torch.testing.assert_close(method.targets, target_distribution(q, q.sum(0)))
    assign = q.argmax(1)
    picked = assign[plan.subsets["unlabeled"]]
    n_min = min(int((assign == c).sum()) for c in assign.unique())
    assert [int((picked == c).sum()) for c in assign.unique()] == [n_min] * len(assign.unique())
    assert method.round_stats["subset"] == len(picked)
    assert torch.equal(method.previous_assign, assign)
    again = method.plan_epoch("dec2", 0, sweep)  # nothing changed: fewer than 50 % moved, the rounds end
    assert again.done and bool(method.stopped)
    assert method.plan_epoch("labeled2", 0, sweep).done  # and every later phase is skipped


SHAPES = {
    "data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20, "shapes_classes": 3,
             "split": {"labeled": 4, "unlabeled": "all"}},
    "model": {"name": "unet", "width": 4, "depth": 2, "head": "clustering"},
    "method": {"name": "ssldec"},
    "train": {"batch_size": 4, "iters_per_epoch": 2, "progress": False, "plots": False, "log_every": 1},
}  # fmt: skip


def test_pixel_mode_on_segmentation_data(tmp_path):
    cfg = build_config(copy.deepcopy(SHAPES), [ "method.pretrain_epochs=2", "method.max_rounds=2", "method.dec_iters=2",
                      "method.max_retrain_epochs=2", "method.retrain_metric=balanced_accuracy",
                      "method.retrain_threshold=0.99", "method.epoch_iters=run"], source="test")  # fmt: skip
    results = train(cfg, output_dir=tmp_path)
    log = log_of(tmp_path)
    dec = [r for r in log if r["phase"] == "dec1"]
    assert len(dec) == 1 and 0 < dec[0]["train/kept"] <= 1
    assert dec[0]["step"] == 2 * 2 + 2  # dec_iters steps after 2 pre-training epochs of 2 iterations
    assert "dice/mean" in results["test"]
    with pytest.raises(ConfigError, match="method.change_tol"):  # pixel mode keeps no per-pixel classes
        overrides = ["method.pretrain_epochs=1", "method.max_rounds=1", "method.change_tol=0.01"]
        train(build_config(copy.deepcopy(SHAPES), overrides, source="test"), output_dir=tmp_path / "b")


def test_recipe_builds():
    cfg = build_config(load_yaml(RECIPE), [], source="recipe")
    assert cfg.method["name"] == "ssldec" and cfg.model.head == "clustering" and cfg.model.init == "glorot"
    raw = copy.deepcopy(load_yaml(RECIPE))
    assert raw["data"]["split"]["unlabeled"] == "all"  # Alg. 1 predicts on L and U
