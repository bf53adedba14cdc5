"""Every registered method: one step on a synthetic batch per phase/optimizer, gradients, save/load."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch

from semiseg.config import ModelConfig
from semiseg.core import Batch, Supervision, ViewSpec
from semiseg.data.records import IGNORE_INDEX
from semiseg.errors import ConfigError
from semiseg.methods import METHODS, Method, Phase, build_method, method_names
from semiseg.phases import SOURCES, StreamSpec

K = 3
MODEL = ModelConfig(name="unet", width=4, depth=2, norm="batch", dropout=0.0)


def stream(kind: str, b: int = 2, hw=(32, 32), seed: int = 0) -> Batch:
    """A :class:`Batch` with ``kind`` supervision."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, *hw, generator=g)
    dense = torch.randint(0, K, (b, *hw), generator=g)
    dense[:, :4] = IGNORE_INDEX  # e.g. pixels rotated in from outside the image
    counts = torch.stack([torch.bincount(m[m != IGNORE_INDEX], minlength=K) for m in dense]).float()
    nan = torch.full((b, K), float("nan"))
    mask, tags, sizes = torch.full_like(dense, IGNORE_INDEX), nan.clone(), nan.clone()
    if kind == "dense":
        mask = dense
    elif kind == "sparse":
        keep = torch.rand(b, *hw, generator=g) < 0.05
        mask = torch.where(keep, dense, torch.full_like(dense, IGNORE_INDEX))
    elif kind == "tag":
        tags = (counts > 0).float()
    elif kind == "size":
        sizes = counts
    return Batch.of(image, mask, num_classes=K, tags=tags, sizes=sizes, kind=Supervision.parse(kind))


