"""The ``fixmatch`` method: confidence mask, CutMix of images and pseudo-labels with one box, the loss
formula, the pass budget, regularisers on the weak prediction, and tiny runs that resume exactly.

The helpers here (spies, tiny runs) are shared with ``test_unimatch.py``."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from test_methods import K, batch, build

from semiseg.config import build_config, load_yaml
from semiseg.core import IGNORE_INDEX, Batch
from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.methods import fixmatch as fixmatch_module


# ------------------------------------------------------------------------------------ shared helpers
def with_boxes(data: dict[str, Batch], k: int, seed: int = 3) -> dict[str, Batch]:
    """``data`` with ``k`` strong views per unlabeled image and a different box per sample and view
    (the last sample's first view without a box)."""
    unl = data["unlabeled"]
    g = torch.Generator().manual_seed(seed)
    n, (h, w) = len(unl), unl.image.shape[-2:]
    strong = unl.image[:, None] + 0.2 * torch.randn(n, k, *unl.image.shape[1:], generator=g)
    boxes = torch.zeros(n, k, h, w, dtype=torch.bool)
    for i in range(n):
        for j in range(k):
            top, left = 2 + 3 * i + j, 1 + 5 * j + 2 * i
            boxes[i, j, top : top + 8 + 2 * j, left : left + 10] = True
    boxes[n - 1, 0] = False
    return {**data, "unlabeled": dataclasses.replace(unl, strong=strong, cutmix=boxes)}


class Spy:
    """Records the weak pseudo-labels, the unlabeled-loss targets and the regulariser inputs of a
    method's steps (a wrapper around the method's own functions, results unchanged)."""

    def __init__(self, method, monkeypatch, module):
        self.weak: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.regularized: list[dict[str, torch.Tensor]] = []
        self.inputs: list[torch.Tensor] = []
        original_pseudo, original_loss = module.pseudo_labels, method.unlabeled_loss
        original_reg = method.regularization

        def pseudo(probs):
            labels, confidence = original_pseudo(probs)
            self.weak.append((probs, labels, confidence))
            return labels, confidence

        def loss(logits, labels, confidence):
            self.targets.append((logits, labels, confidence))
            return original_loss(logits, labels, confidence)

        def reg(logits, data):
            self.regularized.append(logits)
            return original_reg(logits, data)

        monkeypatch.setattr(module, "pseudo_labels", pseudo)
        monkeypatch.setattr(method, "unlabeled_loss", loss)
        monkeypatch.setattr(method, "regularization", reg)
        method.model.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach()))


def check_cutmix(spy: Spy, data: dict[str, Batch], strong_inputs: torch.Tensor, k: int) -> None:
    """Each view's network input and its pseudo-labels / confidences show the partner (the previous
    sample) exactly inside that view's box and the sample itself outside."""
    unl = data["unlabeled"]
    _, labels, confidence = spy.weak[0]
    views = strong_inputs.chunk(k)
    for j in range(k):
        box = unl.cutmix[:, j]
        image, partner = unl.strong[:, j], unl.strong[:, j].roll(1, 0)
        inside = box[:, None].expand_as(image)
        assert torch.equal(views[j][inside], partner[inside])
        assert torch.equal(views[j][~inside], image[~inside])
        _, target, conf = spy.targets[j]
        assert torch.equal(target[box], labels.roll(1, 0)[box]) and torch.equal(target[~box], labels[~box])
        assert torch.equal(conf[box], confidence.roll(1, 0)[box])
        assert torch.equal(conf[~box], confidence[~box])
        assert not target.requires_grad and not conf.requires_grad
    # the boxes differ between samples, so the partner's labels really moved
    assert not torch.equal(spy.targets[0][1], labels)


def check_low_confidence_pixels_get_no_gradient(method, loss: str) -> None:
    method.cfg.unlabeled_loss = loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 8, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, K, (2, 8, 8), generator=g)
    confidence = torch.full((2, 8, 8), 0.99)
    confidence[:, :3] = method.cfg.threshold - 1e-3
    value, ratio = method.unlabeled_loss(logits, labels, confidence)
    value.backward()
    per_pixel = logits.grad.abs().sum(1)
    assert (per_pixel[:, :3] == 0).all() and (per_pixel[:, 3:] > 0).all()
    assert float(ratio) == pytest.approx(5 / 8)


