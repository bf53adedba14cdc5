"""The training engine: exact resume, divergence handling, atomic checkpoints, model selection, outputs,
and a multi-phase two-optimizer method run through the unchanged engine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from PIL import Image

from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint, save_checkpoint
from semiseg.engine.evaluate import FAST_METRICS, evaluate_records
from semiseg.engine.trainer import Trainer
from semiseg.errors import ConfigError, DataError, TrainingDiverged
from semiseg.io import atomic_write, atomic_write_text
from semiseg.losses import masked_cross_entropy
from semiseg.methods import METHODS, Method, MethodConfig, Phase, register
from semiseg.methods.supervised import Supervised
from semiseg.models import build_model


def train(cfg, out, **kw):
    return engine_run.train(cfg, output_dir=out, **kw)


def epoch_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def assert_same_weights(path_a, path_b) -> None:
    a, b = load_checkpoint(path_a)["method_state"], load_checkpoint(path_b)["method_state"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


# ---------------------------------------------------------------------------------------------- resume
AUGMENTED = ("train.augment.hflip=true", "train.augment.rotate_degrees=15", "model.dropout=0.2")


def test_resume_with_more_epochs_equals_straight_run(tmp_path, make_config):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(make_config(*AUGMENTED, "train.epochs=3"), straight)
    train(make_config(*AUGMENTED, "train.epochs=1"), resumed)
    assert len(epoch_log(resumed)) == 1
    train(make_config(*AUGMENTED, "train.epochs=3"), resumed, resume=True)

    assert_same_weights(straight / "last.pt", resumed / "last.pt")
    assert without_seconds(epoch_log(straight)) == without_seconds(epoch_log(resumed))
    assert len(epoch_log(resumed)) == 3
    assert (straight / "steps.jsonl").read_text() == (resumed / "steps.jsonl").read_text()
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert (a["epoch"], a["global_step"], a["best"]) == (b["epoch"], b["global_step"], b["best"])


def test_resume_after_interruption_mid_epoch_equals_straight_run(tmp_path, make_config, monkeypatch):
    """A crash in the middle of epoch 2 (cosine schedule, momentum SGD, augmentation, dropout)."""
    cfg = make_config(*AUGMENTED, "train.scheduler=cosine", "train.optimizer=sgd")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(cfg, straight)

    original_step = Trainer.train_step

    def crashing_step(self, *args, **kwargs):
        if self.global_step == 3:  # third step done and logged: the crash hits the 4th (epoch 2)
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, crashed)
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert load_checkpoint(crashed / "last.pt")["epoch"] == 1
    assert len((crashed / "steps.jsonl").read_text().splitlines()) == 3  # one step beyond last.pt

    train(cfg, crashed, resume=True)
    assert_same_weights(straight / "last.pt", crashed / "last.pt")
    assert without_seconds(epoch_log(straight)) == without_seconds(epoch_log(crashed))
    assert (straight / "steps.jsonl").read_text() == (crashed / "steps.jsonl").read_text()
    assert_same_weights(straight / "best.pt", crashed / "best.pt")


def test_resume_refuses_a_changed_config(tmp_path, make_config):
    train(make_config("train.epochs=1"), tmp_path)
    record = {name: (tmp_path / name).read_text() for name in ("config.json", "split.json")}
    with pytest.raises(ConfigError, match=r"config differs from the checkpoint at 'train.lr'"):
        train(make_config("train.epochs=2", "train.lr=0.5"), tmp_path, resume=True)
    assert {name: (tmp_path / name).read_text() for name in record} == record  # the run's record kept


def test_resume_refuses_fewer_epochs_and_a_missing_best_model(tmp_path, make_config):
    train(make_config("train.epochs=2"), tmp_path)
    record = {name: (tmp_path / name).read_text() for name in ("config.json", "split.json")}
    with pytest.raises(ConfigError, match=r"--resume: train.epochs can only grow on resume \(2 → 1\)"):
        train(make_config("train.epochs=1"), tmp_path, resume=True)
    best = load_checkpoint(tmp_path / "last.pt")["best"]
    assert best["epoch"] is not None
    (tmp_path / "best.pt").unlink()  # the model the run selected on validation: resuming would report another
    with pytest.raises(ConfigError, match=r"best.pt is missing, but the run selected it .*epoch"):
        train(make_config("train.epochs=3"), tmp_path, resume=True)
    assert {name: (tmp_path / name).read_text() for name in record} == record


def test_resume_refuses_a_new_length_for_several_phases(tmp_path, make_config):
    """pseudo_label's phases all run train.epochs: a longer resume would lengthen only those not trained yet."""
    cfg = ("method.name=pseudo_label", "data.split.unlabeled=rest", "method.rounds=1")
    train(make_config(*cfg, "train.epochs=1"), tmp_path)
    with pytest.raises(
        ConfigError, match=r"train.epochs changed \(1 → 2\) but it is the length of several phases"
    ):
        train(make_config(*cfg, "train.epochs=2"), tmp_path, resume=True)


