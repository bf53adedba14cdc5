"""Networks: one shared tester (odd sizes, gradients, state_dict round trip), a tiny subclass per model."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from semiseg.config import ModelConfig
from semiseg.errors import ConfigError
from semiseg.models import MODELS, build_model

SIZES = [(32, 32), (37, 45), (9, 17)]


class ModelTester:
    """Shared checks; subclasses set the model options (kept tiny: width 4-8, depth 2-3)."""

    name = "unet"
    norm = "batch"
    width = 4
    depth = 2
    dropout = 0.0
    in_channels = 1
    num_classes = 3
    features = True  #: exposes ``encode`` / ``decode`` (feature perturbation, heads on features)
    per_pixel = True  #: scores per pixel ``[B, K, H, W]``; False: one per image ``[B, K]`` (classifiers)
    sizes = SIZES  #: input sizes of the shape / gradient tests
    batch_atol = 1e-5  #: float summation order differs with the batch size (deeper networks: more)

    def out_shape(self, batch: int, hw) -> tuple[int, ...]:
        return (batch, self.num_classes, *hw) if self.per_pixel else (batch, self.num_classes)

    head = "linear"

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = ModelConfig(
            name=self.name,
            width=self.width,
            depth=self.depth,
            norm=self.norm,
            dropout=self.dropout,
            head=self.head,
        )
        return build_model(cfg, self.in_channels, self.num_classes)

    def inputs(self, hw, batch: int = 2, seed: int = 1) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, *hw, generator=torch.Generator().manual_seed(seed))

    @pytest.mark.parametrize("size", range(3))
    def test_forward_shape(self, size):
        hw = self.sizes[size % len(self.sizes)]
        model = self.build()
        out = model(self.inputs(hw))
        assert out.shape == self.out_shape(2, hw)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        model.eval()
        with torch.no_grad():
            assert model(self.inputs(hw)).shape == self.out_shape(2, hw)

    @pytest.mark.parametrize("size", range(3))
    def test_every_parameter_gets_a_gradient(self, size):
        hw = self.sizes[size % len(self.sizes)]
        model = self.build()
        x = self.inputs(hw).requires_grad_(True)
        target = torch.randint(0, self.num_classes, self.out_shape(2, hw)[:1] + self.out_shape(2, hw)[2:],
                               generator=torch.Generator().manual_seed(2))  # fmt: skip
        F.cross_entropy(model(x), target).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"parameters without gradient: {missing}"
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        assert x.grad is not None and (x.grad != 0).any()

    def test_state_dict_round_trip(self):
        a = self.build(seed=0)
        # one training step so that normalisation statistics and weights differ from the initial ones
        opt = torch.optim.SGD(a.parameters(), lr=0.1)
        x = self.inputs(self.sizes[0])
        a(x).square().mean().backward()
        opt.step()
        buffer = io.BytesIO()
        torch.save(a.state_dict(), buffer)
        buffer.seek(0)
        b = self.build(seed=1)
        a.eval()
        b.eval()
        probe = self.inputs(self.sizes[0], seed=5)
        with torch.no_grad():
            assert not torch.equal(a(probe), b(probe))
        b.load_state_dict(torch.load(buffer, weights_only=True))
        with torch.no_grad():
            assert torch.equal(a(probe), b(probe))
        for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert na == nb and torch.equal(ta, tb)

    @pytest.mark.parametrize("size", range(3))
    def test_encode_decode_equal_forward_and_accept_perturbed_features(self, size):
        hw = self.sizes[size % len(self.sizes)]
        model = self.build().eval()
        if not self.features:
            assert not hasattr(model, "encode")
            return
        x = self.inputs(hw)
        with torch.no_grad():
            features = model.encode(x)
            assert len(features) >= 2 and all(f.shape[0] == 2 for f in features)
            torch.testing.assert_close(model.decode(features, hw), model(x))
        model.train()
        perturbed = [F.dropout(f, 0.5, training=True) for f in model.encode(x)]
        out = model.decode(perturbed, hw)
        assert out.shape == (2, self.num_classes, *hw)
        out.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters())

    def test_eval_output_does_not_depend_on_the_batch(self):
        model = self.build().eval()
        x = self.inputs(self.sizes[0], batch=3)
        with torch.no_grad():
            together = model(x)
            alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=self.batch_atol)


class TestUNetBatch(ModelTester):
    norm = "batch"


class TestUNetInstance(ModelTester):
    norm = "instance"


class TestUNetGroup(ModelTester):
    norm = "group"
    width = 8


class TestUNetNoNorm(ModelTester):
    norm = "none"


class TestUNetDeepRGBDropout(ModelTester):
    depth = 3
    dropout = 0.3
    in_channels = 3
    num_classes = 2

    def test_dropout_active_in_training_only(self):
        model = self.build()
        x = self.inputs((32, 32))
        with torch.no_grad():
            assert not torch.equal(model(x), model(x))
            model.eval()
            assert torch.equal(model(x), model(x))


SIZES_3D = [(4, 16, 16), (5, 19, 23), (3, 9, 17)]


class TestUNet3D(ModelTester):
    """The 3D UNet, the first level in-plane only (1x3x3 convolutions, 1x2x2 pooling)."""

    depth = 2
    sizes = SIZES_3D

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = ModelConfig(name="unet", width=4, depth=2, norm=self.norm, spatial_dims=3, inplane_levels=1)
        return build_model(cfg, self.in_channels, self.num_classes)

    def test_inplane_levels_pool_only_in_plane(self):
        model = self.build()
        convs = [m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
        assert convs[:2] == [(1, 3, 3), (1, 3, 3)] and (3, 3, 3) in convs
        assert model.multiple == (2, 4, 4)  # depth 2: D pooled once (level 2), H and W twice
        features = model.encode(self.inputs((4, 16, 16)))
        assert [tuple(f.shape[2:]) for f in features] == [(4, 16, 16), (4, 8, 8), (2, 4, 4)]


def test_the_2d_unet_is_unchanged_by_3d_support():
    """Module tree, parameter names and values at a seed, as before 3D existed (hashes from cb08448's code)."""
    import hashlib

    golden = {(4, 2, "batch", 0.0): "a779388fb45a6503", (16, 4, "batch", 0.1): "981e6970a957c8eb",
              (4, 3, "group", 0.0): "823e834ea7550d3a"}  # fmt: skip
    for (width, depth, norm, dropout), expected in golden.items():
        torch.manual_seed(0)
        m = build_model(ModelConfig(name="unet", width=width, depth=depth, norm=norm, dropout=dropout), 1, 3)
        h = hashlib.sha256(repr(m).encode())
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        assert h.hexdigest()[:16] == expected, (width, depth, norm)


class TestMonaiUNet(ModelTester):
    name = "monai_unet"
    width = 8
    features = False  # MONAI's recursive UNet has no encoder/decoder split


class TestMonaiUNetInstance(TestMonaiUNet):
    norm = "instance"


class TestMonaiUNetGroup(TestMonaiUNet):
    norm = "group"


class TestMonaiUNetNoNorm(TestMonaiUNet):
    norm = "none"
    width = 4


class TestFlexibleUNet(ModelTester):
    """MONAI's FlexibleUNet with an EfficientNet encoder (random weights: no download here)."""

    name = "flexible_unet"
    encoder = "efficientnet-b0"
    batch_atol = 1e-4

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = ModelConfig(name=self.name, encoder=self.encoder, norm=self.norm)
        model = build_model(cfg, self.in_channels, self.num_classes)
        for module in model.modules():  # stochastic depth would skip some blocks' gradients at random
            if hasattr(module, "drop_connect_rate"):
                module.drop_connect_rate = 0.0
        return model


class TestFlexibleUNetResNet(TestFlexibleUNet):
    encoder = "resnet10"
    norm = "instance"


def _smp_usable() -> bool:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or timm / torchvision failing to load
        return False
    return True


@pytest.mark.skipif(not _smp_usable(), reason="segmentation-models-pytorch (with torchvision) not usable")
class TestSmp(TestFlexibleUNet):
    name = "smp"
    encoder = "resnet18"


@pytest.mark.skipif(not _smp_usable(), reason="segmentation-models-pytorch (with torchvision) not usable")
@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus"])
def test_smp_architectures_segment_any_size_and_expose_their_encoder(arch):
    net = build_model(ModelConfig(name="smp", arch=arch, encoder="resnet18", encoder_weights=None), 3, 4)
    x = torch.rand(2, 3, 64, 80)  # 80: not a multiple of the encoder's stride 32
    assert net(x).shape == (2, 4, 64, 80)
    net.eval()  # FPN and DeepLabV3+ heads hold dropout
    torch.testing.assert_close(
        net.decode(net.encode(x), tuple(x.shape[-2:])), net(x)
    )  # the engine's feature access


def test_every_registered_model_has_a_tester():
    build_model(ModelConfig(), 1, 2)  # loads the built-in registrations
    tested = {cls.name for cls in ModelTester.__subclasses__()} | {
        c.name for s in ModelTester.__subclasses__() for c in s.__subclasses__()
    }
    assert set(MODELS) <= tested


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown model 'resnet'.*known: .*unet"):
        build_model(ModelConfig(name="resnet"), 1, 2)


# ------------------------------------------------------------------------------ image classifiers
CLASSIFIER_SIZES = [(28, 28), (32, 32), (17, 23)]


class TestSSLDECNet(ModelTester):
    name = "ssldec_cnn"
    width = 4
    dropout = 0.0
    num_classes = 10
    features = False
    per_pixel = False
    sizes = CLASSIFIER_SIZES

    def test_the_papers_width_has_the_figure_2_layers(self):
        from semiseg.models.classifier import SSLDECNet

        net = SSLDECNet(1, 10, width=128, dropout=0.25)
        convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs == [128, 128, 128, 256, 256, 256, 512, 256, 128]
        dense = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
        assert dense == [(1152, 128), (128, 10)]
        assert sum(isinstance(m, torch.nn.Dropout) for m in net.modules()) == 9  # after every conv


class TestSSLDECNetClustering(TestSSLDECNet):
    head = "clustering"  # the embedding through an ELU (Fig. 2), then the clustering head: log q

    def test_output_is_log_q(self):
        out = self.build().eval()(self.inputs((28, 28)))
        torch.testing.assert_close(out.exp().sum(1), torch.ones(2))


class TestMLP(ModelTester):
    name = "mlp"
    width = 10
    depth = 4
    in_channels = 2
    num_classes = 2
    features = False
    per_pixel = False
    sizes = [(1, 1)]  # a 2-D point as a 1x1 image with 2 channels


class TestMLPMap(ModelTester):
    """The IODA paper's network: a flattened image to a flattened label map (sizes other than the
    training size are resized to it and back)."""

    name = "mlp"
    num_classes = 2
    features = False
    image_size = (12, 10)
    sizes = [(12, 10), (13, 17), (9, 8)]

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = ModelConfig(name="mlp", output="map", hidden=[8, 6], activation="tanh", init="glorot")
        return build_model(cfg, self.in_channels, self.num_classes, image_size=self.image_size)

    def test_binary_output_is_a_sigmoid_per_pixel(self):
        model = self.build()
        x = self.inputs(self.image_size)
        logits = model(x)
        z = model.linears[-1](model.hidden_codes(x, 2)).view(2, *self.image_size)
        torch.testing.assert_close(logits.softmax(1)[:, 1], torch.sigmoid(z))
        assert [(m.in_features, m.out_features) for m in model.linears] == [(120, 8), (8, 6), (6, 120)]

    def test_glorot_bounds_variance_and_zero_biases(self):
        torch.manual_seed(0)
        wide = build_model(
            ModelConfig(name="mlp", output="map", hidden=[300], init="glorot"), 1, 2, image_size=(20, 20)
        )
        for layer in wide.linears:  # U(-l, l): variance l^2 / 3 = 2 / (m + n) (PyTorch's default: 1 / (3 m))
            m, n = layer.in_features, layer.out_features
            assert abs(float(layer.weight.detach().var()) / (2 / (m + n)) - 1) < 0.05
        model = self.build()
        for layer in model.linears:
            m, n = layer.in_features, layer.out_features
            assert (
                float(layer.weight.detach().abs().max()) <= (6 / (m + n)) ** 0.5
                and not layer.bias.detach().any()
            )

    def test_input_offset_is_the_first_bias_shifted(self):
        """Subtracting c from the input equals adding -c * W 1 to the first layer's bias: a
        reparametrisation (it changes how gradient descent moves, not what the network can say)."""
        torch.manual_seed(0)
        cfg = ModelConfig(name="mlp", output="map", hidden=[8, 6], activation="tanh", input_offset=0.5)
        shifted = build_model(cfg, 1, 2, image_size=self.image_size)
        plain = build_model(ModelConfig(name="mlp", output="map", hidden=[8, 6], activation="tanh"), 1, 2,
                            image_size=self.image_size)  # fmt: skip
        plain.load_state_dict(shifted.state_dict())
        with torch.no_grad():
            first = plain.linears[0]
            first.bias -= 0.5 * first.weight.sum(1)
        x = self.inputs(self.image_size)
        torch.testing.assert_close(shifted(x), plain(x))
        assert not torch.allclose(shifted(x), build_model(ModelConfig(name="mlp", output="map", hidden=[8, 6],
                                  activation="tanh"), 1, 2, image_size=self.image_size)(x))  # fmt: skip

    def test_more_classes_have_a_softmax_per_pixel(self):
        cfg = ModelConfig(name="mlp", output="map", hidden=[5])
        net = build_model(cfg, 1, 3, image_size=(4, 4))
        assert net(torch.rand(2, 1, 4, 4)).shape == (2, 3, 4, 4) and net.linears[-1].out_features == 48

    def test_a_map_needs_the_image_size_and_vectors_keep_their_layout(self):
        with pytest.raises(ConfigError, match="model.output: map needs the image size"):
            build_model(ModelConfig(name="mlp", output="map"), 1, 2)
        vector = build_model(ModelConfig(name="mlp", width=10, depth=4), 2, 2)  # the SSLDEC moons net
        assert (
            list(vector.state_dict())[:2] == ["net.1.weight", "net.1.bias"] and len(vector.state_dict()) == 10
        )


def test_ecosystem_encoders_build_split_and_fail_in_one_line(monkeypatch):
    import urllib.error

    from semiseg.config import ModelConfig
    from semiseg.errors import ConfigError
    from semiseg.models import build_model

    net = build_model(ModelConfig(name="flexible_unet", encoder="efficientnet-b0"), 2, 3).eval()
    x = torch.rand(1, 2, 45, 70)
    features = net.encode(x)
    assert len(features) == 5 and torch.equal(net.decode(features, (45, 70)), net(x))
    assert net(x).shape == (1, 3, 45, 70)
    vol = build_model(
        ModelConfig(name="flexible_unet", encoder="resnet10", spatial_dims=3, norm="instance"), 1, 2
    )
    assert vol.eval()(torch.rand(1, 1, 20, 24, 28)).shape == (1, 2, 20, 24, 28)
    with pytest.raises(ConfigError, match=r"^model\.encoder: 'vgg11' is not a flexible_unet backbone"):
        build_model(ModelConfig(name="flexible_unet", encoder="vgg11"), 1, 2)
    with pytest.raises(
        ConfigError, match=r"^model\.encoder_weights: MONAI has no ImageNet weights for 'resnet18'"
    ):
        build_model(ModelConfig(name="flexible_unet", encoder="resnet18", encoder_weights="imagenet"), 1, 2)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    import monai.networks.nets.efficientnet as effnet

    monkeypatch.setattr(effnet.model_zoo, "load_url", offline)
    with pytest.raises(ConfigError, match=r"^model\.encoder_weights: the imagenet weights of encoder 'efficientnet-b0' "
                                          r"could not be downloaded \(URLError\); [^\n]*TORCH_HOME[^\n]*$"):  # fmt: skip
        build_model(
            ModelConfig(name="flexible_unet", encoder="efficientnet-b0", encoder_weights="imagenet"), 3, 2
        )


def test_requested_weights_without_network_put_the_hub_offline_for_the_build(monkeypatch):
    """No route to the weights' host: Hugging Face Hub is offline inside the block (cached weights
    load, missing ones fail at once) and as before after it; without weights nothing is probed."""
    import socket
    import sys
    import types

    from semiseg.models.encoders import _offline_without_network

    constants = types.SimpleNamespace(HF_HUB_OFFLINE=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(constants=constants))
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", constants)

    def unreachable(*args, **kwargs):
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with _offline_without_network(True):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False
    with _offline_without_network(False):
        assert constants.HF_HUB_OFFLINE is False


def test_monai_unet_refuses_inplane_levels_it_cannot_build():
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model.inplane_levels: not available with model.name monai_unet"):
        build_model(ModelConfig(name="monai_unet", width=4, depth=2, spatial_dims=3, inplane_levels=1), 1, 2)
