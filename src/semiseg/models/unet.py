"""A configurable UNet (Ronneberger et al., 2015), 2D or 3D (``model.spatial_dims``).

Width (channels of the first level, doubled per level), depth (number of poolings) and the
normalisation are options. Inputs of any size work: they are padded to a multiple of the total
stride on each axis and the output is cropped back. ``encode`` / ``decode`` expose the encoder
features and a decoder that accepts (perturbed) features, for feature-perturbation consistency and
heads on the features without model surgery: ``model(x) == model.decode(model.encode(x), x.shape[2:])``.

In 3D, ``model.inplane_levels: n`` makes the first n levels in-plane only (1×3×3 convolutions, 1×2×2
pooling; nnU-Net's rule for volumes whose slices are thick), the deeper ones isotropic (3×3×3, 2×2×2).
The 2D network is the same module tree, parameters and drawing order as before 3D existed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import ModelConfig
from semiseg.errors import ConfigError
from semiseg.models.registry import register_model


def norm_layer(kind: str, channels: int, dims: int = 2) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":  # 8 groups (one per channel below 8); a width no such count divides: gcd(8, C)
        groups = min(8, channels)
        return nn.GroupNorm(groups if channels % groups == 0 else math.gcd(8, channels), channels)
    return nn.Identity()


def pad_to_multiple(x: torch.Tensor, multiple: int | tuple[int, ...]) -> torch.Tensor:
    """Pad the spatial dims (at their end, replicating edges) up to a multiple of ``multiple`` (one
    number for the last two dims, or one per spatial dim)."""
    if isinstance(multiple, int):
        multiple = (multiple, multiple)
    sizes = x.shape[-len(multiple) :]
    pads = [(-s) % m for s, m in zip(sizes, multiple)]
    # traced for export (sizes symbolic): always pad, so that the graph pads any size, not just the example's
    if torch.compiler.is_compiling() or any(pads):
        flat = [p for pad in reversed(pads) for p in (0, pad)]  # F.pad: last dim first
        x = F.pad(x, flat, mode="replicate")
    return x


class PadCrop(nn.Module):
    """Wraps a network that needs sizes divisible by ``multiple``: pad the input, crop the output."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        out = self.net(pad_to_multiple(x, (self.multiple,) * len(size)))
        return out[(..., *(slice(0, s) for s in size))]


class ConvBlock(nn.Sequential):
    """Two conv → norm → ReLU layers (3x3, 3x3x3 or, in-plane in 3D, 1x3x3)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0, dims: int = 2,
                 inplane: bool = False):  # fmt: skip
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        kernel, padding = ((1, 3, 3), (0, 1, 1)) if inplane and dims == 3 else (3, 1)
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                conv(in_ch if i == 0 else out_ch, out_ch, kernel, padding=padding, bias=norm == "none"),
                norm_layer(norm, out_ch, dims),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append((nn.Dropout2d if dims == 2 else nn.Dropout3d)(dropout))
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
        spatial_dims: 2 or 3.
        inplane_levels: 3D: the first this many levels are in-plane only (1×3×3 convolutions; the
            poolings after them 1×2×2).

    Shape:
        input ``[B, in_channels, *S]`` → logits ``[B, out_channels, *S]`` (``S`` = H, W or D, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
        spatial_dims: int = 2,
        inplane_levels: int = 0,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if spatial_dims == 2 and inplane_levels:
            raise ValueError("inplane_levels applies to 3D networks")
        chans = [width * 2**i for i in range(depth + 1)]
        self.depth, self.dims = depth, spatial_dims
        inplane = [
            spatial_dims == 3 and i < inplane_levels for i in range(depth + 1)
        ]  # level i's convolutions
        #: pooling (and up-sampling) factor between level i and i + 1, per spatial axis
        self.strides = [((1, 2, 2) if inplane[i] else (2,) * spatial_dims) for i in range(depth)]
        self.multiple = tuple(
            int(torch.tensor([s[a] for s in self.strides]).prod()) for a in range(spatial_dims)
        )
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, chans[0], norm, dims=spatial_dims, inplane=inplane[0])]
        )
        for i in range(1, depth + 1):
            self.encoder.append(ConvBlock(chans[i - 1], chans[i], norm, dropout if i == depth else 0.0, spatial_dims,
                                          inplane[i]))  # fmt: skip
        up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        stride = (lambda i: 2) if spatial_dims == 2 else (lambda i: self.strides[i - 1])  # noqa: E731
        self.up = nn.ModuleList(
            [up(chans[i], chans[i - 1], stride(i), stride=stride(i)) for i in range(depth, 0, -1)]
        )
        self.decoder = nn.ModuleList(
            [ConvBlock(2 * chans[i - 1], chans[i - 1], norm, dims=spatial_dims, inplane=inplane[i - 1])
             for i in range(depth, 0, -1)]
        )  # fmt: skip
        self.head = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(chans[0], out_channels, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features, finest first, the bottleneck last (the input is padded to a multiple of the
        total stride on each axis).

        Shape:
            ``[B, C, *S]`` → ``depth + 1`` maps ``[B, width·2^i, *S_i]`` (2D: ``S_i = S' / 2^i``).
        """
        x = pad_to_multiple(x, self.multiple)
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        features = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else pool(x, 2 if self.dims == 2 else self.strides[i - 1]))
            features.append(x)
        return features

    def decode(self, features: list[torch.Tensor], size: tuple[int, ...] | None = None) -> torch.Tensor:
        """Logits from (possibly perturbed, e.g. dropped-out) encoder features, cropped to ``size``."""
        skips = list(features)
        x = skips.pop()
        for up, block in zip(self.up, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        out = self.head(x)
        return out if size is None else out[(..., *(slice(0, s) for s in size))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), tuple(x.shape[2:]))


@register_model("unet")
def _build_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return UNet(in_channels, out_channels, cfg.width, cfg.depth, cfg.norm, cfg.dropout, cfg.spatial_dims,
                cfg.inplane_levels)  # fmt: skip


@register_model("monai_unet")
def _build_monai_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet as MonaiUNet

    if cfg.inplane_levels:
        raise ConfigError("model.inplane_levels: not available with model.name monai_unet (use unet)")
    norms = {"batch": "batch", "instance": "instance", "group": ("group", {"num_groups": 1}), "none": None}
    net = MonaiUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(cfg.width * 2**i for i in range(cfg.depth + 1)),
        strides=(2,) * cfg.depth,
        num_res_units=2,
        norm=norms[cfg.norm],
        dropout=cfg.dropout,
    )
    return PadCrop(net, 2**cfg.depth)


_build_unet.spatial_dims = _build_monai_unet.spatial_dims = (2, 3)  # type: ignore[attr-defined]
