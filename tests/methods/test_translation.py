"""Method "translation" (presence/absence translation, Vorontsov et al.): what test_methods.py's
registry-wide checks do not cover. Each optimizer's step touches only its own networks (spectral-norm
buffers included); the critic step reuses the generator step's translations of the same batch; the
u ~ N(0, I) draws are keyed by the absent batch; each objective builds only its networks and
optimizers; the shared segmenter's norm parameters come from the MLP only; loss weights and config
errors; the loss is the weighted sum of its components; prediction at another size; and a two-optimizer
AMSGrad run resumes bit-exactly through the real Trainer."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from semiseg.config import ModelConfig, build_config
from semiseg.core import Batch
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.losses.adversarial import hinge_d_loss
from semiseg.methods import build_method
from semiseg.phases import StreamSpec

K = 2
SIZE = (32, 32)
MODEL = ModelConfig(width=4, depth=2)  # bottleneck: 16 channels of 8x8
TINY = {"unique_channels": 4, "mlp_hidden": 8, "disc_width": 4, "disc_scales": 2}
GENERATOR_NETS = ("encoder", "common", "residual", "seg_decoder", "reconstruction", "mlp")
DISCRIMINATORS = ("disc_a", "disc_p")
STREAM_IDS = {"labeled": 0, "present": 1, "absent": 2}


def build(seed: int = 0, image_size=SIZE, **options):
    torch.manual_seed(seed)
    return build_method(
        {"name": "translation", **TINY, **options}, MODEL, in_channels=1, num_classes=K, image_size=image_size
    )


def stream(name: str, n: int, seed: int) -> Batch:
    """``n`` images of stream ``name`` (labeled: dense masks; present / absent: tags of class 1) with
    distinct keys (stream id, epoch 0, position ``seed * 100 + i``), as the engine gives them."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 1, *SIZE, generator=g)
    if name == "labeled":
        b = Batch.of(image, torch.randint(0, K, (n, *SIZE), generator=g), num_classes=K)
    else:
        tag = 1.0 if name == "present" else 0.0
        b = Batch.of(image, num_classes=K, tags=torch.tensor([[1 - tag, tag]] * n))
    b.key = torch.stack(
        [torch.full((n,), STREAM_IDS[name]), torch.zeros(n, dtype=torch.long), seed * 100 + torch.arange(n)],
        1,
    )
    return b


def make_batch(seed: int = 0) -> dict[str, Batch]:
    return {
        "labeled": stream("labeled", 2, 10 * seed),
        "present": stream("present", 2, 10 * seed + 1),
        "absent": stream("absent", 3, 10 * seed + 2),
    }


def rows(b: Batch, index: list[int]) -> Batch:
    """The samples ``index`` of ``b`` (keys included)."""
    return Batch(
        **{f.name: v[index] if torch.is_tensor(v := getattr(b, f.name)) else v for f in dataclasses.fields(b)}
    )


def rekeyed(b: Batch, offset: int = 1000) -> Batch:
    return dataclasses.replace(b, key=b.key + torch.tensor([0, 0, offset]))


def snapshot(method, names) -> dict[str, torch.Tensor]:
    """The full state (parameters and buffers, e.g. spectral norm's u, v) of the named sub-networks."""
    return {
        f"{n}.{k}": v.detach().clone()
        for n in names
        if hasattr(method, n)
        for k, v in getattr(method, n).state_dict().items()
    }


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def amsgrad(params, lr: float = 1e-2) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(params), lr=lr, betas=(0.5, 0.999), amsgrad=True)


def step(method, batch, optimizer: str) -> dict:
    """One engine step: zero the optimizer's gradients, forward, backward, step."""
    opt = amsgrad(method.parameters_for("train", optimizer))
    opt.zero_grad(set_to_none=True)
    out = method.training_step(batch, "train", optimizer)
    out["loss"].backward()
    opt.step()
    return out


def eval_generators(method) -> None:
    """Generator networks in eval mode: spectral norm then reuses its current u, v (no power iteration),
    so they compute exactly what they computed in the last training-mode forward."""
    for net in method.generator_modules():
        net.eval()


def detached(out: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in out.items()}


