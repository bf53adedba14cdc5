"""Timing helpers: interleaved rounds, and the step-time ratio through the trainer's own step.
No assertions on measured times (they depend on the machine), only on what is run and recorded."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from bench_helpers import MODEL, RECIPE

from semiseg.bench import timing
from semiseg.bench.tables import size_step_configs, supervised_baseline
from semiseg.bench.timing import PassCounter, interleaved, pass_budget_ratio, ratio, step_time_ratio
from semiseg.config import ModelConfig, build_config
from semiseg.core import Batch
from semiseg.engine.trainer import Trainer
from semiseg.models import build_model


def test_interleaved_alternates_and_skips_the_warm_up():
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=5, warmup=2)
    assert calls == ["a", "b"] * 7
    assert [len(times["a"]), len(times["b"])] == [5, 5] and all(t >= 0 for t in times["a"] + times["b"])
    with pytest.raises(ValueError):
        interleaved({"a": lambda: None}, rounds=0)


def test_ratio_has_two_decimals():
    assert ratio(1.0, 3.0) == 0.33 and ratio(0.996, 1.0) == 1.0 and ratio(2.0, 1.0) == 2.0


@pytest.fixture
def steps(monkeypatch):
    """Records every ``Trainer.train_step``: (method class, phase, images per stream)."""
    seen: list[tuple[str, str, dict[str, int]]] = []
    original = Trainer.train_step

    def recording(self, batch, phase, optimizers, schedulers):
        assert all(isinstance(b, Batch) for b in batch.values())
        seen.append((type(self.method).__name__, phase.name, {s: len(b) for s, b in batch.items()}))
        return original(self, batch, phase, optimizers, schedulers)

    monkeypatch.setattr(Trainer, "train_step", recording)
    return seen


def _cfg(**method):
    return build_config({k: v for k, v in RECIPE.items() if k != "quick"}, [], source="test")


def test_step_time_ratio_runs_the_trainers_step_interleaved(steps):
    tv = dataclasses.replace(_cfg(), method={"name": "tv", "tv_weight": 0.1})
    out = step_time_ratio(tv, supervised_baseline(tv), rounds=5, steps=2)
    # one warm-up round, then 5 timed rounds; each round = 2 iterations of one side, sides alternating
    assert [name for name, _, _ in steps] == (["TotalVariation"] * 2 + ["Supervised"] * 2) * 6
    # TV also draws the unlabeled images (for its regulariser); the baseline gets as many labeled ones
    assert all(phase == "train" for _, phase, _ in steps)
    assert {tuple(n.items()) for name, _, n in steps if name == "TotalVariation"} == {
        (("labeled", 4), ("unlabeled", 4))
    }
    assert all(n == {"labeled": 8} for name, _, n in steps if name == "Supervised")
    assert out["measured_with"] == "Trainer.train_step" and out["rounds"] == 5 and out["steps_per_round"] == 2
    assert out["ratio"] > 0 and round(out["ratio"], 2) == out["ratio"]
    assert len(out["round_seconds_per_step"]["method"]) == len(out["round_seconds_per_step"]["baseline"]) == 5
    assert out["images_per_step"] == {"method": 8, "baseline": 8} and out["image_size"] == [32, 32]
    assert out["method"] == tv.method and out["baseline"]["name"] == "supervised"


def test_size_step_ratio_times_the_segmenter_phase_against_all_its_images(steps):
    cfg = _cfg()
    split = dataclasses.replace(cfg.data.split, unlabeled_supervision="size")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split=split),
                              method={"name": "size", "source": "oracle"})  # fmt: skip
    method, base = size_step_configs(cfg)
    out = step_time_ratio(method, base, phase="segmenter", rounds=5, steps=1)
    sized = [(p, n) for name, p, n in steps if name != "Supervised"]
    assert sized and all(x == ("segmenter", {"labeled": 4, "unlabeled": 4}) for x in sized)
    assert all(n == {"labeled": 8} for name, _, n in steps if name == "Supervised")
    assert out["phase"] == "segmenter" and out["streams"] == ["labeled", "unlabeled"]
    assert out["images_per_step"] == {"method": 8, "baseline": 8}
    with pytest.raises(ValueError, match="no phase 'nope'"):
        step_time_ratio(method, base, phase="nope", rounds=1, steps=1)


def test_pass_counter_counts_images_per_batch_size():
    """Per (part, grad, batch size) images and full passes per size; a decoder-only call is half a pass."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(**MODEL), 1, 2)
    counter = PassCounter(net)
    x = torch.rand(6, 1, 32, 32)
    net(x).sum().backward()  # a full pass on 6 images with gradients
    features = net.encode(torch.cat([x, x]))  # a full pass on 12 ...
    net.decode(features)
    net.decode([f[:4] for f in features])  # ... and a decoder-only call on 4 (a perturbed stream)
    with torch.no_grad():
        net(x[:4])  # no gradients on 4 images
    counter.close()
    net(x)  # not counted after close
    assert counter.images == {
        ("encoder", "grad", 6): 6,
        ("decoder", "grad", 6): 6,
        ("encoder", "grad", 12): 12,
        ("decoder", "grad", 12): 12,
        ("decoder", "grad", 4): 4,
        ("encoder", "nograd", 4): 4,
        ("decoder", "nograd", 4): 4,
    }
    assert counter.passes_by_batch_size == {"grad": {4: 2.0, 6: 6.0, 12: 12.0}, "nograd": {4: 4.0}}
    assert list(counter.passes_by_batch_size["grad"]) == [4, 6, 12]  # sizes ascending
    # the per-size passes sum to the old totals, which stay as they were
    assert counter.full_passes == {"grad": 20.0, "nograd": 4.0}
    assert counter.counts == {
        "encoder_grad": 18,
        "encoder_nograd": 4,
        "decoder_grad": 22,
        "decoder_nograd": 4,
    }


