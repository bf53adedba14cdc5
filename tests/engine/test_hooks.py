"""Engine v2 hooks, proved by two methods written only here (each under 60 lines): an EMA teacher
with weak/strong views (mean-teacher / FixMatch shape) and a two-optimizer method whose optimizers
have their own settings (GAN shape). Both run through the engine and resume exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn

from semiseg.config import OptimizerConfig
from semiseg.core import ViewSpec
from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.losses import masked_cross_entropy
from semiseg.methods import METHODS, Method, MethodConfig, OptimizerSpec, Phase, register
from semiseg.methods.supervised import Supervised
from semiseg.models import build_model
from semiseg.models.ema import ema_copy, ema_update_


# --------------------------------------------------------------------- proof 1: EMA teacher, views
@dataclass
class EMAConfig(MethodConfig):
    ema: float = 0.9
    weight: float = 0.5


class EMATeacher(Method):
    """CE on labeled images + consistency of the student on a CutMix of strong views with the EMA
    teacher's predictions on the weak views, mixed the same way. The teacher follows every step."""

    config_class = EMAConfig

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = build_model(self.model_cfg, self.in_channels, self.num_classes)
        self.teacher = ema_copy(self.model)
        self.register_buffer("updates", torch.tensor(0))

    def phases(self):
        both = ("labeled", "unlabeled")
        return [Phase(streams=both, views={"unlabeled": ViewSpec(strong=1, cutmix=True)})]

    def training_step(self, batch, phase, optimizer):
        lab, unl = batch["labeled"], batch["unlabeled"]
        with torch.no_grad():
            target = self.teacher(unl.image).softmax(1)
        box = unl.cutmix[:, 0, None]  # [B, 1, H, W]: paste the next sample inside the box
        mixed = torch.where(box, unl.strong[:, 0].roll(1, 0), unl.strong[:, 0])
        target = torch.where(box, target.roll(1, 0), target)
        consistency = (self.model(mixed).softmax(1) - target).square().mean()
        ce = masked_cross_entropy(self.model(lab.image), lab.mask)
        return {"loss": ce + self.cfg.weight * consistency, "ce": ce, "consistency": consistency}

    def on_step_end(self, phase, optimizer):
        ema_update_(self.teacher, self.model, self.cfg.ema)
        self.updates += 1


# ------------------------------------------------------------ proof 2: two optimizers, own settings
@dataclass
class TwoOptConfig(MethodConfig):
    generator: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.002, betas=[0.5, 0.9]))
    critic: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(type="sgd", lr=0.05, repeat=2))
    adv_weight: float = 0.1


class TwoOptimizers(Method):
    """A segmenter (optimizer "generator") and a critic on its softmax maps (optimizer "critic",
    ``repeat`` steps per iteration), GAN style; both optimizers are configured, not hand-coded."""

    config_class = TwoOptConfig

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = build_model(self.model_cfg, self.in_channels, self.num_classes)
        self.critic = nn.Conv2d(self.num_classes, 1, 3, padding=1)
        self.register_buffer("steps", torch.zeros(2, dtype=torch.long))  # generator, critic

    def phases(self):
        opts = (OptimizerSpec("generator", self.cfg.generator), OptimizerSpec("critic", self.cfg.critic))
        return [Phase(optimizers=opts, streams=("labeled", "unlabeled"))]

    def parameters_for(self, phase, optimizer):
        return self.critic.parameters() if optimizer == "critic" else self.model.parameters()

    def training_step(self, batch, phase, optimizer):
        fake = self.model(batch["unlabeled"].image).softmax(1)
        if optimizer == "critic":  # real = labeled one-hot masks would do; a constant target is enough here
            return {"loss": self.critic(fake.detach()).square().mean()}
        lab = batch["labeled"]
        ce = masked_cross_entropy(self.model(lab.image), lab.mask)
        adv = self.critic(fake).mean()
        return {"loss": ce + self.cfg.adv_weight * adv, "ce": ce, "adv": adv}

    def on_step_end(self, phase, optimizer):
        self.steps[int(optimizer == "critic")] += 1


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture
def proof_methods():
    register("test_ema_teacher")(EMATeacher)
    register("test_two_optimizers")(TwoOptimizers)
    yield
    for name in ("test_ema_teacher", "test_two_optimizers"):
        METHODS.pop(name, None)


def run(cfg, out, **kw):
    return engine_run.train(cfg, output_dir=out, **kw)