def check_strong_gradient_follows_confidence(method, data, monkeypatch, module) -> None:
    """In a whole step (unlabeled loss only), the strong logits get gradient exactly at the pixels
    whose mixed confidence reaches τ."""
    method.cfg.supervised_weight = 0.0
    outputs = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        outputs.append(output)

    spy = Spy(method, monkeypatch, module)
    torch.manual_seed(0)
    method.training_step(data, "train", "main")
    method.cfg.threshold = float(spy.targets[0][2].median())  # about half the pixels confident
    method.model.register_forward_hook(keep)
    spy.targets.clear()
    torch.manual_seed(0)
    method.training_step(data, "train", "main")["loss"].backward()
    strong = outputs[-1]  # the strong views' pass comes last
    k = data["unlabeled"].strong.shape[1]
    grads = strong.grad.abs().sum(1).chunk(k)
    for j in range(k):
        keep_pixels = spy.targets[j][2] >= method.cfg.threshold
        assert keep_pixels.any() and (~keep_pixels).any()
        assert (grads[j][~keep_pixels] == 0).all() and (grads[j][keep_pixels] > 0).all()


TINY = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 20,
        "shapes_classes": 3,
        "split": {"labeled": 4, "unlabeled": "rest", "seed": 0},
    },
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "fixmatch"},
    "train": {
        "epochs": 3,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "progress": False,
        "plots": False,
        "log_every": 1,
        "augment": {"hflip": True, "rotate_degrees": 10.0},
        "scheduler": "cosine",
    },
}


def tiny_config(name: str, *overrides: str, regularizers: list | None = None, threshold: float = 0.5):
    """The tiny shapes run of method ``name`` (τ lowered so that the tiny net has confident pixels)."""
    raw = copy.deepcopy(TINY)
    raw["method"] = {"name": name, "threshold": threshold, "regularizers": regularizers or []}
    return build_config(raw, list(overrides), source="tiny")


def train(cfg, out, **kw):
    return engine_run.train(cfg, output_dir=out, final_eval=False, **kw)


def method_state(path) -> dict:
    return load_checkpoint(path)["method_state"]


