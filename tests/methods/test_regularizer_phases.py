"""Phases owned by a regulariser, for every method: run first, dispatched to the regulariser (training
step, parameters, validation, hooks), unique names, the regulariser's network in the method's state
and never in the method's optimizers."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from test_methods import NAMES, batch, build, phase_batch

from semiseg.data.records import Record
from semiseg.errors import ConfigError
from semiseg.losses.regularizers import REGULARIZERS, PhasedLoss, RegularizerSpec, register_regularizer
from semiseg.methods import Phase

SIZE_REGRESSOR = {"name": "size", "weight": 0.01, "streams": ["unlabeled"], "source": "regressor",
                  "regressor_epochs": 2, "regressor_width": 4, "regressor_depth": 2}  # fmt: skip


def with_regressor(name: str, **options):
    return build(name, regularizers=[SIZE_REGRESSOR], **options)


#: the methods that apply regularisers (translation refuses them: tests/test_cli.py)
APPLYING = [n for n in NAMES if n != "translation"]


def test_translation_refuses_a_regularizer_in_one_line():
    with pytest.raises(ConfigError, match="method 'translation' does not apply regularisers"):
        with_regressor("translation")


def regressor_ids(method) -> set[int]:
    return {id(p) for p in method.regularizers[0].loss.regressor.parameters()}


@pytest.mark.parametrize("name", APPLYING)
def test_the_regularizers_phase_runs_first_and_the_methods_own_are_unchanged(name):
    method = with_regressor(name)
    own = build(name).phases()
    phases = method.run_phases()
    assert [p.name for p in phases] == ["size_regressor"] + [p.name for p in own]
    assert phases[1:] == method.phases()  # (with the regulariser's stream among their optional ones)
    assert method.phase_owner("size_regressor") is method.regularizers[0]
    assert all(method.phase_owner(p.name) is method for p in own)


@pytest.mark.parametrize("name", APPLYING)
def test_the_methods_optimizers_never_hold_the_regressor(name):
    method = with_regressor(name)
    owned = regressor_ids(method)
    for phase in method.run_phases():
        for opt in phase.optimizer_names:
            ids = {id(p) for p in method.phase_owner(phase.name).parameters_for(phase.name, opt)}
            assert (ids == owned) if phase.name == "size_regressor" else not (ids & owned), (phase.name, opt)


@pytest.mark.parametrize("name", ["supervised", "fixmatch", "mean_teacher", "size"])
def test_forward_sends_the_regularizers_phase_to_it(name, monkeypatch):
    method = with_regressor(name).train()

    def not_called(*args):
        raise AssertionError("the method's training_step ran a regulariser's phase")

    monkeypatch.setattr(method, "training_step", not_called)
    data = {"labeled": batch()["labeled"]}
    data["labeled"].key[:, 0] = torch.arange(2) + 1
    out = method(data, "size_regressor", "size_regressor")
    again = method.regularizers[0].training_step(data, "size_regressor", "size_regressor")
    assert set(out) == {"loss", "size_loss"} and torch.equal(out["loss"], again["loss"])
    out["loss"].backward()
    grads = {n for n, p in method.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("regularizers.0.loss.regressor.") for n in grads)


def test_the_methods_phase_adds_the_penalty_of_the_frozen_regressor():
    method = with_regressor("fixmatch").train()
    phase = method.phases()[-1]
    out = method(phase_batch(phase), phase.name, "main")
    assert "reg/size" in out and torch.isfinite(out["reg/size"])
    out["loss"].backward()
    assert all(p.grad is None for p in method.regularizers[0].loss.regressor.parameters())
    assert not method.regularizers[0].loss.regressor.training


def test_validation_of_the_regularizers_phase_is_its_own(monkeypatch):
    method = with_regressor("size").eval()  # the size method validates its own regressor phase too
    lab = batch()["labeled"]
    records = [Record(id=f"r{i}", image=lab.image[i].numpy(), mask=lab.mask[i].clamp(min=0).numpy())
               for i in range(2)]  # fmt: skip
    called = []
    monkeypatch.setattr(method, "validation_metrics", lambda *a: called.append(a))
    owner = method.phase_owner("size_regressor")
    metrics = owner.validation_metrics("size_regressor", records, (32, 32), torch.device("cpu"))
    assert set(metrics) == {"size_mae", "size_mae_fraction"} and not called


def test_the_regressor_lives_in_the_methods_state():
    method = with_regressor("fixmatch")
    keys = [k for k in method.state_dict() if k.startswith("regularizers.0.loss.regressor.")]
    assert keys and any(k.endswith("running_mean") for k in keys)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    other = with_regressor("fixmatch", seed=1)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in method.state_dict().items())


@pytest.mark.parametrize(
    ("arch", "count", "first", "last"),
    [("cnn", 118, "regressor.encoder.0.0.weight", "regressor.head.3.bias"),
     ("density", 184, "regressor.net.encoder.0.0.weight", "regressor.net.head.bias")],
)  # fmt: skip
def test_the_size_methods_checkpoint_keys_are_unchanged(arch, count, first, last):
    """As recorded before the regressor's code moved to semiseg.models.size_regressor; the
    regulariser's regressor comes beside it, under ``regularizers.0.loss.regressor``."""
    keys = list(build("size", regressor_arch=arch).state_dict())
    regressor = [k for k in keys if k.startswith("regressor.")]
    assert (len(keys), regressor[0], regressor[-1]) == (count, first, last)
    both = list(with_regressor("size", regressor_arch=arch).state_dict())
    assert [k for k in both if not k.startswith("regularizers.")] == keys


