"""An image-level regressor: a CNN encoder, global average pooling and a small MLP head.

The curriculum paper regresses region sizes with a ResNeXt-101 trained from scratch; on a CPU
budget we use the same recipe (conv blocks, pooling) at a small width. Outputs are unconstrained
real numbers (e.g. region sizes as fractions of the image area, centroids in [0, 1]).

:class:`DensityRegressor` is a counting-style alternative: a small UNet predicts a per-pixel density
in [0, 1] per region, the area is its mean and the centroid its soft centroid. It is still trained
only on the image-level targets (sizes, centroids), never on masks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from semiseg.models.unet import ConvBlock, UNet
from semiseg.ops import soft_centroid


class Regressor(nn.Module):
    """``[B, C, H, W]`` images → ``[B, outputs]``.

    Args:
        in_channels: Image channels.
        outputs: Number of regressed values.
        width: Channels of the first block, doubled at every level.
        depth: Number of conv blocks, each followed by 2x2 max pooling.
        norm: "batch", "instance", "group" or "none".
    """

    def __init__(self, in_channels: int, outputs: int, width: int = 16, depth: int = 4, norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for level in range(depth):
            out = width * 2**level
            layers += [ConvBlock(ch, out, norm), nn.MaxPool2d(2)]
            ch = out
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(ch, ch), nn.ReLU(inplace=True), nn.Linear(ch, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return self.head(features.mean(dim=(-2, -1), keepdim=True))


class DensityRegressor(nn.Module):
    """``[B, C, H, W]`` images → ``[B, n]`` area fractions (+ ``[B, 2n]`` centroids (row, col) in [0, 1]
    when ``centroids``), from a sigmoid density map per region.

    Args:
        in_channels: Image channels.
        regions: Number of regions ``n``.
        centroids: Also output each region's soft centroid.
        width, depth, norm: Of the UNet.
    """

    def __init__(
        self,
        in_channels: int,
        regions: int,
        centroids: bool = False,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
    ):
        super().__init__()
        self.net = UNet(in_channels, regions, width, depth, norm)
        self.centroids = centroids
        # start from a small density (sigmoid(-4) ≈ 2% of the image per region), not 50%: regions are
        # usually small, and a half-covered start makes the size loss crawl for many epochs
        nn.init.constant_(self.net.head.bias, -4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        density = torch.sigmoid(self.net(x))
        area = density.flatten(2).mean(-1)
        if not self.centroids:
            return area
        return torch.cat([area, soft_centroid(density).flatten(1)], 1)
