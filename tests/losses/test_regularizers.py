"""Config-named regularisers: ramp-up, config errors, and a regulariser on the supervised method."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg.config import ModelConfig
from semiseg.data.records import IGNORE_INDEX
from semiseg.errors import ConfigError
from semiseg.losses import masked_cross_entropy
from semiseg.losses.regularizers import Regularizer, build_regularizers, ramp_weight
from semiseg.losses.tv import total_variation
from semiseg.methods import build_method

K = 2
MODEL = ModelConfig(width=4, depth=2)


def batch(seed: int = 0, unlabeled_seed: int = 1, hw=(16, 16)) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, K, (2, *hw), generator=g)
    mask[torch.rand(2, *hw, generator=g) < 0.9] = IGNORE_INDEX  # sparse labels
    unlabeled = torch.rand(3, 1, *hw, generator=torch.Generator().manual_seed(unlabeled_seed))
    return {
        "labeled": {"image": torch.rand(2, 1, *hw, generator=g), "mask": mask},
        "unlabeled": {"image": unlabeled},
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


def test_regularizer_current_weight():
    (reg,) = build_regularizers([{"name": "tv", "weight": 2.0, "ramp_up_steps": 10, "ramp_shape": "linear"}])
    assert [reg.current_weight(s) for s in (0, 5, 10, 11)] == [0.0, 1.0, 2.0, 2.0]


# ---------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "nope"}, r"method\.regularizers\[1\]: unknown regularizer 'nope' \(known: .*tv"),
        ({"weight": 1.0}, r"method\.regularizers\[1\]: unknown regularizer 'None'"),
        ({"name": "tv", "operater": "sobel"}, r"method\.regularizers\[1\]\.tv: unknown option 'operater'"),
        ({"name": "tv", "operator": "prewitt"}, r"method\.regularizers\[1\]\.tv: operator must be"),
        ({"name": "tv", "norm": "l3"}, r"method\.regularizers\[1\]\.tv: norm must be"),
        ({"name": "tv", "reduction": "none"}, r"method\.regularizers\[1\]\.tv: reduction must be"),
        ({"name": "tv", "streams": ["labelled"]}, r"method\.regularizers\[1\]\.tv\.streams"),
        ({"name": "tv", "streams": "labeled"}, r"method\.regularizers\[1\]\.tv\.streams"),
        ({"name": "tv", "streams": []}, r"method\.regularizers\[1\]\.tv\.streams"),
        ({"name": "tv", "ramp_shape": "cosine"}, r"method\.regularizers\[1\]\.tv\.ramp_shape"),
        ({"name": "tv", "weight": "a lot"}, r"method\.regularizers\[1\]\.tv: weight"),
    ],
)
def test_bad_spec_raises_config_error_naming_the_entry(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_regularizers([{"name": "tv"}, spec])
    with pytest.raises(ConfigError, match=match):
        supervised({"name": "tv"}, spec)  # same message through the method's config


def test_regularizer_default_where():
    import semiseg.losses.tv  # noqa: F401  (registers "tv")

    with pytest.raises(ConfigError, match=r"^method\.regularizers: unknown regularizer"):
        Regularizer({"name": "nope"})


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
        logits = {s: method.model(b["image"]) for s, b in data.items()}
    tv = [total_variation(logits[s].softmax(1)) for s in ("labeled", "unlabeled")]
    torch.testing.assert_close(out["reg/tv"].detach(), (tv[0] + tv[1]) / 2)
    torch.testing.assert_close(
        out["ce"].detach(), masked_cross_entropy(logits["labeled"], data["labeled"]["mask"])
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
    assert not torch.equal(data["unlabeled"]["image"], other["unlabeled"]["image"])

    only_labeled = supervised({"name": "tv", "weight": 0.5, "streams": ["labeled"]}).train()
    a = only_labeled.training_step(data, "train", "main")
    b = only_labeled.training_step(other, "train", "main")
    assert torch.equal(a["reg/tv"], b["reg/tv"]) and torch.equal(a["loss"], b["loss"])
    with torch.no_grad():
        labeled_tv = total_variation(only_labeled.model(data["labeled"]["image"]).softmax(1))
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
        labeled_tv = total_variation(method.model(data["labeled"]["image"]).softmax(1))
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