def _interleaved_sides(monkeypatch) -> list[list[str]]:
    """Records the side names of every :func:`interleaved` call."""
    calls: list[list[str]] = []
    original = timing.interleaved

    def recording(runs, rounds, warmup=timing.WARMUP_ROUNDS):
        calls.append(list(runs))
        return original(runs, rounds, warmup)

    monkeypatch.setattr(timing, "interleaved", recording)
    return calls


def test_pass_budget_counts_passes_with_and_without_gradients(monkeypatch):
    cfg = _cfg()
    sides = _interleaved_sides(monkeypatch)
    sup = pass_budget_ratio(cfg, supervised_baseline(cfg), rounds=1, steps=1)
    assert sup["passes_per_step"] == {"grad": 4.0, "nograd": 0.0}  # the labeled batch, once
    assert sup["passes_per_batch_size"] == {"grad": {4: 4.0}, "nograd": {}}
    # prices are measured times (one sample each here): positive, in no order a loaded machine keeps
    assert sup["ratio_to_budget"] > 0 and sup["t_grad_per_image"][4] > 0 and sup["t_nograd_per_image"][4] > 0
    # one batch size only (the labeled one): both prices agree
    assert sup["ratio_to_budget"] == sup["ratio_to_budget_at_labeled_batch"]
    assert sup["budget_seconds_per_step"] == sup["budget_seconds_at_labeled_batch"]
    assert sides == [["method", "grad 4", "nograd 4"]]
    # the size method's "proposals" phase: the student on labeled + unlabeled, its frozen teacher on
    # the unlabeled images without gradients
    prop = dataclasses.replace(cfg, method={"name": "size", "source": "proposals", "fs_epochs": 0})
    out = pass_budget_ratio(prop, supervised_baseline(cfg), phase="proposals", rounds=1, steps=1)
    assert out["passes_per_step"] == {"grad": 8.0, "nograd": 4.0}
    assert out["pass_counts"] == {
        "encoder_grad": 8,
        "encoder_nograd": 4,
        "decoder_grad": 8,
        "decoder_nograd": 4,
    }
    assert out["phase"] == "proposals"


