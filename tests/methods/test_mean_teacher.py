"""The ``mean_teacher`` method: consistency of the student's clean view with the teacher's noisy one
(or of the student's strong view with the teacher's weak one), the teacher's input noise, one
forward per stream or one joint batch, its ramp-up, the EMA update, gradients to the student only,
regularisers on the weak view, the ACDC recipe, and tiny runs that resume exactly (with a regulariser, with sparse labels).

The run helpers here are shared with ``test_bcp.py``."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from test_methods import K, batch

from semiseg.config import RECIPES, ModelConfig, build_config, load_yaml
from semiseg.core import Batch
from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.losses.consistency import softmax_mse
from semiseg.losses.ramp import ramp_weight
from semiseg.methods import build_method

#: no normalisation: a network's output on an image does not depend on the rest of its batch
PLAIN = ModelConfig(name="unet", width=4, depth=2, norm="none", dropout=0.0)


def build(name: str = "mean_teacher", model: ModelConfig = PLAIN, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_method({"name": name, **options}, model, in_channels=1, num_classes=K).train()


def with_strong(data: dict[str, Batch], streams=("unlabeled",), seed: int = 5) -> dict[str, Batch]:
    """``data`` with one strong view (a noisy copy) per image of ``streams``."""
    g = torch.Generator().manual_seed(seed)
    out = dict(data)
    for s in streams:
        b = data[s]
        strong = b.image[:, None] + 0.3 * torch.randn(len(b), 1, *b.image.shape[1:], generator=g)
        out[s] = dataclasses.replace(b, strong=strong)
    return out


def perturb_student(method, seed: int = 1) -> None:
    """Moves the student away from the teacher (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------ the loss
def keyed(data: dict[str, Batch]) -> dict[str, Batch]:
    """``data`` with distinct sample keys per stream (the engine's (seed, epoch, position))."""
    out = {}
    for i, (s, b) in enumerate(data.items()):
        key = torch.stack([torch.full((len(b),), i), torch.zeros(len(b)), torch.arange(len(b))], 1)
        out[s] = dataclasses.replace(b, key=key.long())
    return out


def test_phase_asks_for_strong_views_only_with_strong_perturbation():
    (phase,) = build().phases()
    assert phase.streams == ("labeled", "unlabeled") and not phase.views
    (phase,) = build(perturbation="strong").phases()
    assert phase.views["unlabeled"].strong == 1 and not phase.views["unlabeled"].cutmix
    assert "labeled" not in phase.views
    (phase,) = build(perturbation="strong", labeled_consistency=True).phases()
    assert phase.views["labeled"].strong == 1


def test_teacher_noise_is_clipped_keyed_per_sample_and_of_the_configured_std():
    method = build(teacher_noise_std=0.1, teacher_noise_clip=0.2)
    unl = keyed(batch())["unlabeled"]
    big = dataclasses.replace(unl, image=torch.zeros(len(unl), 1, 64, 64))
    noise = method.noisy(big)
    assert noise.abs().max() <= 0.2 and noise.abs().max() > 0.19  # clipped at 2 sigma
    assert 0.08 < float(noise.std()) < 0.1  # N(0, 0.1²) loses a little spread to the clip
    assert not torch.equal(noise[0], noise[1])  # each sample its own draw
    torch.testing.assert_close(method.noisy(big), noise)  # the same keys give the same noise
    moved = dataclasses.replace(big, key=big.key + torch.tensor([0, 1, 0]))  # the next epoch
    assert not torch.equal(method.noisy(moved), noise)
    # additive and independent of the image
    zeros = dataclasses.replace(unl, image=torch.zeros_like(unl.image))
    torch.testing.assert_close(method.noisy(unl) - unl.image, method.noisy(zeros))


@pytest.mark.parametrize("labeled_consistency", [False, True])
@pytest.mark.parametrize("perturbation", ["noise", "strong"])
def test_consistency_is_softmax_mse_of_student_and_perturbed_teacher(perturbation, labeled_consistency):
    method = build(
        labeled_consistency=labeled_consistency,
        consistency_start_step=0,
        ramp_up_steps=0,
        perturbation=perturbation,
    )
    perturb_student(method)
    streams = ("unlabeled", "labeled") if labeled_consistency else ("unlabeled",)
    data = keyed(with_strong(batch(), streams))
    lab = data["labeled"]
    out = method.training_step(data, "train", "main")
    with torch.no_grad():
        if perturbation == "strong":  # student: strong view; teacher: weak view
            student = torch.cat([method.model(data[s].strong[:, 0]) for s in streams])
            target = torch.cat([method.teacher(data[s].image).softmax(1) for s in streams])
        else:  # student: weak view; teacher: weak view + noise
            student = torch.cat([method.model(data[s].image) for s in streams])
            target = torch.cat([method.teacher(method.noisy(data[s])).softmax(1) for s in streams])
        expected = softmax_mse(student, target)
        supervised = method.supervised_loss(method.model(lab.image), lab.mask)
    torch.testing.assert_close(out["consistency"].detach(), expected)
    torch.testing.assert_close(out["loss"].detach(), supervised["loss"] + 0.1 * expected)
    assert out["consistency"] > 0


@pytest.mark.parametrize("joint", [False, True])
def test_the_student_forwards_each_stream_alone_or_both_as_one_batch(joint):
    bn = ModelConfig(width=4, depth=2, norm="batch")
    method = build(model=bn, joint_batch=joint, consistency_start_step=0, ramp_up_steps=0)
    perturb_student(method)
    data = keyed(batch())
    lab, unl = data["labeled"], data["unlabeled"]
    out = method.training_step(data, "train", "main")
    torch.manual_seed(0)
    with torch.no_grad():
        if joint:  # one batch: both streams share the batch-norm statistics
            both = method.model(torch.cat([lab.image, unl.image]))
            logits_lab, logits_unl = both[: len(lab)], both[len(lab) :]
        else:
            logits_lab, logits_unl = method.model(lab.image), method.model(unl.image)
        target = method.teacher_probs(method.noisy(unl))
    torch.testing.assert_close(out["consistency"].detach(), softmax_mse(logits_unl, target))
    torch.testing.assert_close(out["ce"].detach(), method.supervised_loss(logits_lab, lab.mask)["ce"])
    other = build(model=bn, joint_batch=not joint, consistency_start_step=0, ramp_up_steps=0)
    perturb_student(other)
    assert not torch.allclose(other.training_step(data, "train", "main")["consistency"], out["consistency"])


def test_consistency_weight_waits_then_ramps_up_over_the_phase():
    method = build(consistency_weight=0.4, ramp_up_steps=100, consistency_start_step=10)
    assert method.current_consistency_weight(0) == 0.0
    assert method.current_consistency_weight(9) == 0.0
    assert method.current_consistency_weight(10) == pytest.approx(0.4 * math.exp(-5 * 0.9**2))
    assert method.current_consistency_weight(50) == pytest.approx(ramp_weight(0.4, 50, 100))
    assert method.current_consistency_weight(100) == 0.4 == method.current_consistency_weight(10**6)
    data = with_strong(batch())
    method.phase_step, method.global_step = 50, 10**6  # the ramp counts the phase's steps
    out = method.training_step(data, "train", "main")
    assert float(out["consistency_weight"]) == pytest.approx(ramp_weight(0.4, 50, 100))
    torch.testing.assert_close(
        out["loss"], out["ce"] * 0.5 + out["dice"] * 0.5 + ramp_weight(0.4, 50, 100) * out["consistency"]
    )


def test_defaults_are_ssl4mis():
    cfg = build().cfg
    assert cfg.ema_decay == 0.99 and cfg.ema_warmup
    assert cfg.consistency_weight == 0.1 and not cfg.labeled_consistency
    assert cfg.ramp_up_steps == 200 * 150 and cfg.consistency_start_step == 1000
    assert cfg.ce_weight == cfg.dice_weight == 0.5
    assert cfg.perturbation == "noise" and cfg.teacher_noise_std == 0.1 and cfg.teacher_noise_clip == 0.2
    assert not cfg.joint_batch  # a deviation from SSL4MIS, documented in the module


# ------------------------------------------------------------------------------------------ the teacher
@pytest.mark.parametrize(
    ("warmup", "step", "decay"), [(True, 0, 0.0), (True, 3, 0.75), (True, 500, 0.99), (False, 0, 0.99)]
)
def test_ema_update_equals_its_formula(warmup, step, decay):
    method = build(ema_warmup=warmup, model=ModelConfig(width=4, depth=2, norm="batch"))
    method.training_step(with_strong(batch()), "train", "main")  # batch-norm statistics move
    perturb_student(method)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student = dict(method.model.state_dict())
    method.phase_step = step
    assert method.current_ema_decay(step) == pytest.approx(decay)
    method.on_step_end("train", "main")
    params = {n for n, _ in method.teacher.named_parameters()}
    for k, v in method.teacher.state_dict().items():
        if k in params:
            torch.testing.assert_close(v, decay * before[k] + (1 - decay) * student[k])
        else:  # buffers (batch-norm statistics) are copied
            assert torch.equal(v, student[k])


def test_one_step_gives_gradients_to_the_student_only():
    method = build(model=ModelConfig(width=4, depth=2, norm="batch"), consistency_start_step=0)
    perturb_student(method)
    out = method.training_step(with_strong(batch()), "train", "main")
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    assert not any(
        p is q for p in method.parameters_for("train", "main") for q in method.teacher.parameters()
    )


def test_teacher_starts_as_the_student():
    method = build()
    perturb_student(method)
    method.on_phase_start("train")
    state = method.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in method.teacher.state_dict().items())