# ---------------------------------------------------------------------------- each step its own nets
@pytest.mark.parametrize("segmenter", ["shared", "separate"])
def test_generator_step_leaves_both_critics_untouched(segmenter):
    method = build(segmenter=segmenter).train()
    batch = make_batch()
    critics, generators = snapshot(method, DISCRIMINATORS), snapshot(method, GENERATOR_NETS)
    assert any(k.endswith("._u") for k in critics)  # spectral norm's buffers are in the snapshot
    step(method, batch, "generator")
    assert not changed(critics, snapshot(method, DISCRIMINATORS))
    moved = changed(generators, snapshot(method, GENERATOR_NETS))
    assert any(k.endswith(".original") for k in moved) and any(k.endswith("._u") for k in moved)
    assert method.disc_a.training and method.disc_p.training  # train mode restored after the step
    # the check can fail: a critic forward in train mode advances its power iteration
    with torch.no_grad():
        method.disc_a(batch["absent"].image)
    assert changed(critics, snapshot(method, DISCRIMINATORS))


def test_generator_step_in_eval_mode_keeps_the_critics_in_eval_mode():
    method = build().eval()
    method.training_step(make_batch(), "train", "generator")
    assert not method.disc_a.training and not method.disc_p.training


@pytest.mark.parametrize("segmenter", ["shared", "separate"])
def test_discriminator_step_leaves_every_generator_network_untouched(segmenter):
    method = build(segmenter=segmenter).train()
    batch = make_batch()
    step(method, batch, "generator")
    generators, critics = snapshot(method, GENERATOR_NETS), snapshot(method, DISCRIMINATORS)
    method.zero_grad(set_to_none=True)
    step(method, batch, "discriminator")
    assert not changed(generators, snapshot(method, GENERATOR_NETS))
    moved = changed(critics, snapshot(method, DISCRIMINATORS))
    assert any(k.endswith(".original") for k in moved) and any(k.endswith("._u") for k in moved)
    # the fakes are detached: no gradient reaches a generator parameter
    generator_params = list(method.parameters_for("train", "generator"))
    assert all(p.grad is None for p in generator_params)


def test_discriminator_step_without_cached_fakes_leaves_the_generator_untouched():
    method = build().train()
    generators = snapshot(method, GENERATOR_NETS)
    step(method, make_batch(), "discriminator")
    assert not changed(generators, snapshot(method, GENERATOR_NETS))


# ----------------------------------------------------------------------------------- cached fakes
def no_cache_critic_step(method, batch) -> dict[str, torch.Tensor]:
    """The critic step of a copy of ``method`` that must translate ``batch`` itself (the copy's
    generator networks in eval mode, so it translates with the weights of their last forward)."""
    other = copy.deepcopy(method)
    other._fakes = None
    eval_generators(other)
    return detached(other.training_step(batch, "train", "discriminator"))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_discriminator_step_uses_the_translations_of_the_generator_step():
    method = build().train()
    batch = make_batch()
    opt = amsgrad(method.parameters_for("train", "generator"))
    opt.zero_grad(set_to_none=True)
    out = method.training_step(batch, "train", "generator")
    # the translations of the generator before its update, recomputed by a copy without the cache
    expected = no_cache_critic_step(method, batch)
    out["loss"].backward()
    opt.step()  # the generator moves: translating now would give other fakes
    stale = no_cache_critic_step(method, batch)
    got = detached(method.training_step(batch, "train", "discriminator"))
    assert_same(got, expected)
    assert not torch.equal(got["loss"], stale["loss"]) and not torch.equal(got["d_fake"], stale["d_fake"])
    assert torch.equal(got["d_real"], stale["d_real"])  # the real images' scores do not depend on it


@pytest.mark.parametrize("name", ["present", "absent"])
def test_discriminator_step_on_another_batch_translates_it(name):
    method = build().train()
    batch = make_batch()
    method.training_step(batch, "train", "generator")
    # another batch: new images and keys on one stream
    other = {**batch, name: stream(name, len(batch[name]), seed=99)}
    expected = copy.deepcopy(method)
    expected._fakes = None  # translates in the same (train) mode as the fallback
    want = detached(expected.training_step(other, "train", "discriminator"))
    got = detached(method.training_step(other, "train", "discriminator"))
    assert_same(got, want)


def test_discriminator_step_recomputes_when_only_the_images_differ():
    # same keys (e.g. batches built with Batch.of, whose keys are all zero), other present images
    method = build().train()
    batch = make_batch()
    method.training_step(batch, "train", "generator")
    new_images = dataclasses.replace(batch["present"], image=batch["present"].image.flip(-1))
    other = {**batch, "present": new_images}
    expected = copy.deepcopy(method)
    expected._fakes = None
    want = detached(expected.training_step(other, "train", "discriminator"))
    assert_same(detached(method.training_step(other, "train", "discriminator")), want)


