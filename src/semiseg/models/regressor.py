"""An image-level regressor: a CNN encoder, global average pooling and a small MLP head.

The curriculum paper regresses region sizes with a ResNeXt-101 trained from scratch; on a CPU
budget we use the same recipe (conv blocks, pooling) at a small width. Outputs are unconstrained
real numbers (e.g. region sizes as fractions of the image area, centroids in [0, 1]).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from semiseg.models.unet import ConvBlock


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