# ------------------------------------------------------------------------------------ name clashes
def test_two_regressors_clash_in_one_line():
    method = build("fixmatch", regularizers=[SIZE_REGRESSOR, {**SIZE_REGRESSOR, "weight": 0.1}])
    match = (r"^phase name 'size_regressor' of regularizer 'size' \(method\.regularizers\[1\]\) clashes with "
             r"the phase 'size_regressor' of regularizer 'size' \(method\.regularizers\[0\]\)")  # fmt: skip
    with pytest.raises(ConfigError, match=match) as info:
        method.run_phases()
    assert "\n" not in str(info.value)


@pytest.fixture
def phased_regularizer():
    """A regulariser ``test_phased`` owning one phase, named by its option ``phase``."""

    class Counter(PhasedLoss):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.hooks: list[tuple] = []

        def forward(self, logits, batch):
            return logits.new_zeros(())

        def training_step(self, batch, phase, optimizer):
            return {"loss": self.scale.square()}

        def on_phase_start(self, phase):
            self.hooks.append(("start", phase))

        def on_step_end(self, phase, optimizer):
            self.hooks.append(("step", phase, optimizer))

        def on_epoch_end(self, phase, epoch):
            self.hooks.append(("epoch", phase, epoch))

    @register_regularizer("test_phased")
    @dataclass
    class PhasedSpec(RegularizerSpec):
        phase: str = "warmup"

        def build(self):
            return Counter()

        def phases(self):
            return [Phase(self.phase, epochs=1, optimizers=("warmup",), validate=False)]

    yield PhasedSpec
    REGULARIZERS.pop("test_phased")


def test_a_regularizers_phase_named_like_the_methods_clashes(phased_regularizer):
    method = build("mean_teacher", regularizers=[{"name": "test_phased", "phase": "train"}])
    with pytest.raises(ConfigError, match=r"^phase name 'train' of method 'mean_teacher' clashes with the "
                                          r"phase 'train' of regularizer 'test_phased'"):  # fmt: skip
        method.run_phases()
    ok = build("mean_teacher", regularizers=[{"name": "test_phased"}])
    assert [p.name for p in ok.run_phases()] == ["warmup", "train"]


def test_hooks_of_a_regularizers_phase_go_to_it(phased_regularizer):
    method = build("supervised", regularizers=[{"name": "test_phased"}])
    owner = method.phase_owner("warmup")
    owner.on_phase_start("warmup")
    owner.on_step_end("warmup", "warmup")
    owner.on_epoch_end("warmup", 1)
    assert method.regularizers[0].loss.hooks == [("start", "warmup"), ("step", "warmup", "warmup"),
                                                 ("epoch", "warmup", 1)]  # fmt: skip
    assert [id(p) for p in owner.parameters_for("warmup", "warmup")] == [
        id(method.regularizers[0].loss.scale)
    ]
    assert owner.validation_metrics("warmup", [], (8, 8), torch.device("cpu")) is None


def test_phases_need_a_phased_loss():
    @register_regularizer("test_bad_phased")
    @dataclass
    class BadSpec(RegularizerSpec):
        def loss(self, logits, batch):
            return logits.sum()

        def phases(self):
            return [Phase("warmup")]

    try:
        with pytest.raises(TypeError, match="BadSpec declares phases but its loss is not a PhasedLoss"):
            build("supervised", regularizers=[{"name": "test_bad_phased"}])
    finally:
        REGULARIZERS.pop("test_bad_phased")
