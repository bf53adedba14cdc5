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
    """``[B, C, *S]`` images (2D or 3D) → ``[B, outputs]``.

    Args:
        in_channels: Image channels.
        outputs: Number of regressed values.
        width: Channels of the first block, doubled at every level.
        depth: Number of conv blocks, each followed by 2x2 max pooling.
        norm: "batch", "instance", "group" or "none".
        spatial_dims: 2 or 3.
        inplane_levels: 3D: the first this many blocks are in-plane only (1×3×3, pooled 1×2×2), as
            the segmenter's :class:`~semiseg.models.unet.UNet`.
    """

    def __init__(self, in_channels: int, outputs: int, width: int = 16, depth: int = 4, norm: str = "batch",
                 spatial_dims: int = 2, inplane_levels: int = 0):  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for level in range(depth):
            out = width * 2**level
            inplane = spatial_dims == 3 and level < inplane_levels
            # 3D: ceil_mode keeps an axis of size 1 (a thin patch pooled to one slice) at 1
            pool = (
                nn.MaxPool2d(2)
                if spatial_dims == 2
                else nn.MaxPool3d((1, 2, 2) if inplane else 2, ceil_mode=True)
            )
            layers += [ConvBlock(ch, out, norm, dims=spatial_dims, inplane=inplane), pool]
            ch = out
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(ch, ch), nn.ReLU(inplace=True), nn.Linear(ch, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return self.head(features.mean(dim=tuple(range(2, features.ndim)), keepdim=True))


class DensityRegressor(nn.Module):
    """``[B, C, *S]`` images → ``[B, n]`` area fractions (+ ``[B, n·len(S)]`` centroids (row, col) in
    [0, 1] when ``centroids``), from a sigmoid density map per region.

    Args:
        in_channels: Image channels.
        regions: Number of regions ``n``.
        centroids: Also output each region's soft centroid.
        width, depth, norm, spatial_dims, inplane_levels: Of the UNet.
    """

    def __init__(
        self,
        in_channels: int,
        regions: int,
        centroids: bool = False,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        spatial_dims: int = 2,
        inplane_levels: int = 0,
    ):
        super().__init__()
        self.net = UNet(in_channels, regions, width, depth, norm, spatial_dims=spatial_dims,
                        inplane_levels=inplane_levels)  # fmt: skip
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
