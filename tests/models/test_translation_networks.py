"""Presence/absence translation networks: shapes for every skip type, the segmentation mode (shared
layers, its own norm parameters), the multi-scale discriminator, spectral norm, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semiseg.models.translation import (
    SKIP_TYPES,
    MultiScaleDiscriminator,
    NormMLP,
    SkipJoin,
    TranslationDecoder,
    TranslationEncoder,
    spectral_normalize,
)


def nets(skip: str = "compress", width: int = 4, depth: int = 4, unique: int = 16):
    torch.manual_seed(0)
    enc = TranslationEncoder(1, width, depth)
    code = enc.channels[-1]
    com = TranslationDecoder(code - unique, enc.channels[:-1], skip=skip)
    res = TranslationDecoder(code, enc.channels[:-1], residual=True, skip=skip, num_classes=2)
    return enc, com, res


@pytest.mark.parametrize("skip", SKIP_TYPES)
@pytest.mark.parametrize(("size", "depth"), [(48, 4), (64, 5)])
def test_shapes_for_every_skip_type(skip, size, depth):
    enc, com, res = nets(skip, depth=depth)
    x = torch.rand(3, 1, size, size)
    z, skips = enc(x)
    bottleneck = size // 2**depth
    assert z.shape == (3, 4 * 2**depth, bottleneck, bottleneck)
    assert [s.shape[1] for s in skips] == enc.channels[:-1] and skips[0].shape[-1] == size
    c = z[:, :-16]
    out = com(c, skips)
    assert out.shape == (3, 1, size, size) and out.abs().max() <= 1  # tanh
    assert res(z, skips).shape == (3, 1, size, size)
    params = torch.zeros(3, res.norm_parameters)
    assert res.segment(z, skips, params).shape == (3, 2, size, size)


def test_norm_parameters_count_the_adapted_norms():
    enc, _, res = nets("compress", width=32, depth=4, unique=128)
    # paper at 48²: blocks on 256+1, 128+1, 64+1 channels, head on 32+1: 2 x 484 parameters
    assert res.norm_channels == [257, 129, 65, 33] and res.norm_parameters == 968
    _, _, concat = nets("concat", width=32, depth=4, unique=128)
    assert concat.norm_channels == [512, 256, 128, 64]


def test_segmentation_mode_shares_the_layers_but_not_the_norm_parameters():
    enc, _, res = nets()
    x = torch.rand(2, 1, 48, 48)
    z, skips = enc(x)
    zero = torch.zeros(2, res.norm_parameters)
    seg = res.segment(z, skips, zero)
    # other norm parameters change the segmentation, not the translation
    moved = res.segment(z, skips, zero + 0.5)
    assert not torch.allclose(seg, moved)
    # a change of a shared convolution changes both modes; the classifier only the segmentation
    with torch.no_grad():
        translated = res(z, skips)
        res.classifier.weight.add_(1.0)
        assert torch.equal(res(z, skips), translated) and not torch.allclose(res.segment(z, skips, zero), seg)
        res.blocks[0].conv.weight.add_(0.1)
        assert not torch.allclose(res(z, skips), translated)
    # the translation mode's layer-norm affine does not enter the segmentation mode
    with torch.no_grad():
        before = res.segment(z, skips, zero)
        res.blocks[1].norm.norm.weight.mul_(3.0)
        torch.testing.assert_close(res.segment(z, skips, zero), before)
    # zero parameters = plain instance norm (AdaIN starts as IN)
    h = torch.rand(2, 5, 6, 6)
    torch.testing.assert_close(res.blocks[0].norm.__class__(5)(h, torch.zeros(2, 10)), F.instance_norm(h))
    with pytest.raises(ValueError, match="without num_classes"):
        nets()[1].segment(z[:, :-16], skips, zero)


def test_every_parameter_gets_a_gradient_in_its_mode():
    enc, com, res = nets()
    mlp = NormMLP(enc.channels[-1] * 3 * 3, res.norm_parameters, hidden=8)
    x = torch.rand(2, 1, 48, 48)
    z, skips = enc(x)
    loss = com(z[:, :-16], skips).mean() + res(z, skips).mean() + res.segment(z, skips, mlp(z)).mean()
    loss.backward()
    for net in (enc, com, mlp):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # the residual decoder: everything but the affine of norms it only uses in one mode gets gradient
    assert res.classifier.weight.grad.abs().sum() > 0 and res.out_conv.weight.grad.abs().sum() > 0


def test_discriminator_one_score_per_image_at_every_scale():
    torch.manual_seed(0)
    d = MultiScaleDiscriminator(1, width=8, scales=3)
    x = torch.rand(4, 1, 48, 48)
    out = d(x)
    assert out.shape == (4,)
    # each image's score is its own (layer norm is per sample)
    torch.testing.assert_close(d(x[:1]), out[:1])
    # D = the mean over scales of each scale's own critic on the pooled image
    pooled = [x, F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)]
    pooled.append(F.avg_pool2d(pooled[1], 3, 2, 1, count_include_pad=False))
    by_hand = sum(net(p).mean(dim=(1, 2, 3)) for net, p in zip(d.critics, pooled)) / 3
    torch.testing.assert_close(out, by_hand)
    # one set of weights per scale (pix2pixHD, MUNIT, the authors' code)
    weights = [net[0].weight for net in d.critics]
    assert len({id(w) for w in weights}) == 3 and not torch.equal(weights[0], weights[1])


def test_spectral_norm_on_every_conv_and_linear():
    d = spectral_normalize(MultiScaleDiscriminator(1, width=8))
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    with torch.no_grad():
        for _ in range(30):  # power iterations converge in training mode
            d(torch.rand(2, 1, 48, 48))
    d.eval()
    for m in convs:
        w = m.weight.detach().flatten(1)
        assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, rel=0.05)


def test_bad_skip_type():
    with pytest.raises(ValueError, match="unknown skip type 'add'"):
        SkipJoin("add", 4)


def test_encoder_and_decoders_start_kaiming_normal():
    enc, com, res = nets(width=32)
    for net in (enc, com, res):
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight[0].numel() >= 1000:
                fan_in = m.weight[0].numel()
                assert float(m.weight.detach().std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
                assert m.bias is None or not m.bias.any()
