"""A regulariser's own phase through the engine: FixMatch with the ``size`` regulariser's learned
bounds (``source: regressor``) trains the regressor in phase ``size_regressor``, then the segmenter
in FixMatch's ``train``, each with its own optimizer; the method's hooks see only its own phases;
resume inside either phase is exact; a phase-name clash stops the run before training."""

from __future__ import annotations

import json

import pytest
import torch

from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.trainer import Trainer
from semiseg.errors import ConfigError
from semiseg.methods.fixmatch import FixMatch

SIZE = {"name": "size", "weight": 0.001, "gamma": 0.1, "streams": ["unlabeled"], "source": "regressor",
        "regressor_epochs": 2, "regressor_lr": 0.005, "regressor_width": 4, "regressor_depth": 2}  # fmt: skip
REGRESSOR = "regularizers.0.loss.regressor."


@pytest.fixture
def config(make_config):
    """A tiny FixMatch run with ``regularizers`` (default: SIZE): the engine tests' tiny recipe with the
    other training images unlabeled, 2 epochs, flips and rotations; τ lowered so the tiny net has
    confident pixels."""

    def build(*regularizers: dict, arch: str = "cnn"):
        regs = [dict(r, regressor_arch=arch) for r in regularizers or [SIZE]]
        method = {"name": "fixmatch", "threshold": 0.5, "regularizers": regs}
        augment = {"hflip": True, "rotate_degrees": 10.0}
        return make_config("data.split.unlabeled=rest", "train.epochs=2", f"train.augment={json.dumps(augment)}",
                           f"method={json.dumps(method)}")  # fmt: skip

    return build


def part(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_regressor_then_segmenter_each_with_its_own_optimizer(tmp_path, monkeypatch, config):
    starts, hooks = [], []
    build_optimizers = Trainer.build_optimizers

    def recording(self, phase):
        opts, scheds = build_optimizers(self, phase)
        method = self.method
        ids = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in opts.items()}
        state = {k: v.clone() for k, v in method.state_dict().items()}
        lrs = {k: o.param_groups[0]["lr"] for k, o in opts.items()}
        regressor = {id(p) for p in method.regularizers[0].loss.regressor.parameters()}
        starts.append((phase.name, state, ids, lrs, regressor, {id(p) for p in method.model.parameters()}))
        return opts, scheds

    monkeypatch.setattr(Trainer, "build_optimizers", recording)
    monkeypatch.setattr(FixMatch, "on_phase_start", lambda self, phase: hooks.append(phase), raising=False)
    monkeypatch.setattr(FixMatch, "on_step_end", lambda self, phase, opt: hooks.append(phase), raising=False)
    monkeypatch.setattr(FixMatch, "on_epoch_end", lambda self, phase, ep: hooks.append(phase), raising=False)
    results = engine_run.train(config(), output_dir=tmp_path, final_eval=False)

    log = [ln for ln in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [ln.split('"phase": "')[1].split('"')[0] for ln in log] == ["size_regressor"] * 2 + ["train"] * 2
    assert all('"val/size_mae"' in ln and '"val/dice/mean"' not in ln for ln in log[:2])
    assert all('"train/reg/size"' in ln and '"val/dice/mean"' in ln for ln in log[2:])
    assert results["best"]["phase"] == "train"
    assert set(hooks) == {"train"} and len(hooks) == 1 + 2 * 2 + 2  # start, steps, epoch ends

    (p0, s0, ids0, lr0, reg_ids, seg_ids), (p1, s1, ids1, lr1, _, _) = starts
    assert (p0, p1) == ("size_regressor", "train")
    assert ids0 == {"size_regressor": reg_ids} and ids1 == {"main": seg_ids} and not reg_ids & seg_ids
    assert lr0 == {"size_regressor": 0.005} and lr1 == {"main": 0.01}
    last = load_checkpoint(tmp_path / "last.pt")["method_state"]
    # the regressor moves in its phase only (restored at its best), the segmenter in FixMatch's only
    assert not same(part(s0, REGRESSOR), part(s1, REGRESSOR))
    assert same(part(s1, REGRESSOR), part(last, REGRESSOR))
    best_regressor = load_checkpoint(tmp_path / "best_size_regressor.pt")["method_state"]
    assert same(part(s1, REGRESSOR), part(best_regressor, REGRESSOR))
    assert same(part(s0, "model."), part(s1, "model."))
    assert not same(part(s1, "model."), part(last, "model."))


@pytest.mark.parametrize(("phase", "arch"), [("size_regressor", "density"), ("train", "cnn")])
def test_resume_inside_either_phase_is_exact(tmp_path, resume_check, phase, arch, config):
    log = resume_check(
        config(arch=arch),
        tmp_path,
        crash_at=lambda t, ph: ph.name == phase and t.epoch == 1,
        final_eval=False,
    )
    assert [e["phase"] for e in log] == ["size_regressor"] * 2 + ["train"] * 2


def test_a_phase_name_clash_stops_the_run_before_training(tmp_path, config):
    with pytest.raises(ConfigError, match=r"^phase name 'size_regressor' of regularizer 'size' "
                                          r"\(method\.regularizers\[1\]\) clashes") as info:  # fmt: skip
        engine_run.train(config(SIZE, SIZE), output_dir=tmp_path, final_eval=False)
    assert "\n" not in str(info.value) and not (tmp_path / "epochs.jsonl").exists()