def test_pass_budget_prices_each_pass_at_its_own_batch_size(monkeypatch):
    """Mean teacher with ``joint_batch``: the student on labeled + unlabeled in one call (8 images) with gradients,
    the teacher on the unlabeled images (4) without; the labeled batch is 4. One baseline per grad
    size plus the labeled one, one inference per no-grad size plus the labeled one, all interleaved in
    one call; the budget sums each size's passes at that size's price."""
    cfg = _cfg()
    sides = _interleaved_sides(monkeypatch)
    mean_teacher = dataclasses.replace(cfg, method={"name": "mean_teacher", "joint_batch": True})
    out = pass_budget_ratio(mean_teacher, supervised_baseline(cfg), rounds=1, steps=1)
    assert out["passes_per_batch_size"] == {"grad": {8: 8.0}, "nograd": {4: 4.0}}
    assert out["passes_per_step"] == {"grad": 8.0, "nograd": 4.0} and out["labeled_batch_size"] == 4
    assert sides == [["method", "grad 4", "grad 8", "nograd 4"]]
    t_grad, t_nograd = out["t_grad_per_image"], out["t_nograd_per_image"]
    assert set(t_grad) == {4, 8} and set(t_nograd) == {4}
    assert all(t > 0 for t in [*t_grad.values(), *t_nograd.values()])
    for key in ("ratio_to_budget", "ratio_to_budget_at_labeled_batch"):
        assert math.isfinite(out[key]) and out[key] > 0 and round(out[key], 2) == out[key]
    # the budgets from the (rounded) prices: per size, and every pass at the labeled batch's price
    tol = {"rel": 0.01, "abs": 1e-4}
    assert out["budget_seconds_per_step"] == pytest.approx(8 * t_grad[8] + 4 * t_nograd[4], **tol)
    assert out["budget_seconds_at_labeled_batch"] == pytest.approx(8 * t_grad[4] + 4 * t_nograd[4], **tol)


def test_pass_budget_paired_ratio_divides_each_round_by_its_own_budget(monkeypatch):
    """Supervised (4 labeled images with gradients): the budget of a round is its own supervised
    iteration, so the per-round ratios are method / baseline of the same round; their median can
    differ from the ratio of the medians when the machine's speed drifts between rounds."""
    cfg = _cfg()
    fixed = {"method": [1.0, 2.0, 3.0], "grad 4": [1.0, 1.0, 2.0], "nograd 4": [0.5, 0.5, 0.5]}

    def fake(runs, rounds, warmup=timing.WARMUP_ROUNDS):
        assert rounds == 3 and set(runs) == set(fixed)
        return fixed

    monkeypatch.setattr(timing, "interleaved", fake)
    out = pass_budget_ratio(cfg, supervised_baseline(cfg), rounds=3, steps=1)
    assert out["round_ratios_to_budget"] == [1.0, 2.0, 1.5]
    assert out["ratio_to_budget_paired"] == 1.5
    assert out["ratio_to_budget"] == 2.0  # median 2.0 over median 1.0
    low, high = out["ratio_to_budget_paired_quartiles"]
    assert low <= 1.5 <= high


@pytest.mark.parametrize("table", ["ioda-textures", "ssldec"])
def test_throughput_measures_the_first_rows_model_of_every_table_kind(table):
    """The provenance's throughput runs the first row's model: a fully connected map network (which
    needs the image size) and an image classifier (one label per image) train as UNets do."""
    from semiseg.bench import TABLES
    from semiseg.bench.runner import row_config
    from semiseg.config import to_dict

    t = TABLES[table]()
    model = to_dict(row_config(t, t.rows[0], t.quick_seeds[0], True))["model"]
    if table == "ioda-textures":
        model["hidden"] = [8, 8]  # the row's network, narrowed to keep the test fast
    out = timing.measure_throughput(model, steps=1, warmup=0)
    assert out["images_per_second"] > 0 and out["peak_rss_mib"] > 0 and "note" not in out


def test_throughput_that_fails_is_recorded_as_not_measured():
    out = timing.measure_throughput({"name": "no-such-model"}, steps=1, warmup=0)
    assert out["images_per_second"] is None and out["note"].startswith("not measured: ")
    from semiseg.bench.render import markdown

    results = {"table": "t", "title": "T", "rows": [], "runs": [], "notes": "", "provenance": {
        "mode": "quick", "seeds": [0], "git_commit": "abc", "wall_seconds": 1.0,
        "hardware": {"cpu": "cpu", "cores": 2, "torch": "2"}, "throughput": out}}  # fmt: skip
    md = markdown(results)
    assert "Throughput note: not measured: " in md and "None images/s" not in md
