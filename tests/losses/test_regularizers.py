"""Config-named regularisers: typed specs parsed by the config checker, ramp-ups (global or per
phase), config errors, round trips, and regularisers on the supervised and TV methods."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import pytest
import torch
import torch.nn as nn

from semiseg.config import ModelConfig, build_config, from_dict, to_dict
from semiseg.core import Batch
from semiseg.data.records import IGNORE_INDEX
from semiseg.errors import ConfigError
from semiseg.losses import masked_cross_entropy
from semiseg.losses.ramp import ramp_weight
from semiseg.losses.regularizers import (
    REGULARIZERS,
    Regularizer,
    RegularizerSpec,
    build_regularizers,
    parse_regularizer,
    register_regularizer,
)
from semiseg.losses.size import SizeSpec
from semiseg.losses.tv import TVSpec, total_variation
from semiseg.methods import build_method

K = 2
MODEL = ModelConfig(width=4, depth=2)


def batch(seed: int = 0, unlabeled_seed: int = 1, hw=(16, 16)) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, K, (2, *hw), generator=g)
    mask[torch.rand(2, *hw, generator=g) < 0.9] = IGNORE_INDEX  # sparse labels
    unlabeled = torch.rand(3, 1, *hw, generator=torch.Generator().manual_seed(unlabeled_seed))
    return {
        "labeled": Batch.of(torch.rand(2, 1, *hw, generator=g), mask, num_classes=K),
        "unlabeled": Batch.of(unlabeled, num_classes=K),
    }


def supervised(*regularizers: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_method(
        {"name": "supervised", "regularizers": list(regularizers)}, MODEL, in_channels=1, num_classes=K
    )


# -------------------------------------------------------------------------------------------- ramp
def test_ramp_weight_sigmoid():
    assert ramp_weight(0.5, 0, 100) == pytest.approx(0.5 * math.exp(-5))
    assert ramp_weight(0.5, 50, 100) == pytest.approx(0.5 * math.exp(-5 * 0.25))
    assert ramp_weight(0.5, -3, 100) == pytest.approx(0.5 * math.exp(-5))  # clamped to step 0
    values = [ramp_weight(0.5, s, 100) for s in range(0, 101, 10)]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing
    assert ramp_weight(0.5, 100, 100) == 0.5  # equals the weight once the ramp is over
    assert ramp_weight(0.5, 10**6, 100) == 0.5


def test_ramp_weight_linear_and_no_ramp():
    assert ramp_weight(0.5, 0, 100, "linear") == 0.0
    assert ramp_weight(0.5, 25, 100, "linear") == pytest.approx(0.125)
    assert ramp_weight(0.5, 100, 100, "linear") == 0.5
    assert ramp_weight(0.5, 0, 0) == 0.5  # ramp_up_steps = 0: constant
    assert ramp_weight(0.5, 0, -1, "linear") == 0.5
    with pytest.raises(ValueError, match="ramp shape"):
        ramp_weight(0.5, 0, 10, "cosine")


def test_ramp_weight_is_also_importable_from_regularizers():
    from semiseg.losses import regularizers

    assert regularizers.ramp_weight is ramp_weight


def test_regularizer_current_weight():
    (reg,) = build_regularizers([{"name": "tv", "weight": 2.0, "ramp_up_steps": 10, "ramp_shape": "linear"}])
    assert [reg.current_weight(s) for s in (0, 5, 10, 11)] == [0.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize(("ramp_from", "expected"), [("global", 100), ("phase", 3)])
def test_ramp_counts_the_global_or_the_phase_step(ramp_from, expected):
    (reg,) = build_regularizers([{"name": "tv", "ramp_up_steps": 10, "ramp_from": ramp_from}])
    assert reg.ramp_step(global_step=100, phase_step=3) == expected


def test_phase_ramp_on_a_method_restarts_with_the_phase():
    method = supervised(
        {"name": "tv", "weight": 0.5, "ramp_up_steps": 10, "ramp_from": "phase", "ramp_shape": "linear"}
    ).train()
    data = batch()
    method.global_step, method.phase_step = 500, 2  # e.g. a second phase, 2 steps in
    out = method.training_step(data, "train", "main")
    torch.testing.assert_close(out["loss"], out["ce"] + 0.5 * 0.2 * out["reg/tv"])
    method.phase_step = 10
    out = method.training_step(data, "train", "main")
    torch.testing.assert_close(out["loss"], out["ce"] + 0.5 * out["reg/tv"])


# ---------------------------------------------------------------------------------------- typed specs
def test_specs_are_typed_and_dispatched_by_name():
    tv = parse_regularizer({"name": "tv", "weight": 1, "operator": "forward", "streams": ["unlabeled"]})
    assert isinstance(tv, TVSpec) and tv == TVSpec(weight=1.0, operator="forward", streams=["unlabeled"])
    assert isinstance(tv.weight, float) and tv.name == "tv"
    size = parse_regularizer({"name": "size", "gamma": 0.2, "classes": [1]})
    assert size == SizeSpec(gamma=0.2, classes=[1]) and size.name == "size"
    assert TVSpec().name == "tv" and SizeSpec().streams == ["labeled", "unlabeled"]
    assert set(REGULARIZERS) >= {"tv", "size"} and REGULARIZERS.get("tv") is TVSpec


def test_method_config_holds_specs_and_round_trips_through_plain_dicts():
    method = supervised({"name": "tv", "weight": 0.3, "ramp_from": "phase"}, {"name": "size", "gamma": 0.2})
    specs = method.cfg.regularizers
    assert [type(s) for s in specs] == [TVSpec, SizeSpec]
    assert [r.spec for r in method.regularizers] == specs  # the same typed objects reach the losses
    plain = json.loads(json.dumps(to_dict(method.cfg)))  # as saved in config.json / checkpoints
    assert plain["regularizers"][0] == {
        "name": "tv", "weight": 0.3, "ramp_up_steps": 0, "ramp_shape": "sigmoid", "ramp_from": "phase",
        "streams": ["labeled", "unlabeled"], "operator": "sobel", "norm": "l1", "reduction": "mean",
        "edge_sigma": None, "axis_weights": None,
    }  # fmt: skip
    assert from_dict(type(method.cfg), plain, prefix="method") == method.cfg


def test_run_config_with_regularizers_round_trips():
    raw = {"method": {"name": "supervised", "regularizers": [{"name": "tv", "weight": 0.1, "norm": "l2"}]}}
    cfg = build_config(raw)
    again = build_config(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    method = build_method(again.method, MODEL, in_channels=1, num_classes=K)
    assert method.cfg.regularizers == [TVSpec(weight=0.1, norm="l2")]


def test_specs_made_in_code_are_accepted_as_they_are():
    spec = TVSpec(weight=0.2, edge_sigma=0.5)
    method = supervised(spec)
    assert method.cfg.regularizers[0] is spec
    assert build_regularizers([spec])[0].spec is spec


def test_a_new_regularizer_is_one_spec_class():
    @register_regularizer("test_entropy")
    @dataclass
    class EntropySpec(RegularizerSpec):
        """Mean prediction entropy, times a learnable temperature (a loss with a parameter)."""

        base: Literal["e", "2"] = "e"  #: an option of its own (unused here)

        def build(self):
            return EntropyLoss()

    class EntropyLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.temperature = nn.Parameter(torch.ones(()))

        def forward(self, logits, batch):
            p = (logits * self.temperature).softmax(1)
            return -(p * p.clamp(min=1e-8).log()).sum(1).mean()

    try:
        method = supervised({"name": "test_entropy", "weight": 0.1, "streams": ["unlabeled"]})
        assert isinstance(method.cfg.regularizers[0], EntropySpec)
        assert "regularizers.0.loss.temperature" in dict(method.named_parameters())
        out = method.train().training_step(batch(), "train", "main")
        assert set(out) == {"loss", "ce", "reg/test_entropy"} and torch.isfinite(out["loss"])
        with pytest.raises(ConfigError, match=r"'method\.regularizers\[0\]\.base' must be one of 'e'"):
            supervised({"name": "test_entropy", "base": "10"})
    finally:
        REGULARIZERS.pop("test_entropy")


# ---------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "nope"}, r"method\.regularizers\[1\]\.name: unknown regularizer 'nope' \(known: .*tv"),
        ({"name": "tvv"}, r"method\.regularizers\[1\]\.name: unknown regularizer 'tvv' \(did you mean 'tv'\?"),
        ({"weight": 1.0}, r"'method\.regularizers\[1\]\.name' is required \(known: dec, shape_prior, size, tv"),
        ({"name": "tv", "opertor": "sobel"},
         r"unknown key 'method\.regularizers\[1\]\.opertor' \(did you mean 'operator'\?\)"),
        ({"name": "tv", "gamma": 0.1}, r"unknown key 'method\.regularizers\[1\]\.gamma'"),  # a size option
        ({"name": "tv", "operator": "prewitt"},
         r"'method\.regularizers\[1\]\.operator' must be one of 'sobel' \| 'forward', got 'prewitt'"),
        ({"name": "tv", "norm": "l3"}, r"'method\.regularizers\[1\]\.norm' must be one of"),
        ({"name": "tv", "reduction": "none"}, r"'method\.regularizers\[1\]\.reduction' must be one of"),
        ({"name": "tv", "streams": ["labelled"]}, r"'method\.regularizers\[1\]\.streams\[0\]' must be one of"),
        ({"name": "tv", "streams": "labeled"}, r"'method\.regularizers\[1\]\.streams' must be list of"),
        ({"name": "tv", "streams": []}, r"'method\.regularizers\[1\]\.streams' must list 'labeled'"),
        ({"name": "tv", "streams": ["labeled", "labeled"]}, r"'method\.regularizers\[1\]\.streams' must list"),
        ({"name": "tv", "ramp_shape": "cosine"}, r"'method\.regularizers\[1\]\.ramp_shape' must be one of"),
        ({"name": "tv", "ramp_from": "epoch"}, r"'method\.regularizers\[1\]\.ramp_from' must be one of"),
        ({"name": "tv", "weight": "a lot"}, r"'method\.regularizers\[1\]\.weight' must be float, got 'a lot'"),
        ({"name": "tv", "weight": -1}, r"'method\.regularizers\[1\]\.weight' must be a finite number >= 0"),
        ({"name": "tv", "ramp_up_steps": -5}, r"'method\.regularizers\[1\]\.ramp_up_steps' must be >= 0"),
        ({"name": "tv", "edge_sigma": 0}, r"'method\.regularizers\[1\]\.edge_sigma' must be positive"),
        ({"name": "size", "gamma": -0.1}, r"'method\.regularizers\[1\]\.gamma' must be >= 0"),
        ({"name": "size", "normalization": "max"}, r"'method\.regularizers\[1\]\.normalization' must be one of"),
        ("tv", r"'method\.regularizers\[1\]' must be a mapping"),
    ],
)  # fmt: skip
def test_bad_spec_raises_one_line_config_error_naming_the_key(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_regularizers([{"name": "tv"}, spec])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=match):
        supervised({"name": "tv"}, spec)  # same message through the method's config
    with pytest.raises(ConfigError, match=match):  # and through a whole run config
        build_method(
            build_config({"method": {"name": "supervised", "regularizers": [{"name": "tv"}, spec]}}).method,
            MODEL, in_channels=1, num_classes=K,
        )  # fmt: skip


def test_regularizer_default_where():
    with pytest.raises(ConfigError, match=r"^method\.regularizers\.name: unknown regularizer"):
        Regularizer({"name": "nope"})


def test_tv_method_checks_its_options_as_its_own():
    with pytest.raises(ConfigError, match=r"'method\.edge_sigma' must be positive"):
        build_method({"name": "tv", "edge_sigma": -1.0}, MODEL, in_channels=1, num_classes=K)
    with pytest.raises(ConfigError, match=r"'method\.tv_weight' must be a finite number >= 0"):
        build_method({"name": "tv", "tv_weight": -0.1}, MODEL, in_channels=1, num_classes=K)


def test_tv_method_builds_a_typed_tv_spec_and_keeps_its_config():
    method = build_method(
        {"name": "tv", "tv_weight": 0.3, "ramp_up_steps": 7, "norm": "l2", "tv_on_unlabeled": False,
         "regularizers": [{"name": "size"}]},
        MODEL, in_channels=1, num_classes=K,
    )  # fmt: skip
    assert [r.name for r in method.regularizers] == ["size", "tv"]  # the user's first, then the method's
    tv = method.regularizers[1].spec
    assert tv == TVSpec(weight=0.3, ramp_up_steps=7, norm="l2", streams=["labeled"])
    assert [type(s) for s in method.cfg.regularizers] == [SizeSpec]  # the config is as given


# ---------------------------------------------------------------------------------- on a method
def test_supervised_with_tv_regularizer():
    method = supervised({"name": "tv", "weight": 0.5, "ramp_up_steps": 10}).train()
    method.global_step = 10  # ramp over
    data = batch()
    out = method.training_step(data, "train", "main")
    assert set(out) == {"loss", "ce", "reg/tv"}
    torch.testing.assert_close(out["loss"], out["ce"] + 0.5 * out["reg/tv"])
    # reg/tv = TV of the softmax maps, averaged over the two streams (default: labeled and unlabeled)
    with torch.no_grad():
        logits = {s: method.model(b.image) for s, b in data.items()}
    tv = [total_variation(logits[s].softmax(1)) for s in ("labeled", "unlabeled")]
    torch.testing.assert_close(out["reg/tv"].detach(), (tv[0] + tv[1]) / 2)
    torch.testing.assert_close(
        out["ce"].detach(), masked_cross_entropy(logits["labeled"], data["labeled"].mask)
    )
    # during the ramp-up the weight is smaller
    method.global_step = 0
    out0 = method.training_step(data, "train", "main")
    torch.testing.assert_close(out0["loss"], out0["ce"] + 0.5 * math.exp(-5) * out0["reg/tv"])


def test_two_regularizers_of_the_same_name_get_distinct_keys():
    method = supervised({"name": "tv", "weight": 0.5}, {"name": "tv", "weight": 2.0, "norm": "l2"}).train()
    out = method.training_step(batch(), "train", "main")
    assert set(out) == {"loss", "ce", "reg/tv", "reg/tv1"}
    torch.testing.assert_close(out["loss"], out["ce"] + 0.5 * out["reg/tv"] + 2.0 * out["reg/tv1"])
    assert out["reg/tv1"] < out["reg/tv"]  # isotropic ≤ anisotropic


def test_streams_labeled_only_ignores_unlabeled_images():
    data, other = batch(unlabeled_seed=1), batch(unlabeled_seed=2)
    assert not torch.equal(data["unlabeled"].image, other["unlabeled"].image)

    only_labeled = supervised({"name": "tv", "weight": 0.5, "streams": ["labeled"]}).train()
    a = only_labeled.training_step(data, "train", "main")
    b = only_labeled.training_step(other, "train", "main")
    assert torch.equal(a["reg/tv"], b["reg/tv"]) and torch.equal(a["loss"], b["loss"])
    with torch.no_grad():
        labeled_tv = total_variation(only_labeled.model(data["labeled"].image).softmax(1))
    torch.testing.assert_close(a["reg/tv"].detach(), labeled_tv)

    both = supervised({"name": "tv", "weight": 0.5}).train()
    assert not torch.equal(
        both.training_step(data, "train", "main")["reg/tv"],
        both.training_step(other, "train", "main")["reg/tv"],
    )
    # only the unlabeled stream: the labeled images do not count
    only_unlabeled = supervised({"name": "tv", "streams": ["unlabeled"]}).train()
    relabeled = {"labeled": batch(seed=5)["labeled"], "unlabeled": data["unlabeled"]}
    assert torch.equal(
        only_unlabeled.training_step(data, "train", "main")["reg/tv"],
        only_unlabeled.training_step(relabeled, "train", "main")["reg/tv"],
    )


def test_missing_stream_is_skipped():
    method = supervised({"name": "tv"}).train()
    data = batch()
    out = method.training_step({"labeled": data["labeled"]}, "train", "main")
    with torch.no_grad():
        labeled_tv = total_variation(method.model(data["labeled"].image).softmax(1))
    torch.testing.assert_close(out["reg/tv"].detach(), labeled_tv)


@pytest.mark.parametrize(
    ("regularizers", "optional"),
    [
        ((), ()),
        (({"name": "tv"},), ("unlabeled",)),
        (({"name": "tv", "streams": ["labeled"]},), ()),
        (({"name": "tv", "streams": ["unlabeled"]},), ("unlabeled",)),
        (
            ({"name": "tv", "streams": ["labeled"]}, {"name": "tv", "streams": ["labeled", "unlabeled"]}),
            ("unlabeled",),
        ),
    ],
)
def test_regularizer_streams_become_optional_streams(regularizers, optional):
    method = supervised(*regularizers)
    assert method.regularizer_streams() == optional
    (phase,) = method.phases()
    assert phase.streams == ("labeled",) and phase.optional_streams == optional