@pytest.mark.parametrize("perturbation", ["noise", "strong"])
def test_regularizers_see_the_student_on_the_weak_view(perturbation):
    spec = {"name": "tv", "weight": 0.3, "streams": ["labeled", "unlabeled"]}
    method = build(regularizers=[spec], consistency_start_step=0, perturbation=perturbation)
    perturb_student(method)
    data = keyed(with_strong(batch()))
    out = method.training_step(data, "train", "main")
    with torch.no_grad():
        logits = {s: method.model(data[s].image) for s in ("labeled", "unlabeled")}
        expected = method.regularizers[0](logits, data)
    torch.testing.assert_close(out["reg/tv"].detach(), expected)
    weight = ramp_weight(0.1, 0, 30000)  # phase step 0 of the default ramp
    assert float(out["consistency_weight"]) == pytest.approx(weight)
    supervised = 0.5 * out["ce"] + 0.5 * out["dice"]
    torch.testing.assert_close(out["loss"], supervised + weight * out["consistency"] + 0.3 * out["reg/tv"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"ema_decay": 1.5}, r"'method\.ema_decay' must be in \[0, 1\]"),
        ({"consistency_weight": -1.0}, r"'method\.consistency_weight' must be a finite number >= 0"),
        ({"ramp_up_steps": -1}, r"'method\.ramp_up_steps' must be >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        build(**option)


# ------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("recipe", ["mean-teacher-acdc", "bcp-acdc"])
def test_acdc_recipes_load_and_build(recipe):
    raw = load_yaml(RECIPES / f"{recipe}.yaml")
    full, quick = build_config(raw, source=recipe), build_config(raw, quick=True, source=recipe)
    for cfg in (full, quick):
        assert cfg.data.dataset == "acdc" and cfg.data.split.unlabeled == "rest"
        assert cfg.data.split.labeled_by == "group" and cfg.data.split.labeled == 3
        build_method(cfg.method, cfg.model, in_channels=1, num_classes=4)
    assert full.data.image_size == [256, 256] and full.train.batch_size == 12
    assert quick.data.image_size == [128, 128] and quick.train.batch_size == 8
    iters = quick.train.iters_per_epoch
    quick_epochs = quick.train.epochs + (quick.method.get("pretrain_epochs") or 0)
    assert quick_epochs * iters == 25 * 40  # supervised-acdc's quick budget
    full_selftrain = full.train.epochs * full.train.iters_per_epoch
    assert full_selftrain == 30000
    if recipe == "mean-teacher-acdc":  # the ramp spans the run, as SSL4MIS's
        assert full.method["ramp_up_steps"] == full_selftrain
        assert quick.method["ramp_up_steps"] == quick.train.epochs * iters


# ------------------------------------------------------------------------------------------ end to end
TINY = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 20,
        "shapes_classes": 3,
        "split": {"labeled": 4, "unlabeled": "rest", "seed": 0},
    },
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "mean_teacher", "ramp_up_steps": 4, "consistency_start_step": 1},
    "train": {
        "epochs": 3,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "scheduler": "cosine",
        "progress": False,
        "plots": False,
        "log_every": 1,
        "augment": {"hflip": True, "rotate_degrees": 10.0},
    },
}


