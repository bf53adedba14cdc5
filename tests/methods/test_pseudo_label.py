"""Self-training in rounds: phases, the frozen teacher, the confidence mask, re-initialisation, resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from test_methods import batch, build

from semiseg.config import build_config, load_yaml
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.run import train
from semiseg.engine.trainer import Trainer
from semiseg.errors import ConfigError
from semiseg.methods.pseudo_label import PseudoLabel, round_index, teacher_pseudo_labels

RAW = {
    "data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20, "shapes_classes": 3,
             "split": {"labeled": 4, "seed": 0}},  # the rest unlabeled
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "pseudo_label", "threshold": 0.5},
    "train": {"epochs": 2, "batch_size": 4, "iters_per_epoch": 2, "lr": 0.01, "progress": False,
              "plots": False, "log_every": 1},
}  # fmt: skip
AUG = ("train.augment.hflip=true", "train.augment.rotate_degrees=10", "train.scheduler=cosine")


def config(*overrides: str):
    return build_config(copy.deepcopy(RAW), list(overrides), source="test")


def epochs(out: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in (out / "epochs.jsonl").open()
    ]


def state(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    s = load_checkpoint(path)["method_state"]
    return {k[len(prefix) :]: v for k, v in s.items() if k.startswith(prefix)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------- units
@pytest.mark.parametrize(
    "options, names",
    [
        ({}, ["supervised", "round1", "round2"]),
        ({"rounds": 0}, ["supervised"]),
        ({"rounds": 3, "supervised_epochs": 0}, ["round1", "round2", "round3"]),
    ],
)
def test_phases(options, names):
    phases = build("pseudo_label", **options).phases()
    assert [p.name for p in phases] == names
    assert all(p.validate for p in phases)
    assert [p.final for p in phases] == [False] * (len(names) - 1) + [True]
    # every phase but the last hands its best state on; the last leaves the model as training did,
    # so that train.eval_last scores the last state (best.pt holds the best)
    assert [p.restore_best for p in phases] == [True] * (len(names) - 1) + [False]
    assert all(p.streams == ("labeled", "unlabeled") for p in phases if p.name.startswith("round"))
    assert [round_index(p.name) for p in phases] == [None if p.name == "supervised" else int(p.name[5:])
                                                     for p in phases]  # fmt: skip


def test_epochs_per_phase():
    phases = build("pseudo_label", supervised_epochs=5, round_epochs=3).phases()
    assert [p.epochs for p in phases] == [5, 3, 3]
    assert [p.epochs for p in build("pseudo_label").phases()] == [None] * 3  # train.epochs


@pytest.mark.parametrize(
    "options, key",
    [
        ({"rounds": -1}, "rounds"),
        ({"threshold": 1.5}, "threshold"),
        ({"pseudo_weight": -1.0}, "pseudo_weight"),
        ({"round_epochs": 0}, "round_epochs"),
        ({"supervised_epochs": 0, "rounds": 0}, "supervised_epochs"),
    ],
)
def test_bad_options_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=f"method.{key}'"):
        build("pseudo_label", **options)


def test_round_start_copies_the_current_segmenter_into_a_frozen_teacher():
    method = build("pseudo_label")
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.5)
    method.on_phase_start("supervised")
    assert not same(method.teacher.state_dict(), method.model.state_dict())
    method.on_phase_start("round1")
    assert same(method.teacher.state_dict(), method.model.state_dict())
    assert not any(p.requires_grad for p in method.teacher.parameters())
    # one round step: gradients to the student only, the teacher labels in eval mode and stays as is
    method.train()
    before = copy.deepcopy(method.teacher.state_dict())
    out = method.training_step(batch(), "round1", "main")
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.model.parameters())
    assert same(method.teacher.state_dict(), before)  # no batch-norm statistics updated either
    assert method.teacher.training  # mode restored
    assert set(out) >= {"loss", "ce", "pseudo_ce", "confident_ratio"}


def test_teacher_pseudo_labels_are_its_eval_mode_argmax():
    method = build("pseudo_label")
    method.on_phase_start("round1")
    x = batch()["unlabeled"].image
    method.teacher.train()
    labels, confidence = teacher_pseudo_labels(method.teacher, x)
    method.teacher.eval()
    probs = method.teacher(x).softmax(1)
    assert torch.equal(labels, probs.argmax(1))
    torch.testing.assert_close(confidence, probs.max(1).values)
    assert not confidence.requires_grad


def test_pixels_below_the_threshold_get_zero_gradient():
    method = build("pseudo_label", ce_weight=0.0, pseudo_weight=2.0)
    method.on_phase_start("round1")
    data = batch()
    unlabeled = data["unlabeled"].image
    _, confidence = teacher_pseudo_labels(method.teacher, unlabeled)
    method.cfg.threshold = float(confidence.median())  # about half the pixels on each side
    captured = []

    def keep_unlabeled_logits(module, inputs, output):
        if inputs[0] is unlabeled:
            output.retain_grad()
            captured.append(output)

    method.train()
    handle = method.model.register_forward_hook(keep_unlabeled_logits)
    out = method.training_step(data, "round1", "main")
    handle.remove()
    out["loss"].backward()
    (logits,) = captured
    per_pixel = logits.grad.abs().sum(1)
    low = confidence < method.cfg.threshold
    assert low.any() and (~low).any()
    assert torch.equal(per_pixel[low], torch.zeros_like(per_pixel[low]))
    assert (per_pixel[~low] > 0).all()
    assert float(out["confident_ratio"]) == pytest.approx(float((~low).float().mean()))


def test_reinit_each_round_is_deterministic_and_leaves_the_global_rng_alone():
    a, b = build("pseudo_label", reinit_each_round=True), build("pseudo_label", reinit_each_round=True)
    trained = copy.deepcopy(a.model.state_dict())
    rng = torch.get_rng_state()
    a.on_phase_start("round1")
    assert torch.equal(torch.get_rng_state(), rng)
    assert same(a.teacher.state_dict(), trained)  # the teacher is the model before the reset
    assert not same(a.model.state_dict(), trained)
    b.on_phase_start("round1")
    assert same(a.model.state_dict(), b.model.state_dict())
    round1 = copy.deepcopy(a.model.state_dict())
    a.on_phase_start("round2")
    assert not same(a.model.state_dict(), round1)
    other_seed = build("pseudo_label", seed=1, reinit_each_round=True)
    other_seed.on_phase_start("round1")
    assert not same(other_seed.model.state_dict(), round1)


def test_reinit_leaves_the_gpu_generators_alone(monkeypatch):
    """The fresh student is built on the CPU from the CPU generator: reseeding the GPUs' generators
    (which ``fork_rng(devices=[])`` does not restore) would move a GPU run's dropout streams."""
    method = build("pseudo_label", reinit_each_round=True)
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    method.on_phase_start("round1")
    assert reseeded == []