def test_discriminator_step_recomputes_when_only_the_keys_differ():
    # same images, other absent keys: other u draws, so the cached x_AP would be wrong
    method = build().eval()  # eval: translations are reproducible without any power iteration
    batch = make_batch()
    cached = copy.deepcopy(method)
    cached.training_step(batch, "train", "generator")
    with_cache = detached(cached.training_step(batch, "train", "discriminator"))
    method.training_step(batch, "train", "generator")
    other = {**batch, "absent": rekeyed(batch["absent"])}
    got = detached(method.training_step(other, "train", "discriminator"))
    assert_same(got, no_cache_critic_step(method, other))
    assert not torch.equal(got["d_fake"], with_cache["d_fake"])
    assert torch.equal(got["d_real"], with_cache["d_real"])


def test_discriminator_loss_is_the_two_critics_hinge_losses():
    method = build().eval()
    batch = make_batch()
    x_p, x_a = batch["present"].image, batch["absent"].image
    out = method.training_step(batch, "train", "discriminator")
    x_pa, x_ap = method.translate(batch)
    with torch.no_grad():
        real_a, fake_a = method.disc_a(x_a), method.disc_a(x_pa)
        real_p, fake_p = method.disc_p(x_p), method.disc_p(x_ap)
    assert set(out) == {"loss", "d_real", "d_fake"}
    torch.testing.assert_close(out["loss"], hinge_d_loss(real_a, fake_a) + hinge_d_loss(real_p, fake_p))
    torch.testing.assert_close(out["d_real"], torch.cat([real_a, real_p]).mean())
    torch.testing.assert_close(out["d_fake"], torch.cat([fake_a, fake_p]).mean())


# ----------------------------------------------------------------------------------- u ~ N(0, I)
def test_unique_code_prior_is_keyed_by_the_absent_batch():
    method = build()
    absent = stream("absent", 3, seed=2)
    code = torch.zeros(3, 16, 8, 8)
    torch.manual_seed(1)
    u = method.sample_unique(absent, code)
    assert u.shape == (3, 4, 8, 8) and u.dtype == code.dtype
    # same keys → the same draw, whatever the global RNG, the images or the code's values
    torch.manual_seed(2)
    same_keys = dataclasses.replace(stream("absent", 3, seed=5), key=absent.key)
    assert torch.equal(method.sample_unique(same_keys, torch.randn(3, 16, 8, 8)), u)
    assert method.sample_unique(absent, code.double()).dtype == torch.float64
    # one draw per sample, from its own key only
    assert all(not torch.equal(u[i], u[j]) for i in range(3) for j in range(i))
    assert torch.equal(method.sample_unique(rows(absent, [1]), code[:1])[0], u[1])
    one_new = absent.key.clone()
    one_new[2, 2] += 1
    v = method.sample_unique(dataclasses.replace(absent, key=one_new), code)
    assert torch.equal(v[:2], u[:2]) and not torch.equal(v[2], u[2])
    # different keys → different draws; roughly standard normal
    w = method.sample_unique(rekeyed(absent), code)
    assert not torch.equal(w, u)
    assert abs(float(u.mean())) < 0.15 and 0.85 < float(u.std()) < 1.15


def test_generator_step_draws_u_from_the_absent_keys():
    method = build().eval()  # eval: no power iteration, so repeated steps compute the same
    batch = make_batch()
    a = detached(method.training_step(batch, "train", "generator"))
    assert_same(detached(method.training_step(batch, "train", "generator")), a)
    torch.manual_seed(123)  # the global RNG plays no part
    assert_same(detached(method.training_step(batch, "train", "generator")), a)
    other = {**batch, "absent": rekeyed(batch["absent"])}
    b = detached(method.training_step(other, "train", "generator"))
    # u enters x_AP only: the latent, cycle and adversarial terms change, not Dice or reconstruction
    assert torch.equal(b["seg"], a["seg"]) and torch.equal(b["rec"], a["rec"])
    assert all(not torch.equal(b[k], a[k]) for k in ("lat", "cyc", "adv"))
    # nor do the present keys matter
    present = {**batch, "present": rekeyed(batch["present"])}
    assert_same(detached(method.training_step(present, "train", "generator")), a)
    # translate draws the same u: its x_AP changes with the absent keys, its x_PA does not
    pa, ap = method.translate(batch)
    pa2, ap2 = method.translate(other)
    assert torch.equal(pa, pa2) and not torch.equal(ap, ap2)