def same_state(a, b) -> bool:
    sa, sb = load_checkpoint(a)["method_state"], load_checkpoint(b)["method_state"]

    def equal(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        return torch.equal(x, y) if torch.is_tensor(x) else x == y

    return equal(sa, sb)


def epochs(out):
    return [
        {k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in (out / "epochs.jsonl").open()
    ]


AUG = ("train.augment.hflip=true", "train.augment.rotate_degrees=10", "train.scheduler=cosine")


@pytest.mark.parametrize("name", ["test_ema_teacher", "test_two_optimizers"])
def test_proof_methods_resume_exactly(tmp_path, make_config, proof_methods, resume_check, name):
    """A crash in epoch 3 of 3 (cosine schedule, augmentation, strong views), then --resume."""
    resume_check(make_config(f"method.name={name}", *AUG), tmp_path)
    assert same_state(tmp_path / "straight" / "best.pt", tmp_path / "crashed" / "best.pt")


def test_ema_teacher_follows_every_step(tmp_path, make_config, proof_methods):
    run(make_config("method.name=test_ema_teacher", *AUG), tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")["method_state"]
    assert int(state["updates"]) == 6  # 3 epochs x 2 iterations, one optimizer
    teacher = {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}
    model = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    assert any(not torch.equal(teacher[k], model[k]) for k in model if model[k].is_floating_point())
    log = epochs(tmp_path)
    assert all(h["train/consistency"] > 0 for h in log)


def test_ema_update_is_exact(proof_methods):
    from semiseg.config import ModelConfig
    from semiseg.methods import build_method

    torch.manual_seed(0)
    m = build_method({"name": "test_ema_teacher", "ema": 0.75}, ModelConfig(width=4, depth=2),
                     in_channels=1, num_classes=2)  # fmt: skip
    before = [p.detach().clone() for p in m.teacher.parameters()]
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    m.on_step_end("train", "main")
    for b, t, s in zip(before, m.teacher.parameters(), m.model.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)


def test_two_optimizers_have_their_own_settings(tmp_path, make_config, proof_methods):
    cfg = make_config("method.name=test_two_optimizers", "method.critic.every=2", "method.critic.lr=0.03")
    run(cfg, tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    gen, critic = state["optimizers"]["generator"], state["optimizers"]["critic"]
    assert gen["param_groups"][0]["lr"] == 0.002 and gen["param_groups"][0]["betas"] == (0.5, 0.9)
    assert critic["param_groups"][0]["lr"] == 0.03 and "momentum" in critic["param_groups"][0]  # SGD
    # 6 iterations: generator every one; critic on iterations 0, 2, 4, twice each
    assert state["method_state"]["steps"].tolist() == [6, 6]
    log = epochs(tmp_path)
    assert "train/critic/loss" in log[0] and "train/generator/ce" in log[0]


def test_amsgrad_is_an_optimizer_setting(tmp_path, make_config, proof_methods):
    run(make_config("method.name=test_two_optimizers", "method.generator.amsgrad=true"), tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")["optimizers"]
    assert state["generator"]["param_groups"][0]["amsgrad"] is True
    assert "amsgrad" not in state["critic"]["param_groups"][0]  # SGD


def test_linear_schedule_falls_to_its_end_factor():
    from semiseg.engine.trainer import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler("linear", opt, total_iters=4, end_factor=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3, 7.75e-4, 5.5e-4, 3.25e-4, 1e-4, 1e-4])  # then it stays at the end


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.critic.amsgrad=true", r"optimizer 'critic'.amsgrad: applies to adam / adamw, not sgd"),
        ("method.critic.lr=-1", r"optimizer 'critic'.lr: must be positive"),
        ("method.critic.repeat=0", r"optimizer 'critic': repeat and every must be at least 1"),
        ("method.generator.betas=[0.5]", r"optimizer 'generator'.betas: must be two numbers"),
        ("method.critic.lrr=0.1", r"unknown key 'method.critic.lrr' \(did you mean 'lr'\?\)"),
        ("method.critic.end_factor=2", r"optimizer 'critic'.end_factor: must be in \[0, 1\]"),
    ],
)
def test_bad_optimizer_settings_are_one_line_errors(tmp_path, make_config, proof_methods, override, message):
    with pytest.raises(ConfigError, match=message):
        run(make_config("method.name=test_two_optimizers", override), tmp_path)


def test_hooks_are_called_in_order(tmp_path, make_config):
    calls = []

    class Recorder(Supervised):
        def on_phase_start(self, phase):
            calls.append(("start", phase))

        def on_step_end(self, phase, optimizer):
            calls.append(("step", self.global_step))

        def on_epoch_end(self, phase, epoch):
            calls.append(("epoch", epoch))

    register("test_recorder")(Recorder)
    try:
        run(make_config("method.name=test_recorder", "train.epochs=2"), tmp_path)
    finally:
        METHODS.pop("test_recorder", None)
    assert calls == [("start", "train"), ("step", 0), ("step", 1), ("epoch", 1), ("step", 2), ("step", 3),
                     ("epoch", 2)]  # fmt: skip


class OwnRNG(Supervised):
    """Draws input noise from its own generator, kept as method state (get/set_extra_state)."""

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.rng = torch.Generator().manual_seed(123)

    def training_step(self, batch, phase, optimizer):
        lab = batch["labeled"]
        noise = 0.1 * torch.randn(lab.image.shape, generator=self.rng)
        return {"loss": masked_cross_entropy(self.model(lab.image + noise), lab.mask)}

    def get_extra_state(self):
        return {"rng": self.rng.get_state()}

    def set_extra_state(self, state):
        self.rng.set_state(state["rng"])


def test_a_methods_own_rng_is_checkpointed_and_resumed(tmp_path, make_config, resume_check):
    register("test_own_rng")(OwnRNG)
    try:
        resume_check(make_config("method.name=test_own_rng"), tmp_path)  # extra state compared too
    finally:
        METHODS.pop("test_own_rng", None)


# --------------------------------------------------------- optimizer state handed on between phases
@dataclass
class PersistConfig(MethodConfig):
    persist: bool = True
    gap: bool = False  #: a phase with a fresh optimizer between the two


class TwoPhases(Supervised):
    """Supervised training in two phases (2 + 2 epochs) with different learning rates; with
    ``persist`` their optimizer state passes from the first to the second (``gap``: across a phase
    with an optimizer of its own)."""

    config_class = PersistConfig

    def phases(self):
        key = "shared" if self.cfg.persist else None
        first = OptimizerSpec("main", OptimizerConfig(type="adam", lr=0.01), persist=key)
        second = OptimizerSpec("main", OptimizerConfig(type="adam", lr=0.001), persist=key)
        own = OptimizerSpec("main", OptimizerConfig(type="sgd", lr=0.01))
        gap = [Phase("gap", epochs=2, optimizers=(own,), final=False)] if self.cfg.gap else []
        return [
            Phase("first", epochs=2, optimizers=(first,), final=False),
            *gap,
            Phase("second", epochs=2, optimizers=(second,)),
        ]

    def training_step(self, batch, phase, optimizer):
        lab = batch["labeled"]
        return {"loss": masked_cross_entropy(self.model(lab.image), lab.mask)}


@pytest.fixture
def two_phases():
    register("test_two_phases")(TwoPhases)
    yield
    METHODS.pop("test_two_phases", None)


@pytest.mark.parametrize("persist", [True, False])
def test_persisted_optimizer_state_continues_with_the_new_phases_settings(
    tmp_path, make_config, two_phases, persist
):
    run(make_config("method.name=test_two_phases", f"method.persist={str(persist).lower()}"), tmp_path)
    saved = load_checkpoint(tmp_path / "last.pt")
    state = saved["optimizers"]["main"]
    steps = {int(s["step"]) for s in state["state"].values()}
    assert steps == ({8} if persist else {4})  # 2 iterations x 2 epochs per phase; Adam's count goes on
    assert state["param_groups"][0]["lr"] == pytest.approx(0.001)  # the second phase's own lr
    assert ("shared" in saved["persisted_optimizers"]) == persist


def test_persisted_optimizer_state_resumes_exactly(tmp_path, make_config, two_phases, resume_check):
    """A crash in a phase between the two that share the state, then --resume: the state handed on
    comes from the checkpoint."""
    cfg = make_config("method.name=test_two_phases", "method.gap=true", "train.scheduler=cosine")
    resume_check(cfg, tmp_path, crash_at=lambda trainer, phase: phase.name == "gap" and trainer.epoch == 1)
    state = load_checkpoint(tmp_path / "crashed" / "last.pt")["optimizers"]["main"]["state"]
    assert {int(s["step"]) for s in state.values()} == {8}