def epochs(out) -> list[dict]:
    lines = (out / "epochs.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in lines]


def check_recipe(name: str) -> None:
    """The ACDC recipe: UniMatch's protocol in full, supervised-acdc's budget in quick mode."""
    full = build_config(load_yaml(f"{name}-acdc"), source=name)
    assert full.method["name"] == name and full.data.split.unlabeled == "rest"
    assert full.data.split.labeled == 3 and full.data.split.labeled_by == "group"
    t = full.train
    assert (t.batch_size, t.epochs * t.iters_per_epoch, t.optimizer, t.lr) == (12, 30_000, "sgd", 0.01)
    assert full.data.image_size == [256, 256]
    quick = build_config(load_yaml(f"{name}-acdc"), quick=True, source=name)
    reference = build_config(load_yaml("supervised-acdc"), quick=True, source="supervised-acdc")
    for section, key in [("data", "image_size"), ("train", "batch_size"), ("train", "iters_per_epoch"),
                         ("train", "optimizer"), ("train", "lr"), ("train", "augment")]:  # fmt: skip
        assert getattr(getattr(quick, section), key) == getattr(getattr(reference, section), key), key
    # the same number of iterations: a supervised warm-up, then the phase with the unlabeled loss
    assert quick.method["warmup_epochs"] + quick.train.epochs == reference.train.epochs
    assert quick.method["pseudo_source"] == "ema" and full.method.get("pseudo_source", "student") == "student"


def check_regularized_run(name: str, supervision: str, tmp_path) -> None:
    cfg = tiny_config(
        name, f"data.split.supervision={supervision}", regularizers=[{"name": "tv", "weight": 0.1}]
    )
    train(cfg, tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 6
    for s in steps:
        assert math.isfinite(s["loss"]) and s["reg/tv"] > 0 and 0 <= s["confident"] <= 1
    assert all("train/reg/tv" in e for e in epochs(tmp_path))


# ------------------------------------------------------------------------------------------- tests
def test_phase_asks_for_one_cutmixed_strong_view():
    (phase,) = build("fixmatch").phases()
    assert set(phase.streams) == {"labeled", "unlabeled"}
    assert phase.views["unlabeled"].strong == 1 and phase.views["unlabeled"].cutmix


@pytest.mark.parametrize("loss", ["ce", "dice", "ce_dice"])
def test_low_confidence_pixels_get_no_gradient(loss):
    check_low_confidence_pixels_get_no_gradient(build("fixmatch"), loss)


@pytest.mark.parametrize("loss", ["ce", "dice", "ce_dice"])
def test_strong_gradient_only_at_confident_pixels(monkeypatch, loss):
    method = build("fixmatch", unlabeled_loss=loss).train()
    check_strong_gradient_follows_confidence(method, with_boxes(batch(), 1), monkeypatch, fixmatch_module)


def test_cutmix_moves_the_box_in_image_and_pseudo_labels_alike(monkeypatch):
    method = build("fixmatch").train()
    spy = Spy(method, monkeypatch, fixmatch_module)
    data = with_boxes(batch(), 1)
    method.training_step(data, "train", "main")
    check_cutmix(spy, data, spy.inputs[1], k=1)


def test_passes_weak_prediction_and_regularizer_input(monkeypatch):
    """Two passes (labeled + weak together in training mode, then the strong view); the regulariser
    sees the weak pass's logits, with gradient, the very logits the pseudo-labels come from."""
    method = build("fixmatch", regularizers=[{"name": "tv", "weight": 0.1}]).train()
    spy = Spy(method, monkeypatch, fixmatch_module)
    data = with_boxes(batch(), 1)
    out = method.training_step(data, "train", "main")
    lab, unl = data["labeled"], data["unlabeled"]
    assert [len(x) for x in spy.inputs] == [len(lab) + len(unl), len(unl)]
    assert torch.equal(spy.inputs[0], torch.cat([lab.image, unl.image]))
    (logits,) = spy.regularized
    assert logits["unlabeled"].requires_grad and logits["labeled"].requires_grad
    assert torch.equal(logits["unlabeled"].detach().softmax(1), spy.weak[0][0])
    assert out["reg/tv"] > 0


def test_loss_is_the_weighted_sum_of_its_parts():
    method = build("fixmatch", supervised_weight=0.3, unlabeled_weight=2.0).train()
    out = method.training_step(with_boxes(batch("sparse"), 1), "train", "main")
    torch.testing.assert_close(out["supervised"], 0.5 * out["ce"] + 0.5 * out["dice"])
    torch.testing.assert_close(out["loss"], 0.3 * out["supervised"] + 2.0 * out["strong"])
    assert 0 <= float(out["confident"]) <= 1


def test_defaults_are_unimatchs_fixmatch_baseline():
    cfg = build("fixmatch").cfg
    assert (cfg.threshold, cfg.supervised_weight, cfg.unlabeled_weight) == (0.95, 0.5, 0.5)
    assert (cfg.ce_weight, cfg.dice_weight, cfg.unlabeled_loss) == (0.5, 0.5, "ce")


@pytest.mark.parametrize(
    "option, message",
    [({"threshold": 1.5}, "'method.threshold' must be in"), ({"unlabeled_weight": -1.0}, "unlabeled_weight")],
)
def test_bad_options_are_one_line_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        build("fixmatch", **option)


def test_recipe():
    check_recipe("fixmatch")


def test_tiny_run_resumes_exactly(tmp_path, resume_check):
    log = resume_check(tiny_config("fixmatch"), tmp_path)
    assert all(0 <= e["train/confident"] <= 1 and "train/strong" in e for e in log)


@pytest.mark.parametrize("supervision", ["dense", "sparse"])
def test_runs_with_a_regularizer_dense_and_sparse(tmp_path, supervision):
    check_regularized_run("fixmatch", supervision, tmp_path)


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
@pytest.mark.parametrize("strong_bn_stats", [False, True])
def test_strong_views_leave_the_running_statistics_alone(name, strong_bn_stats):
    """By default only the labeled + weak pass moves the batch-norm running statistics."""
    method = build(name, strong_bn_stats=strong_bn_stats).train()
    data = with_boxes(batch(), k=method.strong_views())
    lab, unl = data["labeled"], data["unlabeled"]
    reference = copy.deepcopy(method)
    method.training_step(data, "train", "main")
    with torch.no_grad():  # the weak pass alone (UniMatch's feature-perturbation decode aside)
        reference.model(torch.cat([lab.image, unl.image]))
    stats = [k for k in method.state_dict() if k.startswith("model.encoder") and "running_mean" in k]
    same = all(torch.equal(method.state_dict()[k], reference.state_dict()[k]) for k in stats)
    assert same != strong_bn_stats


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_warmup_phase_trains_on_labeled_images_only_first(name, tmp_path):
    method = build(name, warmup_epochs=2)
    warmup, main = method.phases()
    assert (warmup.name, warmup.epochs, warmup.final, set(warmup.streams)) == (
        "warmup",
        2,
        False,
        {"labeled"},
    )
    assert main.views["unlabeled"].strong == method.strong_views()
    data = with_boxes(batch(), k=method.strong_views())
    out = method.training_step({"labeled": data["labeled"]}, "warmup", "main")
    assert set(out) >= {"loss", "ce", "dice"} and "confident" not in out
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build(name, warmup_epochs=-1)
    cfg = tiny_config(name, "method.warmup_epochs=1")
    train(cfg, tmp_path)
    log = epochs(tmp_path)
    assert [e["phase"] for e in log] == ["warmup"] + ["train"] * cfg.train.epochs
    assert "train/confident" not in log[0] and 0 <= log[-1]["train/pseudo_foreground"] <= 1


def test_ce_dice_unlabeled_loss_is_the_supervised_mix_on_confident_pixels():
    from semiseg.core import IGNORE_INDEX
    from semiseg.losses.supervised import masked_cross_entropy, masked_dice_loss

    method = build("fixmatch", unlabeled_loss="ce_dice", ce_weight=0.3, dice_weight=0.7, threshold=0.6)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 8, 8, generator=g)
    labels = torch.randint(0, K, (2, 8, 8), generator=g)
    confidence = torch.rand(2, 8, 8, generator=g)
    confidence[:, 0] = 0.6  # exactly τ: confident (confidence >= τ)
    loss, ratio = method.unlabeled_loss(logits, labels, confidence)
    target = labels.masked_fill(confidence < 0.6, IGNORE_INDEX)
    expected = 0.3 * masked_cross_entropy(logits, target) + 0.7 * masked_dice_loss(logits, target)
    assert torch.allclose(loss, expected) and float(ratio) == float((confidence >= 0.6).float().mean())


# ------------------------------------------------------------------ pseudo-labels from an EMA teacher
def perturbed(method):
    """``method`` with a student that differs from its teacher (so the two are told apart)."""
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return method


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_ema_teacher_gives_the_pseudo_labels(name, monkeypatch):
    method = build(name, pseudo_source="ema", threshold=0.0).train()
    method.on_phase_start("train")
    perturbed(method)
    spy = Spy(method, monkeypatch, fixmatch_module)
    data = with_boxes(batch(), k=method.strong_views())
    teacher = copy.deepcopy(method.teacher).train()
    with torch.no_grad():
        expected = teacher(data["unlabeled"].image).softmax(1)
    out = method.training_step(data, "train", "main")
    torch.testing.assert_close(spy.weak[0][0], expected)
    out["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.model.parameters())
    trained = {id(p) for p in method.parameters_for("train", "main")}
    assert not trained & {id(p) for p in method.teacher.parameters()}


def test_ema_teacher_update_equals_its_formula():
    method = build("fixmatch", pseudo_source="ema", ema_decay=0.9)
    method.on_phase_start("train")
    perturbed(method)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in method.model.state_dict().items()}
    method.on_step_end("train", "main")
    params = {n for n, _ in method.teacher.named_parameters()}
    for k, v in method.teacher.state_dict().items():
        expected = 0.9 * before[k] + 0.1 * student[k] if k in params else student[k]
        torch.testing.assert_close(v, expected)
    after = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    perturbed(method)
    method.on_step_end("warmup", "main")  # the teacher rests during the supervised warm-up
    torch.testing.assert_close(method.teacher.state_dict(), after)


@pytest.mark.parametrize("regularizers, weak_in_pass", [([], False), ([{"name": "tv", "weight": 0.1}], True)])
def test_ema_teacher_skips_the_students_weak_pass_unless_a_regulariser_needs_it(
    regularizers, weak_in_pass, monkeypatch
):
    method = build("fixmatch", pseudo_source="ema", regularizers=regularizers).train()
    spy = Spy(method, monkeypatch, fixmatch_module)
    data = with_boxes(batch(), 1)
    lab, unl = data["labeled"], data["unlabeled"]
    method.training_step(data, "train", "main")
    first = len(lab) + len(unl) if weak_in_pass else len(lab)
    assert [len(x) for x in spy.inputs] == [first, len(unl)]  # student passes: (labeled [+ weak]), strong


def test_unimatch_with_ema_teacher_decodes_no_clean_weak_views(monkeypatch):
    method = build("unimatch", pseudo_source="ema").train()
    sizes = []
    original = method.model.decode

    def counted(features, *args):
        sizes.append(len(features[0]))
        return original(features, *args)

    monkeypatch.setattr(method.model, "decode", counted)
    data = with_boxes(batch(), 2)
    method.training_step(data, "train", "main")
    n_l, n_u = len(data["labeled"]), len(data["unlabeled"])
    assert sizes[0] == n_l + n_u  # labeled clean + weak perturbed; the teacher gives the pseudo-labels


def test_tiny_run_with_ema_teacher_resumes_exactly(tmp_path, resume_check):
    log = resume_check(tiny_config("fixmatch", "method.pseudo_source=ema"), tmp_path)
    assert all("train/strong" in e for e in log)


def test_warmup_then_ema_teacher_resumes_exactly_at_the_phase_boundary(tmp_path, resume_check):
    """A crash before the first epoch of "train" (after the warm-up) resumes to the same run: the
    teacher is set from the warmed-up student once, at the start of "train"."""
    cfg = tiny_config("fixmatch", "method.pseudo_source=ema", "method.warmup_epochs=2")
    log = resume_check(
        cfg, tmp_path, crash_at=lambda trainer, phase: phase.name == "train" and trainer.epoch == 0
    )
    assert [e["phase"] for e in log][:2] == ["warmup", "warmup"] and "train/strong" in log[-1]


def test_teacher_starts_as_the_warmed_up_student():
    method = build("fixmatch", pseudo_source="ema")
    method.on_phase_start("warmup")
    perturbed(method)  # the warm-up trains the student; the teacher does not follow it yet
    assert not all(torch.equal(a, b) for a, b in zip(method.teacher.parameters(), method.model.parameters()))
    method.on_phase_start("train")
    assert all(
        torch.equal(a, b)
        for a, b in zip(method.teacher.state_dict().values(), method.model.state_dict().values())
    )


@pytest.mark.parametrize("pseudo_source", ["student", "ema"])
@pytest.mark.parametrize("loss", ["ce", "dice"])
def test_padding_outside_valid_gets_no_pseudo_label_and_no_gradient(pseudo_source, loss):
    """3D patch padding (``Batch.valid`` False) is no image: no pseudo-label, confidence 0, and no
    gradient from the unlabeled loss even at τ = 0, where every other pixel counts."""
    method = build("fixmatch", threshold=0.0, unlabeled_loss=loss, pseudo_source=pseudo_source)
    unl = batch()["unlabeled"]
    valid = torch.ones(unl.mask.shape, dtype=torch.bool)
    valid[:, :, :5] = False  # the first five columns: padding
    unl = dataclasses.replace(unl, valid=valid)
    weak = torch.randn(len(unl), K, *unl.image.shape[2:]) if pseudo_source == "student" else None
    labels, confidence = method.weak_targets(unl, weak)
    assert (labels[~valid] == IGNORE_INDEX).all() and (labels[valid] != IGNORE_INDEX).all()
    assert (confidence[~valid] == 0).all() and (confidence[valid] > 0).all()
    logits = torch.randn(len(unl), K, *unl.image.shape[2:], requires_grad=True)
    method.unlabeled_loss(logits, labels, confidence)[0].backward()
    per_pixel = logits.grad.abs().sum(1)
    assert (per_pixel[~valid] == 0).all() and (per_pixel[valid] > 0).all()