# ------------------------------------------------------------------------------- objectives' networks
@pytest.mark.parametrize(
    ("options", "present", "absent", "streams", "optimizers"),
    [
        (
            {},
            {"common", "residual", "disc_a", "disc_p"},
            {"seg_decoder", "reconstruction"},
            ("labeled", "present", "absent"),
            ("generator", "discriminator"),
        ),
        (
            {"segmenter": "separate"},
            {"common", "residual", "seg_decoder", "disc_a", "disc_p"},
            {"reconstruction"},
            ("labeled", "present", "absent"),
            ("generator", "discriminator"),
        ),
        (
            {"objective": "autoencoder"},
            {"seg_decoder", "reconstruction"},
            {"common", "residual", "disc_a", "disc_p"},
            ("labeled", "present", "absent"),
            ("generator",),
        ),
        (
            {"objective": "segmentation"},
            {"seg_decoder"},
            {"common", "residual", "reconstruction", "disc_a", "disc_p"},
            ("labeled",),
            ("generator",),
        ),
    ],
    ids=["translation", "separate", "autoencoder", "segmentation"],
)
def test_objectives_build_only_their_networks_and_optimizers(options, present, absent, streams, optimizers):
    method = build(**options)
    baseline = options.get("objective") in ("segmentation", "autoencoder")
    for name in {"encoder"} | present | (set() if baseline else {"mlp"}):
        assert isinstance(getattr(method, name, None), torch.nn.Module), name
    for name in absent:
        assert not hasattr(method, name), name
    # the baselines: layer-normed decoders without the norm MLP and without spectral norm (App. A)
    assert (method.mlp is None) == baseline
    assert any(parametrize.is_parametrized(m) for m in method.modules()) != baseline
    (phase,) = method.phases()
    assert tuple(s.name for s in phase.stream_specs) == streams
    assert phase.optimizer_names == optimizers
    if "present" in streams:
        specs = {s.name: s for s in phase.stream_specs}
        assert specs["present"] == StreamSpec("present", "unlabeled", tag_class=1, tag_value=1.0)
        assert specs["absent"] == StreamSpec("absent", "unlabeled", tag_class=1, tag_value=0.0)
    # every parameter belongs to exactly one optimizer
    groups = [list(method.parameters_for("train", o)) for o in optimizers]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in method.parameters()}
    if "discriminator" in optimizers:
        critics = {id(p) for n in DISCRIMINATORS for p in getattr(method, n).parameters()}
        assert {id(p) for p in groups[1]} == critics
    # the segmenter: the residual decoder (shared) or its own decoder, whose norm parameters the MLP makes
    decoder = method.segmenter.decoder
    assert decoder is (method.seg_decoder if "seg_decoder" in present else method.residual)
    assert decoder.classifier is not None
    if not baseline:
        assert method.mlp.net[-1].out_features == decoder.norm_parameters
    if options.get("segmenter") == "separate":
        assert method.residual.classifier is None  # the residual decoder only translates
        assert method.seg_decoder.out_conv is None  # ... and the segmenter only segments
    if options.get("objective") == "autoencoder":
        assert method.reconstruction.joins[0].kind == "none"  # no long skips


def test_paper_optimizers_and_partial_overrides():
    (phase,) = build().phases()
    gen, disc = (s.settings for s in phase.optimizer_specs)
    assert (gen.type, gen.amsgrad, gen.lr, gen.betas) == ("adam", True, 1e-4, [0.5, 0.999])
    assert (disc.type, disc.amsgrad, disc.lr, disc.betas) == ("adam", True, 1e-3, [0.5, 0.999])
    (phase,) = build(discriminator={"lr": 5e-3}).phases()
    disc = phase.optimizer_specs[1].settings
    assert (disc.amsgrad, disc.lr, disc.betas) == (True, 5e-3, [0.5, 0.999])  # the rest kept


def test_target_class_selects_the_tag():
    (phase,) = build(target_class=0).phases()
    assert {s.name: (s.tag_class, s.tag_value) for s in phase.stream_specs[1:]} == {
        "present": (0, 1.0),
        "absent": (0, 0.0),
    }


@pytest.mark.parametrize("objective", ["segmentation", "autoencoder"])
def test_separate_segmenter_needs_objective_translation(objective):
    with pytest.raises(
        ConfigError, match=r"^config: 'method\.segmenter' 'separate' is a variant of objective"
    ):
        build(objective=objective, segmenter="separate")