def test_no_teacher_without_rounds():
    method = build("pseudo_label", rounds=0)
    assert not hasattr(method, "teacher") and "reinit_seed" not in method.state_dict()


# ------------------------------------------------------------------------------------ end to end
def test_the_teacher_of_each_round_is_the_previous_phases_best_model(tmp_path, monkeypatch):
    """Validation is rigged so that the first epoch of every phase is its best: the teacher must be
    that state (best_<phase>.pt), not the state at the end of the phase."""
    scores = iter(range(1000, 0, -1))
    monkeypatch.setattr(Trainer, "validate", lambda self, phase=None: {"dice/mean": next(scores) / 1000})
    teachers, phase_ends = {}, {}
    start, epoch_end = PseudoLabel.on_phase_start, PseudoLabel.on_epoch_end

    def record_start(self, phase):
        start(self, phase)
        if phase.startswith("round"):
            teachers[phase] = copy.deepcopy(self.teacher.state_dict())

    def record_end(self, phase, epoch):
        epoch_end(self, phase, epoch)
        phase_ends[phase] = copy.deepcopy(self.model.state_dict())

    monkeypatch.setattr(PseudoLabel, "on_phase_start", record_start)
    monkeypatch.setattr(PseudoLabel, "on_epoch_end", record_end)
    train(config("train.epochs=3"), output_dir=tmp_path, final_eval=False)
    for previous, current in (("supervised", "round1"), ("round1", "round2")):
        best = load_checkpoint(tmp_path / f"best_{previous}.pt")
        assert best["best"]["epoch"] == 1
        assert same(teachers[current], state(tmp_path / f"best_{previous}.pt", "model."))
        assert not same(teachers[current], phase_ends[previous])
    assert load_checkpoint(tmp_path / "best.pt")["best"]["phase"] == "round2"  # the last round alone is final
    assert same(state(tmp_path / "last.pt", "teacher."), teachers["round2"])  # frozen during the round
    log = epochs(tmp_path)
    assert [h["phase"] for h in log] == ["supervised"] * 3 + ["round1"] * 3 + ["round2"] * 3
    assert all("train/pseudo_ce" in h for h in log[3:]) and "train/pseudo_ce" not in log[0]


