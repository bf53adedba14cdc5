"""Epoch plans (Method.plan_epoch) and sweeps: a method that looks at every unlabeled image before each
epoch, draws the epoch from a subset of them and ends its phase early, through the real trainer."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.losses import masked_cross_entropy
from semiseg.methods import METHODS, EpochPlan, MethodConfig, Phase, register
from semiseg.methods.supervised import Supervised


@dataclass
class PlanConfig(MethodConfig):
    keep: int = 3  #: the darkest unlabeled images drawn each epoch
    stop_after: int = 3  #: the plan ends the phase before this epoch
    iters: int | None = None  #: the plan's own epoch length
    bad_stream: bool = False


class Planner(Supervised):
    """Supervised CE on the labeled images plus an unlabeled stream whose epochs draw from the
    ``keep`` darkest images, found by a sweep before each epoch; the phase ends after ``stop_after``."""

    config_class = PlanConfig

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.register_buffer("seen", torch.zeros(0, dtype=torch.long), persistent=False)
        self.sweeps: list[torch.Tensor] = []
        self.modes: list[bool] = []
        self.step_modes: list[bool] = []

    def phases(self):
        return [Phase(streams=("unlabeled", "labeled"), epochs=10, epoch_iters="pass")]

    def plan_epoch(self, phase, epoch, sweep):
        if epoch >= self.cfg.stop_after:
            return EpochPlan(done=True)

        def brightness(batch):
            self.modes.append(self.training)
            return batch.image.mean(dim=(1, 2, 3))

        values = sweep("unlabeled", brightness, batch_size=3)
        self.sweeps.append(values.cpu())
        subset = values.argsort()[: self.cfg.keep].tolist()
        return EpochPlan(
            subsets={"nope" if self.cfg.bad_stream else "unlabeled": subset}, iters=self.cfg.iters
        )

    def training_step(self, batch, phase, optimizer):
        self.step_modes.append(self.training)
        self.seen = torch.cat([self.seen, batch["unlabeled"].index.cpu()])
        lab = batch["labeled"]
        return {"loss": masked_cross_entropy(self.model(lab.image), lab.mask)}


@pytest.fixture
def planner():
    register("test_planner")(Planner)
    yield
    METHODS.pop("test_planner", None)


def train(cfg, out, **kw):
    return engine_run.train(cfg, output_dir=out, **kw)


def test_sweep_sees_every_clean_item_in_order_in_eval_mode(tmp_path, make_config, planner, monkeypatch):
    captured = {}
    original = Planner.plan_epoch

    def spy(self, phase, epoch, sweep):
        plan = original(self, phase, epoch, sweep)
        captured.setdefault("method", self)
        return plan

    monkeypatch.setattr(Planner, "plan_epoch", spy)
    cfg = make_config("method.name=test_planner", "data.split.unlabeled=rest", "train.augment.hflip=true",
                      "train.augment.brightness=0.5")  # fmt: skip
    train(cfg, tmp_path)
    method = captured["method"]
    assert method.modes and not any(method.modes)  # eval mode during sweeps
    assert method.step_modes and all(method.step_modes)  # train mode restored for the steps
    # the sweep's values are the clean (unaugmented) images' brightness, in the stream's item order
    from semiseg.data import prepare_data

    unlabeled = prepare_data(cfg).unlabeled
    want = unlabeled.images.mean(dim=(1, 2, 3))
    torch.testing.assert_close(method.sweeps[0], want)
    # each epoch drew only from the 3 darkest images: ceil(3 / batch 4) = 1 iteration, 4 draws
    darkest = set(want.argsort()[:3].tolist())
    assert set(method.seen.tolist()) <= darkest and len(method.seen) == 3 * 4


def test_plan_ends_the_phase_and_the_log_says_so(tmp_path, make_config, planner):
    train(make_config("method.name=test_planner", "data.split.unlabeled=rest"), tmp_path)
    log = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in log if "ended" not in h] == [1, 2, 3]
    assert log[-1]["ended"] == "plan" and log[-1]["epoch"] == 3
    assert load_checkpoint(tmp_path / "last.pt")["global_step"] == 3


def test_a_phase_ended_by_its_plan_validates_its_last_state(tmp_path, make_config, planner):
    # validation every 5 epochs, the plan ends the phase after 3: the state it ends with still
    # competes for best.pt (validated in the "ended" record); with val_every 1 it already was
    cfg = make_config("method.name=test_planner", "data.split.unlabeled=rest", "train.val_every=5")
    train(cfg, tmp_path / "a")
    log = [json.loads(line) for line in (tmp_path / "a" / "epochs.jsonl").read_text().splitlines()]
    assert not any(k.startswith("val/") for h in log[:-1] for k in h)
    assert log[-1]["ended"] == "plan" and "val/dice/mean" in log[-1]
    assert load_checkpoint(tmp_path / "a" / "best.pt")["best"]["epoch"] == 3
    train(
        make_config("method.name=test_planner", "data.split.unlabeled=rest", "train.val_every=1"),
        tmp_path / "b",
    )
    log = [json.loads(line) for line in (tmp_path / "b" / "epochs.jsonl").read_text().splitlines()]
    assert "val/dice/mean" in log[-2] and not any(k.startswith("val/") for k in log[-1])


def test_plan_iters_override_the_epoch_length(tmp_path, make_config, planner):
    train(make_config("method.name=test_planner", "data.split.unlabeled=rest", "method.iters=2"), tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["global_step"] == 6


def test_planned_phase_resumes_exactly(tmp_path, make_config, planner, resume_check):
    cfg = make_config("method.name=test_planner", "data.split.unlabeled=rest", "train.augment.hflip=true")
    log = resume_check(cfg, tmp_path, crash_at=lambda trainer, phase: trainer.epoch == 2)
    assert log[-1].get("ended") == "plan"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method.bad_stream=true",), r"the plan names streams it does not draw: \['nope'\]"),
        (("train.scheduler=cosine",), r"its plan changes the epochs' length, which the 'cosine'"),
    ],
)
def test_bad_plans_are_one_line_errors(tmp_path, make_config, planner, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(make_config("method.name=test_planner", "data.split.unlabeled=rest", *overrides), tmp_path)


@pytest.mark.parametrize("n", [1, 6, 7, 11])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_processes_sweep_equal_shares_that_merge_back_in_item_order(n, world):
    from semiseg.engine.sweep import merge_shares, share_positions

    shares = [share_positions(n, world, r) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # equal shares (all_gather needs equal shapes)
    assert set().union(*map(set, shares)) == set(range(n))
    values = torch.cat([torch.tensor(s) * 10 for s in shares])  # a result per item: 10 x its position
    torch.testing.assert_close(merge_shares(values, world, n), torch.arange(n) * 10)
    pairs = torch.cat([torch.stack([torch.tensor(s), torch.tensor(s)], 1) for s in shares])  # [N, 2] results
    assert merge_shares(pairs, world, n)[:, 1].tolist() == list(range(n))