def test_resume_without_checkpoint(tmp_path, make_config):
    with pytest.raises(ConfigError, match="--resume: no checkpoint at"):
        train(make_config(), tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()  # no folder made for a refused resume


def test_an_output_folder_that_is_a_file_is_refused_in_one_line(tmp_path, make_config):
    (tmp_path / "x.bak").write_text("mine")
    with pytest.raises(ConfigError, match=r"x.bak: the output folder is a file"):
        train(make_config(), tmp_path / "x.bak")
    assert (tmp_path / "x.bak").read_text() == "mine"


# ------------------------------------------------------------------------------------------ divergence
def nan_after(monkeypatch, good_steps: int) -> None:
    """Make the supervised method return a NaN loss from call ``good_steps`` on."""
    original = Supervised.training_step
    calls = {"n": 0}

    def step(self, batch, phase, optimizer):
        out = original(self, batch, phase, optimizer)
        calls["n"] += 1
        if calls["n"] > good_steps:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Supervised, "training_step", step)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, make_config, monkeypatch):
    nan_after(monkeypatch, good_steps=3)  # epoch 1 = steps 1-2; epoch 2 diverges at step 4
    with pytest.raises(TrainingDiverged) as info:
        train(make_config(), tmp_path)
    msg = str(info.value)
    assert "non-finite loss" in msg and "step 4" in msg and "phase 'train' epoch 2" in msg
    assert str(tmp_path / "last.pt") in msg
    assert "\n" not in msg and info.value.exit_code == 3

    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["global_step"], len(state["history"])) == (1, 2, 1)
    weights = [v for v in state["method_state"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)
    assert len(epoch_log(tmp_path)) == 1
    assert not (tmp_path / "metrics.json").exists()
    # the kept checkpoint is usable: resuming without the fault finishes the run
    monkeypatch.undo()
    results = train(make_config(), tmp_path, resume=True)
    assert len(epoch_log(tmp_path)) == 3 and math.isfinite(results["val"]["dice/mean"])


def test_divergence_in_the_first_epoch_does_not_point_at_a_stale_checkpoint(
    tmp_path, make_config, monkeypatch
):
    train(make_config("train.epochs=1"), tmp_path)  # an earlier run in the same folder
    nan_after(monkeypatch, good_steps=0)
    with pytest.raises(TrainingDiverged) as info:
        train(make_config("train.epochs=1", "train.lr=0.02"), tmp_path)
    assert "non-finite loss" in str(info.value)
    assert "no checkpoint yet" in str(info.value)
    # nothing left from the earlier run that could be mistaken for this run's checkpoints
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


# --------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "last.pt"
    target.write_text("old")

    def failing_writer(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing_writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_write_interrupt_before_writing(tmp_path):
    target = tmp_path / "sub" / "x.json"

    def interrupted(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_write_replaces_and_checkpoint_round_trip(tmp_path):
    path = tmp_path / "a" / "ck.pt"
    save_checkpoint({"x": torch.arange(3)}, path)
    save_checkpoint({"x": torch.arange(5)}, path)
    state = load_checkpoint(path)
    assert torch.equal(state["x"], torch.arange(5)) and state["format"] == "semiseg-checkpoint-1"
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]
    atomic_write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(DataError, match="is a folder: give a checkpoint file"):
        load_checkpoint(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DataError, match="empty.pt: cannot read checkpoint: an empty file"):
        load_checkpoint(tmp_path / "empty.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="other.pt: not a semiseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


# ------------------------------------------------------------------------------------- model selection
@pytest.mark.parametrize("metric, mode", [("dice/mean", "max"), ("pixel_error", "min")])
def test_best_checkpoint_is_selected_on_validation(tmp_path, make_config, metric, mode):
    cfg = make_config(
        "train.epochs=4", "train.lr=0.03", f"train.val_metric={metric}", f"train.val_mode={mode}"
    )
    results = train(cfg, tmp_path)
    history = epoch_log(tmp_path)
    values = [h[f"val/{metric}"] for h in history]
    assert len(set(values)) > 1  # the metric changed, so the choice matters
    pick = max if mode == "max" else min
    best_epoch = values.index(pick(values)) + 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"]["epoch"] == best_epoch == results["best"]["epoch"]
    assert best["best"]["value"] == pick(values)
    # the kept weights really score that value on the validation split (not on test)
    method, _, _ = engine_run.load_trained(tmp_path / "best.pt")
    from semiseg.data import prepare_data

    data = prepare_data(cfg)
    means, _ = evaluate_records(
        method.predict,
        data.val,
        num_classes=3,
        image_size=[32, 32],
        device=torch.device("cpu"),
        metrics=FAST_METRICS,
    )
    assert means[metric] == pytest.approx(pick(values), abs=1e-6)
    assert results["val"][metric] == pytest.approx(pick(values), abs=1e-6)  # final report uses best.pt
    assert {r.id for r in data.val}.isdisjoint(r.id for r in data.test)


def test_unknown_val_metric(tmp_path, make_config):
    with pytest.raises(ConfigError, match="train.val_metric: 'dice/7' is not one of"):
        train(make_config("train.val_metric=dice/7"), tmp_path)


# --------------------------------------------------------------------------------------------- outputs
def test_run_writes_logs_metrics_and_plots(tmp_path, make_config):
    results = train(make_config("train.plots=true", "train.epochs=2"), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    expected = {
        "metrics.json",
        "epochs.csv",
        "epochs.jsonl",
        "steps.jsonl",
        "learning_curves.png",
        "overlays.png",
        "best.pt",
        "last.pt",
        "split.json",
        "config.json",
    }
    assert expected <= names
    assert not [n for n in names if n.endswith(".tmp")]

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best"] == results["best"] and metrics["labeled"] == 4
    for split in ("val", "test"):
        assert {"dice/mean", "jaccard/mean", "pixel_error", "hd95_px/mean", "rad/mean"} <= set(metrics[split])
        assert len(metrics[f"{split}_cases"]) == (2 if split == "val" else 4)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all({"phase", "epoch", "lr", "loss"} <= set(s) for s in steps)
    rows = (tmp_path / "epochs.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and {"epoch", "train/loss", "val/dice/mean", "seconds"} <= set(header)
    assert rows[2].split(",")[header.index("epoch")] == "2"
    for png in ("learning_curves.png", "overlays.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and min(im.size) > 100
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["labeled"]) == 4 and len(split["val"]) == 2
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 2


def test_click_only_validation_reports_no_shape_metrics_but_the_test_split_does(tmp_path, make_config):
    """With val_supervision: same and sparse labels a validation mask holds a few clicked pixels:
    HD95, ASD and the area difference would measure the clicks, so only the dense test split has them."""
    cfg = make_config("data.split.supervision=sparse", "data.split.sparse_pixels=5",
                      "data.split.val_supervision=same")  # fmt: skip
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "dice/mean" in metrics["val"] and "dice/mean" in metrics["test"]
    for key in ("hd95_px/mean", "asd_px/mean", "rad/mean"):
        assert key not in metrics["val"] and key in metrics["test"]
    assert all("hd95_px" not in case for case in metrics["val_cases"])


def test_val_every_skips_validation_but_validates_the_last_epoch(tmp_path, make_config):
    train(make_config("train.epochs=3", "train.val_every=2"), tmp_path)
    has_val = ["val/dice/mean" in h for h in epoch_log(tmp_path)]
    assert has_val == [False, True, True]


# ---------------------------------------------------------------------------------- multi-phase method
@dataclass
class ToyConfig(MethodConfig):
    aux_weight: float = 0.1


class ToyTwoPhase(Method):
    """Phase "pre" trains the segmenter alone; phase "main" alternates the segmenter (optimizer "a",
    labeled + unlabeled) and a critic on detached predictions (optimizer "b"), GAN style."""

    config_class = ToyConfig
    calls: list[
        tuple[str, str, tuple[str, ...]]
    ] = []  # (phase, optimizer, streams) of every step, all instances

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = build_model(self.model_cfg, self.in_channels, self.num_classes)
        self.critic = nn.Conv2d(self.num_classes, 1, 3, padding=1)

    def phases(self):
        return [
            Phase("pre", epochs=1, validate=False),
            Phase("main", optimizers=("a", "b"), streams=("labeled", "unlabeled")),
        ]

    def parameters_for(self, phase, optimizer):
        return self.critic.parameters() if optimizer == "b" else self.model.parameters()

    def training_step(self, batch, phase, optimizer):
        self.calls.append((phase, optimizer, tuple(sorted(batch))))
        labeled = batch["labeled"]
        if optimizer == "b":
            fake = self.model(batch["unlabeled"].image).softmax(1).detach()
            return {"loss": self.critic(fake).square().mean()}
        ce = masked_cross_entropy(self.model(labeled.image), labeled.mask)
        if phase == "pre":
            return {"loss": ce}
        adv = self.critic(self.model(batch["unlabeled"].image).softmax(1)).mean()
        return {"loss": ce + self.cfg.aux_weight * adv, "ce": ce, "adv": adv}


@pytest.fixture
def toy_method():
    register("toy_two_phase")(ToyTwoPhase)
    ToyTwoPhase.calls.clear()
    yield "toy_two_phase"
    METHODS.pop("toy_two_phase", None)


def test_multi_phase_two_optimizer_method_through_the_engine(tmp_path, make_config, toy_method):
    results = train(make_config("method.name=toy_two_phase", "train.epochs=2"), tmp_path)
    history = epoch_log(tmp_path)
    assert [(h["phase"], h["epoch"]) for h in history] == [("pre", 1), ("main", 1), ("main", 2)]
    assert set(history[0]) == {"phase", "epoch", "step", "train/loss", "seconds"}  # no validation in "pre"
    assert {"train/a/loss", "train/a/ce", "train/a/adv", "train/b/loss", "val/dice/mean"} <= set(history[1])
    assert all(math.isfinite(v) for h in history for k, v in h.items() if k.startswith(("train/", "val/")))
    assert [h["step"] for h in history] == [2, 4, 6]  # one global step per iteration, whatever the optimizers
    # "pre": 2 iterations on the labeled stream; "main": optimizer a then b at 4 iterations, both streams
    both = ("labeled", "unlabeled")
    expected = [("pre", "main", ("labeled",))] * 2 + [("main", "a", both), ("main", "b", both)] * 4
    assert ToyTwoPhase.calls == expected
    assert results["best"]["phase"] == "main" and results["best"]["epoch"] in (1, 2)
    state = load_checkpoint(tmp_path / "last.pt")
    assert set(state["optimizers"]) == {"a", "b"} and state["phase_index"] == 1
    # each optimizer holds exactly the parameters the method assigned to it
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_segmenter = sum(1 for k in state["method_state"] if k.startswith("model.") and not k.endswith(buffers))
    assert len(state["optimizers"]["a"]["param_groups"][0]["params"]) == n_segmenter
    assert len(state["optimizers"]["b"]["param_groups"][0]["params"]) == 2  # critic weight and bias


def test_multi_phase_resume_equals_straight_run(tmp_path, make_config, toy_method):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(make_config("method.name=toy_two_phase", "train.epochs=2"), straight)
    train(make_config("method.name=toy_two_phase", "train.epochs=1"), resumed)
    train(make_config("method.name=toy_two_phase", "train.epochs=2"), resumed, resume=True)
    assert_same_weights(straight / "last.pt", resumed / "last.pt")
    assert without_seconds(epoch_log(straight)) == without_seconds(epoch_log(resumed))


# ------------------------------------------------------------------- per-phase selection (restore_best)
class ToyScored(Method):
    """Phase "pre" trains a scalar ``w`` toward 0 then away from it; its own validation metric is
    ``|w|`` (min), with ``restore_best``: phase "main" must start from the best ``w`` of "pre"."""

    config_class = ToyConfig
    seen_at_main: list[float] = []

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = build_model(self.model_cfg, self.in_channels, self.num_classes)
        self.w = nn.Parameter(torch.tensor(3.0))

    def phases(self):
        return [
            Phase(
                "pre",
                epochs=4,
                optimizers=("w",),
                val_metric="abs_w",
                val_mode="min",
                final=False,
                restore_best=True,
                lr=0.5,
            ),  # fmt: skip
            Phase("main", epochs=1),
        ]

    def parameters_for(self, phase, optimizer):
        return [self.w] if optimizer == "w" else self.model.parameters()

    def validation_metrics(self, phase, records, image_size, device, target_spacing=None):
        return {"abs_w": abs(self.w.item())} if phase == "pre" else None

    def training_step(self, batch, phase, optimizer):
        if phase == "pre":  # SGD steps of 0.5 on w, 2 per epoch: |w| = 2, 1, 0, then back to 1
            return {"loss": self.w * (1.0 if self.global_step < 6 else -1.0)}
        if not self.seen_at_main:
            self.seen_at_main.append(self.w.item())
        labeled = batch["labeled"]
        return {"loss": masked_cross_entropy(self.model(labeled.image), labeled.mask)}


@pytest.fixture
def scored_method():
    register("toy_scored")(ToyScored)
    ToyScored.seen_at_main.clear()
    yield "toy_scored"
    METHODS.pop("toy_scored", None)


def test_restore_best_phase_continues_from_its_best_validation(tmp_path, make_config, scored_method):
    cfg = make_config(
        "method.name=toy_scored", "train.optimizer=sgd", "train.momentum=0.0", "train.scheduler=none"
    )
    results = train(cfg, tmp_path)
    history = epoch_log(tmp_path)
    pre = [h["val/abs_w"] for h in history if h["phase"] == "pre"]
    assert pre == pytest.approx([2.0, 1.0, 0.0, 1.0])  # w went to 0, then away again
    assert ToyScored.seen_at_main[0] == pytest.approx(min(pre))  # "main" started from the best "pre" state
    best_pre = load_checkpoint(tmp_path / "best_pre.pt")
    assert best_pre["best"]["value"] == pytest.approx(min(pre))
    # only the final phase competes for best.pt, with the segmenter's metric
    assert results["best"]["phase"] == "main"
    assert "val/dice/mean" in history[-1] and "val/dice/mean" not in history[0]


def test_restore_best_resume_equals_straight_run(tmp_path, make_config, scored_method):
    opts = ("method.name=toy_scored", "train.optimizer=sgd", "train.momentum=0.0", "train.scheduler=none")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(make_config(*opts), straight)
    ToyScored.seen_at_main.clear()
    # interrupt inside "pre" (after 2 of its 4 epochs), then resume
    cfg = make_config(*opts)
    trainer_out = resumed
    with pytest.MonkeyPatch.context() as mp:
        calls = {"n": 0}
        original = Trainer.train_epoch

        def stop_after_two(self, *a, **k):
            if calls["n"] == 2:
                raise KeyboardInterrupt
            calls["n"] += 1
            return original(self, *a, **k)

        mp.setattr(Trainer, "train_epoch", stop_after_two)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, trainer_out)
    train(cfg, trainer_out, resume=True)
    assert_same_weights(straight / "last.pt", resumed / "last.pt")
    assert without_seconds(epoch_log(straight)) == without_seconds(epoch_log(resumed))


def test_unknown_phase_metric_is_a_clear_error(tmp_path, make_config, scored_method, monkeypatch):
    monkeypatch.setattr(ToyScored, "validation_metrics", lambda self, *a: {"other": 1.0})
    cfg = make_config("method.name=toy_scored")
    with pytest.raises(ConfigError, match="phase 'pre': validation metric 'abs_w' is not one of other"):
        train(cfg, tmp_path)


def test_channels_last_trains_like_nchw(tmp_path, make_config):
    train(make_config("train.epochs=1", "train.channels_last=false"), tmp_path / "nchw")
    train(make_config("train.epochs=1", "train.channels_last=true"), tmp_path / "cl")

    def steps(out):
        return [json.loads(ln)["loss"] for ln in (out / "steps.jsonl").read_text().splitlines()]

    assert steps(tmp_path / "cl") == pytest.approx(steps(tmp_path / "nchw"), rel=1e-4)


def test_eval_last_scores_the_final_model_beside_the_best(tmp_path, make_config):
    res = train(make_config("train.eval_last=true", "train.epochs=1"), tmp_path)
    assert set(res["last"]) == {"val", "test"} and "dice/mean" in res["last"]["test"]
    # one epoch: the last model is the best one, so the two scores agree
    assert res["last"]["test"]["dice/mean"] == pytest.approx(res["test"]["dice/mean"])
    assert res["last"]["val"]["pixel_error"] == pytest.approx(res["val"]["pixel_error"])
    assert "last" not in train(make_config("train.epochs=1"), tmp_path / "plain")


def test_save_epochs_keeps_the_state_after_those_epochs(tmp_path, make_config):
    engine_run.train(make_config("train.save_epochs=[1, 3]", "train.epochs=3"), output_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_train_1.pt", "epoch_train_3.pt"]
    last = load_checkpoint(tmp_path / "last.pt")["method_state"]
    kept = load_checkpoint(tmp_path / "epoch_train_3.pt")["method_state"]
    assert all(torch.equal(last[k], kept[k]) for k in last)
    first = load_checkpoint(tmp_path / "epoch_train_1.pt")["method_state"]
    assert not all(torch.equal(last[k], first[k]) for k in last)
    engine_run.train(make_config("train.epochs=1"), output_dir=tmp_path)  # a fresh run removes them
    assert not list(tmp_path.glob("epoch_*.pt"))


def test_a_fresh_run_removes_the_earlier_runs_plots_and_tensorboard_events(tmp_path, make_config):
    pytest.importorskip("tensorboard")
    engine_run.train(make_config("train.plots=true", "train.logger=tensorboard"), output_dir=tmp_path)
    assert (tmp_path / "overlays.png").is_file() and list(tmp_path.glob("tensorboard/events.out.tfevents.*"))
    engine_run.train(make_config("train.plots=false"), output_dir=tmp_path)
    assert not (tmp_path / "overlays.png").exists() and not (tmp_path / "learning_curves.png").exists()
    assert not list(tmp_path.glob("tensorboard/events.out.tfevents.*"))
    engine_run.train(make_config("train.logger=tensorboard"), output_dir=tmp_path)  # its own events stay
    assert len(list(tmp_path.glob("tensorboard/events.out.tfevents.*"))) == 1


def test_checkpoint_every_n_epochs_resumes_exactly(tmp_path, make_config, resume_check):
    cfg = make_config("train.epochs=5", "train.checkpoint_every=3")
    straight = tmp_path / "alone"
    engine_run.train(cfg, output_dir=straight)
    assert load_checkpoint(straight / "last.pt")["epoch"] == 5  # the end of the phase is always kept
    # crash before epoch 5: last.pt holds epoch 3, so the resumed run replays epoch 4 first
    resume_check(cfg, tmp_path / "resume", crash_at=lambda trainer, phase: trainer.epoch == 4)


def test_a_3d_model_on_2d_images_is_refused_in_one_line(tmp_path, make_config):
    from semiseg.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match=r"'data.image_size' must be \[D, H, W\] for a 3D model"):
        make_config("model.spatial_dims=3")
    cfg = make_config("model.spatial_dims=3", "data.image_size=[-1,32,32]", "data.patch_size=[1,16,16]")
    with pytest.raises(DataError, match=r"a 3D model trains on volumes \[C, D, H, W\]"):
        engine_run.train(cfg, output_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_channels_last_auto_skips_networks_with_a_strided_pointwise_conv():
    """torch 2.13's channels-last CPU backward of a 1x1 stride-2 convolution corrupts the heap (a
    segfault from 48x48 inputs on): "auto" must leave such networks (the translation encoder, ResNet
    shortcuts) in the contiguous format, and keep channels-last for the UNet."""
    from semiseg.config import ModelConfig
    from semiseg.engine.trainer import _strided_pointwise_conv
    from semiseg.models.translation import TranslationEncoder

    assert _strided_pointwise_conv(TranslationEncoder(1, width=4, depth=2))
    assert _strided_pointwise_conv(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 1, stride=(2, 2))))
    assert not _strided_pointwise_conv(nn.Conv2d(8, 16, 1))  # 1x1, stride 1
    assert not _strided_pointwise_conv(build_model(ModelConfig(name="unet", width=4, depth=3), 1, 3))


def test_a_model_that_does_not_fit_the_task_is_refused_before_training(tmp_path, make_config):
    """A classifier on a segmentation task (or a net that cannot take the images) fails in one line
    before any folder is made, not with a shape error mid-run."""
    with pytest.raises(ConfigError, match=r"model.name: 'ssldec_cnn' gives outputs \[1, 3\] for a \[1, 1, "):
        train(make_config("model.name=ssldec_cnn"), tmp_path / "cls")
    with pytest.raises(ConfigError, match=r"model.name: 'mlp' cannot take a \[1, 1, "):
        train(make_config("model.name=mlp"), tmp_path / "mlp")
    assert not (tmp_path / "cls").exists() and not (tmp_path / "mlp").exists()