def with_views(b: Batch, spec: ViewSpec | None, seed: int = 7) -> Batch:
    """``b`` with the strong views (noisy copies) and CutMix boxes a phase asks for, as TrainSet gives."""
    if spec is None or spec.strong == 0:
        return b
    g = torch.Generator().manual_seed(seed)
    n, k, spatial = len(b), spec.strong, b.image.shape[2:]
    strong = b.image[:, None] + 0.1 * torch.randn(n, k, *b.image.shape[1:], generator=g)
    boxes = None
    if spec.cutmix:
        boxes = torch.zeros(n, k, *spatial, dtype=torch.bool)
        boxes[..., spatial[-2] // 4 : spatial[-2] // 2, spatial[-1] // 3 :] = True
    return dataclasses.replace(b, strong=strong, cutmix=boxes)


def tagged(spec: StreamSpec, b: int = 2, hw=(32, 32)) -> Batch:
    """A batch of a tag-filtered stream: images of ``spec.source`` whose tag of ``spec.tag_class``
    is ``spec.tag_value`` (the other classes' tags as the masks say)."""
    out = stream("tag", b=b, hw=hw, seed=11 + int(spec.tag_value))
    out.tags[:, spec.tag_class] = spec.tag_value
    return out


def phase_batch(phase: Phase, data: dict[str, Batch] | None = None) -> dict[str, Batch]:
    """The streams of ``phase``, with the views it asks for."""
    data = data or batch()
    hw = tuple(next(iter(data.values())).image.shape[2:])
    out = {}
    for spec in phase.stream_specs:
        b = tagged(spec, b=2 + int(spec.tag_value), hw=hw) if spec.tag_class is not None else data[spec.name]
        out[spec.name] = with_views(b, phase.views.get(spec.name))
    return out


def batch(labeled_kind: str = "dense", hw=(32, 32)) -> dict[str, Batch]:
    return {"labeled": stream(labeled_kind, hw=hw, seed=0), "unlabeled": stream("none", b=3, hw=hw, seed=1)}


#: options that fit a method to the tiny test network (e.g. fewer unique channels than its bottleneck)
TINY = {"translation": {"unique_channels": 4, "mlp_hidden": 8, "disc_width": 4, "disc_scales": 2}}


#: the network a method needs, when the UNet does not fit it (IODA: a fully connected label-map network)
MODEL_FOR = {"ioda": ModelConfig(name="mlp", output="map", hidden=[8, 8], activation="tanh")}


def build(name: str, seed: int = 0, **options) -> Method:
    torch.manual_seed(seed)
    options = {**TINY.get(name, {}), **options}
    model = MODEL_FOR.get(name, MODEL)
    return build_method({"name": name, **options}, model, in_channels=1, num_classes=K, image_size=(32, 32))


NAMES = method_names()


def test_registry_is_not_empty():
    assert "supervised" in NAMES
    assert all(METHODS[n].method_name == n for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_phases_are_well_formed(name):
    method = build(name)
    phases = method.phases()
    assert phases and all(isinstance(p, Phase) for p in phases)
    assert len({p.name for p in phases}) == len(phases)
    assert any(p.validate for p in phases), "some phase must train (and select) the segmenter"
    for p in phases:
        assert p.optimizers and all(s.source in SOURCES for s in p.stream_specs)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_per_phase_and_optimizer(name):
    check_every_step(build(name), name, batch())


def check_every_step(method: Method, name: str, data: dict[str, Batch]) -> None:
    """One step of every phase and optimizer: a finite scalar loss whose gradient reaches every
    trainable parameter the optimizer owns."""
    method.train()
    for phase in method.phases():
        for opt_name in phase.optimizer_names:
            method.zero_grad(set_to_none=True)
            out = method.training_step(phase_batch(phase, data), phase.name, opt_name)
            where = f"{name}: phase {phase.name!r}, optimizer {opt_name!r}"
            assert "loss" in out, where
            loss = out["loss"]
            assert torch.is_tensor(loss) and loss.ndim == 0 and loss.requires_grad, where
            for key, value in out.items():
                assert torch.isfinite(torch.as_tensor(value)).all(), f"{where}: {key} = {value}"
            loss.backward()
            params = [
                (n, p)
                for n, p in method.named_parameters()
                if any(p is q for q in method.parameters_for(phase.name, opt_name))
            ]
            assert params, f"{where}: no parameters to optimise"
            trainable = [(n, p) for n, p in params if p.requires_grad]
            missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, f"{where}: no gradient for {missing}"
            assert all(torch.isfinite(p.grad).all() for _, p in trainable), where


@pytest.mark.parametrize("name", NAMES)
def test_forward_routes_to_training_step(name):
    # the engine calls the module (forward) so that DDP sees the step
    method = build(name)
    phase = method.phases()[-1]
    data = phase_batch(phase)
    state = copy.deepcopy(method.state_dict())  # a step may move state (e.g. spectral norm's vectors)
    torch.manual_seed(0)
    a = method(data, phase.name, phase.optimizer_names[0])["loss"]
    method.load_state_dict(state)
    torch.manual_seed(0)
    b = method.training_step(data, phase.name, phase.optimizer_names[0])["loss"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_predict_shape(name):
    method = build(name).eval()
    x = torch.rand(3, 1, 37, 45)
    logits = method.predict(x)
    assert logits.shape == (3, K, 37, 45) and not logits.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    a = build(name, seed=0)
    # one optimiser step so that weights and normalisation statistics differ from initialisation
    phase = [p for p in a.phases() if p.validate][0]
    opt = torch.optim.SGD(a.parameters_for(phase.name, phase.optimizer_names[0]), lr=0.1)
    a.training_step(phase_batch(phase), phase.name, phase.optimizer_names[0])["loss"].backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = build(name, seed=1)
    a.eval()
    b.eval()
    x = torch.rand(2, 1, 32, 32)
    assert not torch.equal(a.predict(x), b.predict(x))
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(a.predict(x), b.predict(x))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_method_option(name):
    with pytest.raises(ConfigError, match=r"unknown key 'method\.not_an_option'"):
        build(name, not_an_option=1)


def test_unknown_method_name():
    with pytest.raises(ConfigError, match="unknown method 'nope'.*known: .*supervised"):
        build("nope")


# -------------------------------------------------------------------------------- supervised specifics
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_supervised_loss_components(kind):
    method = build("supervised", ce_weight=1.0, dice_weight=0.5)
    out = method.training_step(batch(kind), "train", "main")
    assert set(out) == {"loss", "ce", "dice"}
    torch.testing.assert_close(out["loss"], out["ce"] + 0.5 * out["dice"])


def test_supervised_uses_labeled_pixels_only():
    method = build("supervised").eval()
    data = batch("sparse")
    loss = method.training_step(data, "train", "main")["loss"]
    other = {"labeled": data["labeled"], "unlabeled": stream("none", b=3, seed=9)}
    assert torch.equal(method.training_step(other, "train", "main")["loss"], loss)  # unlabeled stream unused
    relabeled = dataclasses.replace(data["labeled"])
    labeled = relabeled.mask != IGNORE_INDEX
    relabeled.mask = torch.where(labeled, (relabeled.mask + 1) % K, relabeled.mask)
    assert not torch.equal(method.training_step({"labeled": relabeled}, "train", "main")["loss"], loss)


# ------------------------------------------------------------------------------------- volumes
#: every method that trains a segmenter (the issue's list); image-level ones (ioda, translation,
#: ssldec) stay 2D
SEGMENTERS_3D = {
    "supervised",
    "tv",
    "size",
    "pseudo_label",
    "mean_teacher",
    "fixmatch",
    "unimatch",
    "bcp",
    "cps",
}
NAMES_3D = [n for n in NAMES if 3 in METHODS[n].spatial_dims]
MODEL_3D = dataclasses.replace(MODEL, spatial_dims=3)


def test_the_segmenter_methods_declare_3d():
    assert SEGMENTERS_3D <= set(NAMES_3D)


@pytest.mark.parametrize("name", NAMES_3D)
def test_one_step_per_phase_and_optimizer_on_volumes(name):
    torch.manual_seed(0)
    options = {
        **TINY.get(name, {}),
        "regularizers": [{"name": "tv", "weight": 0.1, "axis_weights": [0.5, 1, 1]}],
    }
    method = build_method(
        {"name": name, **options}, MODEL_3D, in_channels=1, num_classes=K, image_size=(4, 16, 16)
    )
    data = batch(hw=(4, 16, 16))
    for phase in method.phases():  # volumes go through the 3D network: [B, K, D, H, W] logits
        if phase.validate:
            out = method.predict(data["labeled"].image)
            assert out.shape == (2, K, 4, 16, 16)
    check_every_step(method, name, data)


@pytest.mark.parametrize("name", ["supervised", "unimatch"])
@pytest.mark.parametrize("source", ["data", "regressor"])
def test_the_size_regulariser_on_volumes(name, source):
    """The size penalty composed with a method on a 3D network (as UniMatch + size in 2D): sizes
    from the batch's voxel counts or from a 3D regressor trained in its own phase; every phase's step
    (the regressor's included) is finite and reaches the parameters its owner trains."""
    torch.manual_seed(0)
    size = {"name": "size", "weight": 0.01, "source": source, "streams": ["labeled", "unlabeled"]}
    if source == "regressor":
        size.update(regressor_width=4, regressor_depth=2, regressor_epochs=1)
    hw = (8, 16, 16)  # stream() ignores the first 4 rows of the first spatial axis
    method = build_method({"name": name, "regularizers": [size]}, MODEL_3D, in_channels=1, num_classes=K,
                          image_size=hw)  # fmt: skip
    assert [p.name == "size_regressor" for p in method.run_phases()][0] == (source == "regressor")
    data = {"labeled": stream("dense", hw=hw, seed=0), "unlabeled": stream("size", b=3, hw=hw, seed=1)}
    method.train()
    for phase in method.run_phases():
        owner = method.phase_owner(phase.name)
        for opt_name in phase.optimizer_names:
            method.zero_grad(set_to_none=True)
            out = method(phase_batch(phase, data), phase.name, opt_name)
            assert torch.isfinite(out["loss"]) and out["loss"].requires_grad, phase.name
            if phase.name != "size_regressor":
                assert any(k.startswith("reg/size") for k in out), sorted(out)
            out["loss"].backward()
            params = [q for q in owner.parameters_for(phase.name, opt_name) if q.requires_grad]
            assert params and all(q.grad is not None for q in params), (phase.name, opt_name)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NAMES_3D])
def test_2d_only_methods_refuse_a_3d_model_in_one_line(name):
    with pytest.raises(ConfigError, match="model.spatial_dims: .*2D models only, got 3"):
        build_method({"name": name, **TINY.get(name, {})}, MODEL_3D, in_channels=1, num_classes=K)


def test_2d_only_models_and_regularizers_refuse_volumes():
    from semiseg.models import build_model

    with pytest.raises(ConfigError, match="model.spatial_dims: model 'mlp' is 2D only, got 3"):
        build_model(ModelConfig(name="mlp", spatial_dims=3), 1, 2)
    with pytest.raises(ConfigError, match=r"method.regularizers\[0\]: regulariser 'shape_prior' supports 2D"):
        build_method({"name": "supervised", "regularizers": [{"name": "shape_prior"}]}, MODEL_3D,
                     in_channels=1, num_classes=K)  # fmt: skip


def _ecosystem_models() -> list:
    out = [pytest.param(ModelConfig(name="flexible_unet", encoder="efficientnet-b0"), id="flexible_unet")]
    try:
        import segmentation_models_pytorch  # noqa: F401

        smp_available = True
    except Exception:  # noqa: BLE001 - ImportError, or timm / torchvision failing to load
        smp_available = False
    skip = pytest.mark.skipif(
        not smp_available, reason="segmentation-models-pytorch (with torchvision) not usable"
    )
    out.append(pytest.param(ModelConfig(name="smp", arch="unet", encoder="resnet18"), id="smp", marks=skip))
    return out


@pytest.mark.parametrize("model", _ecosystem_models())
@pytest.mark.parametrize("name", sorted(SEGMENTERS_3D))
def test_every_segmenter_method_trains_ecosystem_encoders(name, model):
    """Encoders from MONAI / smp with random weights (no download here): every step of every segmenter
    method, UniMatch's feature perturbation included (encode / decode), at a size the encoder's
    stride does not divide."""
    torch.manual_seed(0)
    method = build_method({"name": name, **TINY.get(name, {})}, model, in_channels=1, num_classes=K,
                          image_size=(40, 36))  # fmt: skip
    for module in method.modules():  # EfficientNet's stochastic depth may skip a block's gradient
        if hasattr(module, "drop_connect_rate"):
            module.drop_connect_rate = 0.0
    data = batch(hw=(40, 36))
    assert method.predict(data["labeled"].image).shape == (2, K, 40, 36)
    check_every_step(method, name, data)


class Pointwise(torch.nn.Module):
    """A per-voxel network (1×1×1 convolutions, no normalisation): each voxel's logits depend on that
    voxel's input only, so an input voxel gets gradient exactly when some loss reads its prediction.
    ``encode`` / ``decode`` as the UNet's, for UniMatch's feature perturbation."""

    def __init__(self, in_channels: int, out_channels: int, dims: int):
        super().__init__()
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.inner, self.head = conv(in_channels, 4, 1), conv(4, out_channels, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(self.inner(x))]

    def decode(self, features: list[torch.Tensor], size=None) -> torch.Tensor:
        return self.head(features[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def _build_pointwise(cfg: ModelConfig, in_channels: int, out_channels: int) -> torch.nn.Module:
    return Pointwise(in_channels, out_channels, cfg.spatial_dims)


_build_pointwise.spatial_dims = (2, 3)


@pytest.fixture
def pointwise_model():
    from semiseg.models import MODELS

    MODELS.register("pointwise_test", _build_pointwise)
    yield ModelConfig(name="pointwise_test", spatial_dims=3)
    MODELS.pop("pointwise_test")


#: unlabeled losses at full weight from the first step, every pseudo-labelled voxel counting
AT_FULL_WEIGHT = {
    "fixmatch": {"threshold": 0.0},
    "unimatch": {"threshold": 0.0},
    "pseudo_label": {"threshold": 0.0},
    "mean_teacher": {"ramp_up_steps": 0, "consistency_start_step": 0},
    "cps": {"ramp_up_steps": 0},
}
#: the other paths that read predictions beyond the labels
PADDING_CASES = [(n, {}) for n in NAMES_3D] + [
    ("size", {"source": "proposals", "fs_epochs": 0}),
    ("size", {"source": "oracle"}),
    ("mean_teacher", {"perturbation": "strong", "labeled_consistency": True}),
    ("mean_teacher", {"labeled_consistency": True, "joint_batch": True}),
    ("cps", {"cps_on_labeled": True}),
]


@pytest.mark.parametrize(
    ("name", "extra"),
    [pytest.param(n, e, id="-".join([n, *(f"{k}={v}" for k, v in e.items())])) for n, e in PADDING_CASES],
)
def test_padding_of_3d_patches_gets_no_gradient(name, extra, pointwise_model):
    """3D patch padding (``Batch.valid`` False) is no image: no loss of any phase reads the
    predictions there (pseudo-labels, consistency targets, copy-paste, the TV and size regularisers on
    both streams), so with a per-voxel network the padded input voxels of both streams get zero
    gradient, while the images' voxels get some (the check is not vacuous)."""
    torch.manual_seed(0)
    streams = ["labeled", "unlabeled"]
    regularizers = [
        {"name": "tv", "weight": 0.1, "streams": streams},
        {"name": "size", "weight": 0.1, "streams": streams, "gamma": 0.0},
    ]
    options = {**TINY.get(name, {}), **AT_FULL_WEIGHT.get(name, {}), **extra, "regularizers": regularizers}
    hw = (4, 16, 16)
    method = build_method(
        {"name": name, **options}, pointwise_model, in_channels=1, num_classes=K, image_size=hw
    )
    data, images = {}, {}
    for kind, b, seed in (("dense", 2, 0), ("size", 3, 1)):
        item = stream(kind, b=b, hw=hw, seed=seed)
        valid = torch.ones(item.mask.shape, dtype=torch.bool)
        valid[:, -1] = False  # the last slice of every patch: padding past the volume's end
        valid[0, :, :, -3:] = False
        image = (item.image + 2.0 * ~valid[:, None]).requires_grad_(True)  # padding unlike the image
        mask = item.mask.masked_fill(~valid, IGNORE_INDEX)  # as PatchSet gives it
        name_ = "labeled" if kind == "dense" else "unlabeled"
        data[name_] = dataclasses.replace(item, image=image, mask=mask, valid=valid)
        images[name_] = image
    method.train()
    checked = 0
    for phase in method.run_phases():
        if "unlabeled" not in {s.name for s in phase.stream_specs} | set(phase.optional_streams):
            continue
        batch_ = phase_batch(phase, data)
        batch_.setdefault("unlabeled", data["unlabeled"])  # an optional stream the data has
        for opt_name in phase.optimizer_names:
            method.zero_grad(set_to_none=True)
            for image in images.values():
                image.grad = None
            out = method(batch_, phase.name, opt_name)
            out["loss"].backward()
            where = f"{name} {extra}: phase {phase.name!r}, optimizer {opt_name!r}"
            for stream_name, image in images.items():
                assert image.grad is not None and image.grad.abs().sum() > 0, f"{where}, {stream_name}"
                per_voxel = image.grad.abs().sum(1)
                padded = ~data[stream_name].valid
                assert (per_voxel[padded] == 0).all(), (
                    f"{where}: gradient on {int((per_voxel[padded] > 0).sum())} padded {stream_name} voxels"
                )
            checked += 1
    assert checked, f"{name}: no phase reads the unlabeled stream"
