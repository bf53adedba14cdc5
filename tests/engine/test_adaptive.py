"""The criterion-driven learning rate: its rule, rejected epochs rolled back exactly (parameters,
optimizer, random state, counters) and rerun on the same batches, logs, errors and resumption."""

from __future__ import annotations

import json

import pytest
import torch

from semiseg.engine import run as engine_run
from semiseg.engine.adaptive import AdaptiveLR
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError

ADAPTIVE = ("train.scheduler=adaptive", "model.dropout=0.2", "train.epochs=4", "train.log_every=1")


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_rule_grows_after_improvements_and_shrinks_on_rejections():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=10.0)
    lr = AdaptiveLR(opt, growth=1.25, grow_after=5, max_attempts=10)
    assert all(lr.decide(c) for c in (10, 9, 8, 7, 6)) and lr.lr == 10.0  # 4 improvements after the first
    assert lr.decide(5) and lr.lr == pytest.approx(12.5) and opt.param_groups[0]["lr"] == pytest.approx(12.5)
    assert not lr.decide(5) and lr.lr == pytest.approx(10.0)  # equal is not better
    decisions = [lr.decide(7) for _ in range(9)]  # 1 + 8 more rejections, the 10th attempt is kept
    assert decisions == [False] * 8 + [True] and lr.last == 7 and lr.attempts == 0
    assert lr.lr == pytest.approx(12.5 / 1.25**9)  # 9 rejections, each ÷ 1.25
    again = AdaptiveLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    again.load_state_dict(lr.state_dict())
    assert again.state_dict() == lr.state_dict() and again.optimizer.param_groups[0]["lr"] == lr.lr
    assert not lr.decide(float("nan"))  # a non-finite criterion is never better


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(rejected)``: AdaptiveLR.decide rejects the calls whose index (from 0) is in ``rejected``
    (and applies the rule's rate change), else accepts."""

    def install(rejected: set[int]):
        calls = {"n": 0}
        original = AdaptiveLR.decide

        def decide(self, criterion):
            i = calls["n"]
            calls["n"] += 1
            if i in rejected:
                self.attempts += 1
                self.lr /= self.growth
                self.apply()
                return False
            return original(self, min(criterion, (self.last or 1e9) - 1e-9))  # count as an improvement

        monkeypatch.setattr(AdaptiveLR, "decide", decide)

    return install


def test_a_rejected_epoch_is_rolled_back_and_rerun_on_the_same_batches(tmp_path, make_config, scripted):
    scripted({1})  # the first attempt of epoch 2 is rejected
    cfg = make_config(*ADAPTIVE)
    engine_run.train(cfg, output_dir=tmp_path / "a")
    log = lines(tmp_path / "a" / "epochs.jsonl")
    rejected = [r for r in log if r.get("accepted") is False]
    assert len(rejected) == 1 and rejected[0]["epoch"] == 2 and rejected[0]["attempt"] == 1
    assert rejected[0]["next_lr"] == pytest.approx(0.01 / 1.25)
    accepted = [r for r in log if "accepted" not in r]
    assert [r["epoch"] for r in accepted] == [1, 2, 3, 4] and accepted[-1][
        "step"
    ] == 4 * 2  # counters rolled back
    steps = [r for r in lines(tmp_path / "a" / "steps.jsonl") if r["epoch"] == 2]
    assert [r["step"] for r in steps] == [3, 4, 3, 4]  # the attempt, then the rerun from the same step
    first, rerun = steps[0], steps[2]
    assert first["loss"] == rerun["loss"]  # same weights, batch and dropout draws before the first update
    assert first["lr"] == 0.01 and rerun["lr"] == pytest.approx(0.01 / 1.25)
    assert steps[1]["loss"] != steps[3]["loss"]  # the second step follows a smaller update


def test_resume_after_a_rejection_is_exact(tmp_path, make_config, scripted, resume_check):
    scripted({1, 6})  # epoch 2's first attempt (and, in the resumed run, its replay) is rejected
    cfg = make_config(*ADAPTIVE)

    # call indices: straight run 0, 1 (reject), 2, 3, 4; crashed run 5, 6 (reject), then the crash before
    # epoch 3; resumed run 7, 8 from last.pt (after epoch 2): the same decisions as the straight run
    log = resume_check(cfg, tmp_path, crash_at=lambda trainer, phase: trainer.epoch == 2)
    assert sum(1 for r in log if r.get("accepted") is False) == 1


def test_adaptive_needs_one_optimizer_and_sane_constants(tmp_path, make_config):
    with pytest.raises(ConfigError, match="adaptive needs growth > 1"):
        from semiseg.config import OptimizerConfig
        from semiseg.engine.trainer import check_optimizer_settings

        check_optimizer_settings(OptimizerConfig(growth=1.0), "train")
    with pytest.raises(ConfigError, match="one optimizer"):
        two = make_config("method.name=translation", "method.unique_channels=4", "method.mlp_hidden=8",
                          "method.disc_width=4", "method.disc_scales=2", "data.split.unlabeled_supervision=tag",
                          "train.scheduler=adaptive")  # fmt: skip
        engine_run.train(two, output_dir=tmp_path)


def test_the_last_checkpoint_holds_the_rules_state(tmp_path, make_config):
    engine_run.train(make_config(*ADAPTIVE), output_dir=tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")["schedulers"]["main"]
    assert set(state) == {"lr", "good", "last", "attempts"} and state["attempts"] == 0


def test_a_non_finite_attempt_is_rejected_even_first(tmp_path, make_config, monkeypatch):
    # the first two steps of the run return a NaN loss: the first epoch is rerun at a lower rate
    from semiseg.engine.trainer import Trainer

    original, calls = Trainer.train_step, {"n": 0}

    def train_step(self, *args):
        values = original(self, *args)
        calls["n"] += 1
        return {**values, "loss": float("nan")} if calls["n"] <= 1 else values

    monkeypatch.setattr(Trainer, "train_step", train_step)
    engine_run.train(make_config(*ADAPTIVE), output_dir=tmp_path)
    log = lines(tmp_path / "epochs.jsonl")
    rejected = [r for r in log if r.get("accepted") is False]
    assert len(rejected) == 1 and rejected[0]["epoch"] == 1 and rejected[0]["criterion"] == float("inf")
    assert [r["epoch"] for r in log if "accepted" not in r] == [1, 2, 3, 4]
    steps = lines(tmp_path / "steps.jsonl")
    # the NaN step ends the first attempt (not logged); the rerun's two steps say attempt 1
    assert [r.get("attempt", 0) for r in steps if r["epoch"] == 1] == [1, 1]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert not AdaptiveLR(opt).decide(float("inf"))  # no baseline yet: still not an improvement


def test_the_criterion_is_the_loss_after_the_attempts_updates_so_a_smaller_rate_can_win(
    tmp_path, make_config
):
    """Full batch, plain SGD at a rate far too large: each attempt's criterion is measured after its
    update, so it falls as the rate shrinks (the mean of the steps' own losses, taken before the
    update, would repeat one value for every attempt); an accepted epoch improved on its own start
    unless the attempts ran out; and an epoch rejected once is then accepted at the smaller rate."""
    cfg = make_config("train.scheduler=adaptive", "model.norm=none", "train.epochs=6", "train.iters_per_epoch=1",
                      "train.optimizer=sgd", "train.momentum=0", "train.lr=60")  # fmt: skip
    engine_run.train(cfg, output_dir=tmp_path)
    log = lines(tmp_path / "epochs.jsonl")
    rejected = [r for r in log if r.get("accepted") is False]
    first = [r["criterion"] for r in rejected if r["epoch"] == 1]
    assert len(first) >= 3 and all(a > b for a, b in zip(first, first[1:]))
    accepted = [r for r in log if "accepted" not in r]
    assert [r["epoch"] for r in accepted] == [1, 2, 3, 4, 5, 6]
    tries = {e: sum(1 for r in rejected if r["epoch"] == e) for e in range(1, 7)}
    for r in accepted:  # one full batch, no dropout: train/loss is the loss before the epoch's update
        if tries[r["epoch"]] < 9:
            assert r["train/criterion"] < r["train/loss"]
    assert any(0 < n < 9 for n in tries.values())
