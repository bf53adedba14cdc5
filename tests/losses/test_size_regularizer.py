"""The ``size`` regulariser's two sources: ``data`` (the batch's sizes, as before) and ``regressor``
(its own regressor, trained in phase ``size_regressor``, frozen afterwards and bounding the soft
sizes around its predictions); options and one-line config errors."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from semiseg.config import ModelConfig, from_dict, to_dict
from semiseg.core import Batch
from semiseg.data.records import IGNORE_INDEX, Record
from semiseg.errors import ConfigError
from semiseg.losses.regularizers import Regularizer, RegularizerContext, RegularizerSpec, build_regularizers
from semiseg.losses.size import RegressedSizePenalty, SizeSpec, size_penalty
from semiseg.methods import build_method
from semiseg.methods.size import SizeConfig
from semiseg.phases import Phase

K = 3
HW = (16, 16)
MODEL = ModelConfig(width=4, depth=2, norm="batch")
CONTEXT = RegularizerContext(in_channels=1, num_classes=K, model=MODEL)
TINY = {"regressor_width": 4, "regressor_depth": 2}


def regressor_spec(**options) -> SizeSpec:
    return SizeSpec(source="regressor", **{**TINY, **options})


def regularizer(spec: SizeSpec, seed: int = 0) -> Regularizer:
    torch.manual_seed(seed)
    return build_regularizers([spec], CONTEXT)[0]


def labeled(seed: int = 0, b: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, *HW, dtype=torch.long)
    mask[:, 2:9, 3:12] = 1
    mask[:, 11:14, 4:6] = 2
    return Batch.of(torch.rand(b, 1, *HW, generator=g), mask, num_classes=K)


def unlabeled(seed: int = 1, b: int = 3) -> Batch:
    return Batch.of(torch.rand(b, 1, *HW, generator=torch.Generator().manual_seed(seed)), num_classes=K)


# ------------------------------------------------------------------------------------ options
def test_defaults_are_the_size_methods_and_source_data():
    spec = SizeSpec()
    assert spec.source == "data"
    method_defaults = SizeConfig()
    for f in dataclasses.fields(SizeSpec):
        if f.name.startswith("regressor_"):
            assert getattr(spec, f.name) == getattr(method_defaults, f.name), f.name


def test_regressor_spec_round_trips_through_plain_dicts():
    spec = regressor_spec(regressor_epochs=3, regressor_arch="density", regressor_lr=0.002)
    again = from_dict(RegularizerSpec, to_dict(spec), prefix="method.regularizers[0]")
    assert again == spec and isinstance(again, SizeSpec)


def test_regressor_owns_phase_size_regressor():
    (phase,) = regressor_spec(regressor_epochs=7, regressor_lr=0.003).phases()
    assert phase == Phase(
        "size_regressor", epochs=7, optimizers=("size_regressor",), streams=("labeled",), lr=0.003,
        val_metric="size_mae", val_mode="min", final=False, restore_best=True,
    )  # fmt: skip
    assert SizeSpec().phases() == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"source": "regressor", "regressor_arch": "resnet"},
         r"'method\.regularizers\[0\]\.regressor_arch' must be one of 'cnn' \| 'density', got 'resnet'"),
        ({"source": "oracle"}, r"'method\.regularizers\[0\]\.source' must be one of 'data' \| 'regressor'"),
        ({"source": "regressor", "regressor_epochs": 0}, r"'method\.regularizers\[0\]\.regressor_epochs' must be >= 1"),
        ({"source": "regressor", "regressor_width": 0}, r"'method\.regularizers\[0\]\.regressor_width' must be >= 1"),
        ({"source": "regressor", "regressor_depth": 0}, r"'method\.regularizers\[0\]\.regressor_depth' must be >= 1"),
        ({"source": "regressor", "regressor_lr": -0.1}, r"'method\.regularizers\[0\]\.regressor_lr' must be positive"),
        ({"source": "regressor", "regressor_rotate_degrees": -5},
         r"'method\.regularizers\[0\]\.regressor_rotate_degrees' must be >= 0"),
        ({"regressor_epochs": 5}, r"'method\.regularizers\[0\]\.regressor_epochs' is an option of source: regressor"),
        ({"source": "regressor", "regresor_epochs": 5},
         r"unknown key 'method\.regularizers\[0\]\.regresor_epochs' \(did you mean 'regressor_epochs'\?\)"),
        ({"source": "regressor", "classes": []}, r"'method\.regularizers\[0\]\.classes' must list at least one"),
        ({"source": "regressor", "classes": [1, 5]},
         r"^method\.regularizers\[0\]\.classes: must list classes in 0\.\.2, got \[1, 5\]"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_errors_naming_the_field(options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_method({"name": "fixmatch", "regularizers": [{"name": "size", **options}]}, MODEL,
                     in_channels=1, num_classes=K)  # fmt: skip
    assert "\n" not in str(info.value)


def test_code_made_specs_are_checked_too():
    with pytest.raises(ValueError, match="regressor_arch must be one of cnn | density"):
        SizeSpec(source="regressor", regressor_arch="resnet")  # type: ignore[arg-type]


def test_a_regressor_needs_the_runs_context():
    with pytest.raises(ValueError, match=r"build_for\(context\)"):
        Regularizer(regressor_spec())


# ------------------------------------------------------------------------------------ source: data
def test_source_data_is_as_before():
    spec = SizeSpec(gamma=0.2, weight=0.5)
    for reg in (Regularizer(spec), regularizer(spec)):  # with or without the run's context
        assert reg.loss == spec.loss and reg.phases() == [] and not list(reg.parameters())
    logits = torch.randn(2, K, *HW)
    sizes = torch.tensor([[100.0, 30.0, math.nan], [50.0, math.nan, 10.0]])
    batch = Batch.of(torch.rand(2, 1, *HW), num_classes=K, sizes=sizes)
    expected = size_penalty(logits.softmax(1), sizes, 0.2)
    assert torch.equal(regularizer(spec)({"unlabeled": logits}, {"unlabeled": batch}), expected)


# ------------------------------------------------------------------------------- source: regressor
def test_bounds_are_the_frozen_regressors_prediction_in_pixels():
    reg = regularizer(regressor_spec(gamma=0.1, classes=[2]))
    loss: RegressedSizePenalty = reg.loss
    batch = unlabeled()
    logits = torch.randn(3, K, *HW, requires_grad=True)
    reg.train()
    state = copy.deepcopy(loss.regressor.state_dict())
    value = reg({"unlabeled": logits}, {"unlabeled": batch})
    value.backward()
    # frozen: evaluation mode, no gradient, batch-norm statistics untouched
    assert not loss.regressor.training
    assert all(p.grad is None for p in loss.regressor.parameters())
    assert all(torch.equal(v, loss.regressor.state_dict()[k]) for k, v in state.items())
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with torch.no_grad():
        area = loss.regressor(batch.image)[:, :1]  # one constrained class
    sizes = torch.full((3, K), math.nan)
    sizes[:, 2] = area[:, 0].clamp(min=0) * HW[0] * HW[1]
    torch.testing.assert_close(loss.sizes(batch.image, logits.softmax(1)), sizes, equal_nan=True)
    expected = size_penalty(logits.detach().softmax(1), sizes, 0.1, [2])
    torch.testing.assert_close(value.detach(), expected)


def test_bounds_come_from_each_streams_images():
    reg = regularizer(regressor_spec(streams=["labeled", "unlabeled"]))
    logits = {"labeled": torch.randn(2, K, *HW), "unlabeled": torch.randn(3, K, *HW)}
    batches = {"labeled": labeled(), "unlabeled": unlabeled()}
    parts = [size_penalty(logits[s].softmax(1), reg.loss.sizes(batches[s].image, logits[s]), 0.1)
             for s in ("labeled", "unlabeled")]  # fmt: skip
    torch.testing.assert_close(reg(logits, batches), (parts[0] + parts[1]) / 2)


@pytest.mark.parametrize("arch", ["cnn", "density"])
def test_phase_trains_the_regressor_and_validates_it(arch):
    reg = regularizer(
        regressor_spec(regressor_arch=arch, regressor_rotate_degrees=0.0, regressor_flips=False)
    )
    reg.train()
    params = list(reg.parameters_for("size_regressor", "size_regressor"))
    assert {id(p) for p in params} == {id(p) for p in reg.loss.regressor.parameters()}
    data = {"labeled": labeled()}
    opt = torch.optim.Adam(params, 1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        out = reg.training_step(data, "size_regressor", "size_regressor")
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert set(out) == {"loss", "size_loss"} and out["loss"].item() < 0.7 * first
    reg.eval()
    lab = data["labeled"]
    records = [Record(id=f"r{i}", image=lab.image[i].numpy(), mask=lab.mask[i].numpy()) for i in range(2)]
    metrics = reg.validation_metrics("size_regressor", records, HW, torch.device("cpu"))
    assert set(metrics) == {"size_mae", "size_mae_fraction"}
    # the error of this (trained) regressor's areas against the masks' class fractions
    with torch.no_grad():
        pred = reg.loss.regress(lab.image)
    true = torch.stack([(lab.mask == c).float().mean(dim=(1, 2)) for c in reg.loss.classes], 1)
    want = float((pred - true).abs().mean())
    assert metrics["size_mae_fraction"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert metrics["size_mae"] == pytest.approx(want * HW[0] * HW[1], rel=1e-5, abs=1e-4)


def test_phase_needs_dense_masks_or_sizes_and_says_which_regularizer():
    reg = regularizer(regressor_spec())
    mask = labeled().mask.masked_fill(torch.rand(2, *HW) < 0.9, IGNORE_INDEX)
    sparse = Batch.of(torch.rand(2, 1, *HW), mask, num_classes=K)
    with pytest.raises(ConfigError, match=r"^method\.regularizers\[0\]\.source: regressor needs dense masks"):
        reg.training_step({"labeled": sparse}, "size_regressor", "size_regressor")


def test_a_phase_it_does_not_own_is_an_error():
    reg = regularizer(regressor_spec())
    with pytest.raises(ValueError, match="has no phase 'train'"):
        reg.training_step({"labeled": labeled()}, "train", "main")


def test_the_regressor_leaves_the_segmenters_initialisation_alone():
    def segmenter(*regularizers):
        torch.manual_seed(3)
        method = build_method({"name": "fixmatch", "regularizers": list(regularizers)}, MODEL,
                              in_channels=1, num_classes=K)  # fmt: skip
        return method.model.state_dict()

    plain = segmenter()
    with_regressor = segmenter({"name": "size", "source": "regressor", **TINY})
    assert all(torch.equal(v, with_regressor[k]) for k, v in plain.items())
    torch.manual_seed(3)
    a = regularizer(regressor_spec(), seed=3).loss.regressor.state_dict()
    b = regularizer(regressor_spec(), seed=4).loss.regressor.state_dict()
    assert not all(torch.equal(v, b[k]) for k, v in a.items())  # but follows the run's seed
