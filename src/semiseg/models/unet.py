"""A configurable 2D UNet (Ronneberger et al., 2015).

Width (channels of the first level, doubled per level), depth (number of poolings) and the
normalisation are options. Inputs of any size work: they are padded to a multiple of
``2**depth`` and the output is cropped back. ``encode`` / ``decode`` expose the encoder features
and a decoder that accepts (perturbed) features, for feature-perturbation consistency and heads
on the features without model surgery: ``model(x) == model.decode(model.encode(x), x.shape[-2:])``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import ModelConfig
from semiseg.models.registry import register_model


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the last two dims (bottom / right, replicating edges) up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


class PadCrop(nn.Module):
    """Wraps a network that needs sizes divisible by ``multiple``: pad the input, crop the output."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.net(pad_to_multiple(x, self.multiple))[..., :h, :w]


class ConvBlock(nn.Sequential):
    """Two 3x3 conv → norm → ReLU layers."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=norm == "none"),
                norm_layer(norm, out_ch),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """UNet returning per-pixel class logits.

    Args:
        in_channels: Image channels.
        out_channels: Number of classes.
        width: Channels at the first level.
        depth: Number of down-sampling steps.
        norm: "batch", "instance", "group" or "none".
        dropout: Dropout rate at the bottleneck.

    Shape:
        input ``[B, in_channels, H, W]`` → logits ``[B, out_channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList([ConvBlock(in_channels, chans[0], norm)])
        for i in range(1, depth + 1):
            self.encoder.append(ConvBlock(chans[i - 1], chans[i], norm, dropout if i == depth else 0.0))
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2) for i in range(depth, 0, -1)]
        )
        self.decoder = nn.ModuleList(
            [ConvBlock(2 * chans[i - 1], chans[i - 1], norm) for i in range(depth, 0, -1)]
        )
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features, finest first, the bottleneck last (the input is padded to a multiple of
        ``2**depth``).

        Shape:
            ``[B, C, H, W]`` → ``depth + 1`` maps ``[B, width·2^i, H'/2^i, W'/2^i]``.
        """
        x = pad_to_multiple(x, 2**self.depth)
        features = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features

    def decode(self, features: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits from (possibly perturbed, e.g. dropped-out) encoder features, cropped to ``size``."""
        skips = list(features)
        x = skips.pop()
        for up, block in zip(self.up, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        out = self.head(x)
        return out if size is None else out[..., : size[0], : size[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), tuple(x.shape[-2:]))


@register_model("unet")
def _build_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return UNet(in_channels, out_channels, cfg.width, cfg.depth, cfg.norm, cfg.dropout)


@register_model("monai_unet")
def _build_monai_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet as MonaiUNet

    norms = {"batch": "batch", "instance": "instance", "group": ("group", {"num_groups": 1}), "none": None}
    net = MonaiUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(cfg.width * 2**i for i in range(cfg.depth + 1)),
        strides=(2,) * cfg.depth,
        num_res_units=2,
        norm=norms[cfg.norm],
        dropout=cfg.dropout,
    )
    return PadCrop(net, 2**cfg.depth)