def tiny_config(method: dict, *overrides: str):
    raw = copy.deepcopy(TINY)
    raw["method"] = method
    return build_config(raw, list(overrides), source="tiny")


def train(cfg, out, **kw):
    return engine_run.train(cfg, output_dir=out, final_eval=False, **kw)


def epochs(out) -> list[dict]:
    return [
        {k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in (out / "epochs.jsonl").open()
    ]


def method_state(path) -> dict:
    return load_checkpoint(path)["method_state"]


def test_tiny_run_resumes_exactly(tmp_path, resume_check):
    log = resume_check(tiny_config(TINY["method"]), tmp_path)
    assert len(log) == 3 and all(e["train/consistency"] > 0 for e in log)
    state = method_state(tmp_path / "straight" / "last.pt")
    teacher = {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}
    student = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in student if student[k].is_floating_point())


@pytest.mark.parametrize("supervision", ["dense", "sparse"])
def test_runs_with_a_regularizer_dense_and_sparse(tmp_path, supervision):
    method = {**TINY["method"], "regularizers": [{"name": "tv", "weight": 0.1}]}
    train(tiny_config(method, f"data.split.supervision={supervision}"), tmp_path)
    log = epochs(tmp_path)
    assert len(log) == 3
    assert all(math.isfinite(e["train/reg/tv"]) and e["train/reg/tv"] > 0 for e in log)
    assert all(math.isfinite(e["train/loss"]) for e in log)