# ------------------------------------------------------------------------------------- the segmenter
def perturb(t: torch.Tensor, amount: float = 0.5) -> None:
    with torch.no_grad():
        t.add_(amount)


def outputs(method, batch, x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_PA, x_AP, segmentation logits) in eval mode."""
    return (*method.translate(batch), method.predict(x))


def test_shared_segmenter_uses_the_residual_decoders_convolutions_but_its_own_norm_parameters():
    method = build().eval()
    batch, x = make_batch(), torch.rand(2, 1, *SIZE, generator=torch.Generator().manual_seed(3))
    seg = method.segmenter
    assert seg.encoder is method.encoder and seg.decoder is method.residual and seg.mlp is method.mlp
    seg_params = {id(p) for p in seg.parameters()}
    convs = [
        m
        for m in method.residual.modules()
        if isinstance(m, torch.nn.Conv2d) and m is not method.residual.out_conv
    ]
    assert len(convs) >= 3
    assert all(id(p) in seg_params for m in convs for p in m.parameters())
    pa, ap, logits = outputs(method, batch, x)

    # the translation mode's layer-norm affine: changes the residual (x_AP), not the segmentation
    norms = [b.norm.norm for b in method.residual.blocks] + [method.residual.out_norm.norm]
    assert all(isinstance(n, torch.nn.GroupNorm) for n in norms)
    for i, norm in enumerate(norms):
        perturb(norm.weight)
        perturb(norm.bias, -0.25)
        pa2, ap2, logits2 = outputs(method, batch, x)
        assert torch.equal(logits2, logits), i
        assert torch.equal(pa2, pa) and not torch.equal(ap2, ap), i
        ap = ap2

    # the MLP's last layer (the norm parameters): changes the segmentation only
    perturb(method.mlp.net[-1].bias, 0.3)
    pa2, ap2, logits2 = outputs(method, batch, x)
    assert torch.equal(pa2, pa) and torch.equal(ap2, ap) and not torch.equal(logits2, logits)
    logits = logits2

    # a shared convolution: both; the classifier: the segmentation only
    perturb(method.residual.classifier.bias)
    pa2, ap2, logits2 = outputs(method, batch, x)
    assert torch.equal(ap2, ap) and not torch.equal(logits2, logits)
    logits = logits2
    perturb(method.residual.blocks[0].conv.parametrizations.weight.original, 0.1)
    pa2, ap2, logits2 = outputs(method, batch, x)
    assert torch.equal(pa2, pa) and not torch.equal(ap2, ap) and not torch.equal(logits2, logits)


def test_separate_segmenter_shares_only_the_encoder():
    method = build(segmenter="separate").eval()
    batch, x = make_batch(), torch.rand(2, 1, *SIZE, generator=torch.Generator().manual_seed(3))
    seg = method.segmenter
    assert seg.decoder is method.seg_decoder and seg.encoder is method.encoder
    assert not {id(p) for p in seg.parameters()} & {id(p) for p in method.residual.parameters()}
    pa, ap, logits = outputs(method, batch, x)
    perturb(method.residual.blocks[0].conv.parametrizations.weight.original, 0.1)
    pa2, ap2, logits2 = outputs(method, batch, x)
    assert torch.equal(logits2, logits) and not torch.equal(ap2, ap)
    perturb(method.seg_decoder.blocks[0].conv.parametrizations.weight.original, 0.1)
    pa3, ap3, logits3 = outputs(method, batch, x)
    assert torch.equal(ap3, ap2) and torch.equal(pa3, pa) and not torch.equal(logits3, logits)


# ------------------------------------------------------------------------------------ loss weights
@pytest.mark.parametrize(
    ("objective", "seg", "rec"),
    [("translation", 0.01, 50.0), ("autoencoder", 1.0, 1.0), ("segmentation", 1.0, 1.0)],
)
def test_default_loss_weights(objective, seg, rec):
    cfg = build(objective=objective).cfg
    assert (cfg.seg_weight, cfg.rec_weight) == (seg, rec)
    assert (cfg.lat_weight, cfg.cyc_weight, cfg.adv_weight) == (1.0, 50.0, 3.0)


@pytest.mark.parametrize("objective", ["translation", "autoencoder", "segmentation"])
def test_explicit_loss_weights_are_kept(objective):
    cfg = build(objective=objective, seg_weight=0.5, rec_weight=0.0).cfg
    assert (cfg.seg_weight, cfg.rec_weight) == (0.5, 0.0)  # 0 is a value, not "unset"
    cfg = build(objective=objective, seg_weight=0.0, rec_weight=7.0, lat_weight=0.0, adv_weight=0.25).cfg
    assert (cfg.seg_weight, cfg.rec_weight, cfg.lat_weight, cfg.adv_weight) == (0.0, 7.0, 0.0, 0.25)


WEIGHTS = ("seg_weight", "rec_weight", "lat_weight", "cyc_weight", "adv_weight")


@pytest.mark.parametrize("name", WEIGHTS)
def test_negative_loss_weight_is_a_one_line_config_error(name):
    with pytest.raises(ConfigError) as info:
        build(**{name: -0.5})
    message = str(info.value)
    assert re.fullmatch(rf"config: 'method\.{name}' must be a finite number >= 0, got -0\.5", message), (
        message
    )


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_weight_is_a_config_error(value):
    with pytest.raises(ConfigError, match="method.adv_weight"):
        build(adv_weight=value)


# ----------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("options", "image_size", "match"),
    [
        (
            {"unique_channels": 16},
            SIZE,
            r"^method\.unique_channels: 16 must be below the bottleneck's 16 channels",
        ),
        ({"unique_channels": 40}, SIZE, r"^method\.unique_channels: 40 must be below"),
        ({}, (30, 30), r"^data\.image_size: .*divides by 2\*\*model\.depth = 4, got \[30, 30\]"),
        ({}, (34, 34), r"^data\.image_size: .*divides by 2\*\*model\.depth = 4"),
        ({}, (32, 48), r"^data\.image_size: method 'translation' needs square images"),
        (
            {"disc_scales": 3},
            SIZE,
            r"^method\.disc_scales: images of 32 pixels are too small for 3 critic scales",
        ),
        ({}, None, r"^method 'translation' needs the training image size \(data\.image_size\)"),
        ({"target_class": 2}, SIZE, r"^method\.target_class: 2 is not a class of 0\.\.1"),
    ],
    ids=[
        "unique=code",
        "unique>code",
        "size30",
        "size34",
        "non-square",
        "disc_scales",
        "no-size",
        "target_class",
    ],
)
def test_config_errors(options, image_size, match):
    with pytest.raises(ConfigError, match=match) as info:
        build(image_size=image_size, **options)
    assert "\n" not in str(info.value)


def test_boundaries_of_the_config_checks_build():
    assert build(unique_channels=15).cfg.unique_channels == 15  # one channel of c left
    assert build(image_size=(36, 36)).image_size == (36, 36)
    assert build(disc_scales=2).disc_a.scales == 2
    with pytest.raises(ConfigError, match="disc_scales"):
        build(image_size=(16, 16))  # 2 scales need more than 16 pixels


# ---------------------------------------------------------------------------------- weighted losses
CUSTOM = {"seg_weight": 0.3, "rec_weight": 2.0, "lat_weight": 0.7, "cyc_weight": 5.0, "adv_weight": 1.5}


def test_generator_loss_is_the_weighted_sum_of_its_components():
    method = build(**CUSTOM).train()
    out = method.training_step(make_batch(), "train", "generator")
    assert set(out) == {"loss", "seg", "rec", "lat", "cyc", "adv"}
    assert all(out[k].ndim == 0 and out[k] != 0 for k in out)
    expected = sum(CUSTOM[f"{k}_weight"] * out[k] for k in ("seg", "rec", "lat", "cyc", "adv"))
    torch.testing.assert_close(out["loss"], expected)
    # and with the defaults (0.01, 50, 1, 50, 3)
    out = build().train().training_step(make_batch(), "train", "generator")
    expected = 0.01 * out["seg"] + 50 * out["rec"] + out["lat"] + 50 * out["cyc"] + 3 * out["adv"]
    torch.testing.assert_close(out["loss"], expected)


def test_baseline_losses_are_weighted_sums():
    out = (
        build(objective="autoencoder", seg_weight=0.3, rec_weight=2.0)
        .train()
        .training_step(make_batch(), "train", "generator")
    )
    assert set(out) == {"loss", "seg", "rec"}
    torch.testing.assert_close(out["loss"], 0.3 * out["seg"] + 2.0 * out["rec"])
    batch = make_batch()
    out = (
        build(objective="segmentation", seg_weight=0.3)
        .train()
        .training_step({"labeled": batch["labeled"]}, "train", "generator")
    )
    assert set(out) == {"loss", "seg"}
    torch.testing.assert_close(out["loss"], 0.3 * out["seg"])


def test_autoencoder_reconstructs_the_present_and_absent_images():
    method = build(objective="autoencoder").eval()
    batch = make_batch()
    out = method.training_step(batch, "train", "generator")
    images = torch.cat([batch["present"].image, batch["absent"].image])
    with torch.no_grad():
        code, _ = method.encoder(images)
        rec = F.l1_loss(method.reconstruction(code, []), images)
    torch.testing.assert_close(out["rec"].detach(), rec)


# ---------------------------------------------------------------------------------------- prediction
@pytest.mark.parametrize("hw", [(20, 28), (64, 64), SIZE])
def test_predict_at_another_size(hw):
    method = build().eval()
    x = torch.rand(2, 1, *hw, generator=torch.Generator().manual_seed(4))
    logits = method.predict(x)
    assert logits.shape == (2, K, *hw) and not logits.requires_grad
    with torch.no_grad():
        if hw == SIZE:
            expected = method.segmenter(x)
        else:
            resized = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
            expected = F.interpolate(method.segmenter(resized), size=hw, mode="bilinear", align_corners=False)
    assert torch.equal(logits, expected)


# --------------------------------------------------------------------------------------- end to end
RUN = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 40,
        "shapes_classes": 3,
        "split": {"labeled": 4, "seed": 0, "unlabeled_supervision": "tag"},
    },
    "model": {"name": "unet", "width": 4, "depth": 2},
    "method": {"name": "translation", **TINY},
    "train": {
        "epochs": 3,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "scheduler": "cosine",
        "progress": False,
        "plots": False,
        "log_every": 1,
        "augment": {"hflip": True},
    },
}


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_two_optimizer_amsgrad_run_resumes_exactly(tmp_path, resume_check):
    cfg = build_config(copy.deepcopy(RUN), [], source="test")
    log = resume_check(
        cfg, tmp_path, final_eval=False
    )  # crashes at the start of epoch 3, resumes, compares weights + logs
    assert len(log) == 3
    assert all(
        math.isfinite(e["train/generator/loss"]) and math.isfinite(e["train/discriminator/loss"]) for e in log
    )
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    crashed = load_checkpoint(tmp_path / "crashed" / "last.pt")
    # both optimizers' state, AMSGrad's running maximum included, continued exactly
    assert list(straight["optimizers"]) == ["generator", "discriminator"]
    for name, lr in (("generator", 1e-4), ("discriminator", 1e-3)):
        state = straight["optimizers"][name]
        assert state["param_groups"][0]["amsgrad"] and state["param_groups"][0]["initial_lr"] == lr
        assert all("max_exp_avg_sq" in s and int(s["step"]) == 6 for s in state["state"].values())
    assert same(straight["optimizers"], crashed["optimizers"])
    assert same(straight["schedulers"], crashed["schedulers"])


def test_explicit_channels_last_on_cpu_is_refused_in_one_line(tmp_path):
    """The translation encoder's stride-2 1x1 shortcut crashes torch 2.13's channels-last CPU backward
    (heap corruption): "auto" avoids it, and an explicit true is a config error before anything is
    written, not a segfault mid-run."""
    from semiseg.engine import run as engine_run

    cfg = build_config(copy.deepcopy(RUN), ["train.channels_last=true"], source="test")
    with pytest.raises(ConfigError, match=r"^train.channels_last: true: this network has a strided 1x1 conv"):
        engine_run.train(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ----------------------------------------------------------------------------------- end to end
def cluttered_folder(root):
    """A tiny cluttered-MNIST folder dataset (as `semiseg data generate` writes it) from 40 made-up
    digits (a bright square each): 20 / 10 / 10 digits for train / val / test, 48-simple."""
    import numpy as np

    from semiseg.data.cluttered_mnist import export_folder, generate_fold

    rng = np.random.default_rng(0)
    digits = rng.uniform(0, 0.2, size=(40, 28, 28))
    for d in digits:
        y, x = rng.integers(4, 14, size=2)
        d[y : y + 10, x : x + 10] = 0.9
    labels = np.arange(40) % 10
    folds = {
        name: generate_fold(digits, labels, np.arange(a, b), "48-simple", seed=0, fold_id=i)
        for i, (name, a, b) in enumerate([("train", 0, 20), ("val", 20, 30), ("test", 30, 40)])
    }
    return export_folder(folds, root)


def cluttered_recipe(path, root, epochs: int):
    """A tiny translation recipe on :func:`cluttered_folder`'s data (the paper's label protocol)."""
    import yaml

    path.write_text(yaml.safe_dump({
        "data": {"dataset": "folder", "path": str(root), "image_size": [48, 48],
                 "split": {"labeled_pool": "present", "labeled_labels": [9], "labeled_fraction": 0.1,
                           "unlabeled": "all", "unlabeled_supervision": "tag", "val_supervision": "same"}},
        "model": {"width": 4, "depth": 4},
        "method": {"name": "translation", "unique_channels": 8, "mlp_hidden": 8, "disc_width": 4},
        "train": {"epochs": epochs, "batch_size": 2, "iters_per_epoch": 2, "val_metric": "dice_pooled/1",
                  "progress": False, "plots": False},
    }))  # fmt: skip
    return path


def test_cli_trains_translation_on_an_exported_cluttered_folder(tmp_path):
    """`semiseg train` with the translation method on a tiny cluttered-MNIST folder dataset (as `semiseg
    data generate` writes it): digit-9 masks only, tags from the masks, both optimizers, then evaluate."""
    import json as _json

    from semiseg.cli import main

    root = cluttered_folder(tmp_path / "data")
    recipe = cluttered_recipe(tmp_path / "translation.yaml", root, epochs=2)
    out = tmp_path / "run"
    assert main(["train", "-c", str(recipe), "-o", str(out)]) == 0
    split = _json.loads((out / "split.json").read_text())
    labeled = split["labeled"]
    names = _json.loads((root / "labels.json").read_text())
    assert labeled and all(names[i] == 9 for i in labeled)  # masks of 9s only
    log = [_json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert {"train/generator/loss", "train/discriminator/loss", "val/dice_pooled/1"} <= set(log[-1])
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "test",
                 "-o", str(tmp_path / "report.json")]) == 0  # fmt: skip


def test_cli_trains_translation_on_tags_from_a_file_for_images_without_masks(tmp_path, capsys):
    """The method's use case: masks for a few 9s, and for every other training image only a tag in
    tags.json (present / absent). The present / absent streams are drawn from the file's tags."""
    import json as _json

    import yaml

    from semiseg.cli import main

    root = cluttered_folder(tmp_path / "data")
    digit = _json.loads((root / "labels.json").read_text())
    tags = {}
    for mask in sorted((root / "train" / "masks").iterdir()):
        if digit.get(mask.stem) != 9:  # absent images have no digit label
            tags[mask.stem] = [1] if mask.stem.startswith("train-p") else []
            mask.unlink()
    (root / "tags.json").write_text(_json.dumps(tags))
    present = sorted(k for k, v in tags.items() if v)
    assert present and len(tags) - len(present) > 0
    recipe = cluttered_recipe(tmp_path / "translation.yaml", root, epochs=1)
    out = tmp_path / "run"
    assert main(["train", "-c", str(recipe), "-o", str(out)]) == 0
    split = _json.loads((out / "split.json").read_text())
    assert all(digit[i] == 9 for i in split["labeled"]) and set(tags) <= set(split["unlabeled"])
    from semiseg.config import build_config
    from semiseg.data import prepare_data

    data = prepare_data(build_config(yaml.safe_load(recipe.read_text())))
    stream = {data.unlabeled.ids[i]: data.unlabeled.tags[i, 1].item() for i in range(len(data.unlabeled))}
    assert {k for k, v in stream.items() if v == 1.0} >= set(present)
    assert all(stream[k] == 0.0 for k, v in tags.items() if not v)
    capsys.readouterr()
    assert main(["data", "check", "-c", str(recipe)]) == 0  # the report counts the file's tags
    unmasked = [k for k in tags if k in split["unlabeled"]]
    line = f"tags.json: {len(unmasked)} items (class1 present in {len(present)})"
    assert line in capsys.readouterr().out


def test_baselines_can_take_the_proposed_segmenters_norm_mlp_and_spectral_norm():
    method = build(objective="segmentation", baseline_norm="adaptive", spectral_norm="all")
    assert method.mlp is not None and method.segmenter.mlp is method.mlp
    assert method.mlp.net[-1].out_features == method.seg_decoder.norm_parameters
    assert parametrize.is_parametrized(method.seg_decoder.first)
    plain = build(objective="autoencoder")
    assert plain.cfg.spectral_norm == "none" and plain.segmenter.mlp is None
    x = torch.rand(2, 1, *SIZE)
    assert plain.predict(x).shape == (2, 2, *SIZE)