@pytest.mark.parametrize("crash_epoch, reinit", [(1, False), (0, True)])
def test_resume_inside_round_2_is_exact(tmp_path, monkeypatch, crash_epoch, reinit):
    """A crash in round 2 (epoch 2 of 2, or its very start: on_phase_start then runs on resume)."""
    cfg = config(*AUG, f"method.reinit_each_round={str(reinit).lower()}")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(cfg, output_dir=straight, final_eval=False)
    original = Trainer.train_epoch

    def crash_in_round_2(self, phase, *args):
        if phase.name == "round2" and self.epoch == crash_epoch:
            raise KeyboardInterrupt
        return original(self, phase, *args)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, output_dir=crashed, final_eval=False)
    assert load_checkpoint(crashed / "last.pt")["phase_index"] == 2 - (crash_epoch == 0)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    train(cfg, output_dir=crashed, resume=True, final_eval=False)
    for name in ("last.pt", "best.pt", "best_round1.pt"):  # the last round keeps no phase best
        assert same(state(straight / name), state(crashed / name)), name
    assert epochs(straight) == epochs(crashed)


@pytest.mark.parametrize(
    "overrides, logged",
    [
        (("method.regularizers=[{name: tv, weight: 0.1}]",), ("train/reg/tv", "train/pseudo_ce")),
        (("data.split.supervision=sparse", "data.split.sparse_pixels=20"), ("train/ce", "train/pseudo_ce")),
    ],
)
def test_regularizer_and_sparse_labels_run(tmp_path, overrides, logged):
    results = train(config("train.epochs=1", "method.rounds=1", *overrides), output_dir=tmp_path)
    log = epochs(tmp_path)
    assert [h["phase"] for h in log] == ["supervised", "round1"]
    assert all(math.isfinite(log[-1][k]) for k in logged)
    if "train/reg/tv" in logged:
        assert math.isfinite(log[0]["train/reg/tv"])  # the supervised phase sees the regulariser too
    assert "dice/mean" in results["val"]


def test_recipe_budgets():
    raw = load_yaml("pseudo-label-acdc")
    full, quick = build_config(raw), build_config(raw, quick=True)
    assert full.method["name"] == "pseudo_label" and full.data.split.unlabeled == "rest"
    assert 3 * full.train.epochs * full.train.iters_per_epoch == 30000 and full.train.batch_size == 12
    per_phase = [quick.method.get("supervised_epochs") or quick.train.epochs] + [quick.train.epochs] * 2
    assert sum(per_phase) * quick.train.iters_per_epoch == 1000 and quick.train.batch_size == 8
    assert quick.data.image_size == [128, 128]


def test_examples_run():
    import doctest

    import semiseg.methods.pseudo_label as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
