"""Image classifiers (one score vector per image), for classification data and SSLDEC.

- ``ssldec_cnn``: the SSLDEC paper's MNIST network (Enguehard et al. 2019, Fig. 2): three blocks of
  3×3 'same' convolutions, each followed by batch norm, ELU and dropout (``model.dropout``; the
  paper: 0.25), with 2×2 max pooling after each block (between the block's last ELU and its
  dropout, as Fig. 2 lists conv1c, pool1, drop1c); widths ``w, w, w`` / ``2w, 2w, 2w`` /
  ``4w, 2w, w`` (``w = model.width``; the paper: 128); then dense ``9w → w`` (ELU) and ``w → K``.
  With ``model.head: clustering`` the last dense layer is followed by an ELU as in the paper (its K
  activations are the embedding z the clustering head reads); with a linear head its output is the
  logits. An adaptive max pooling to 3×3 after the last block makes any input size work (the
  identity at 28×28).
- ``mlp`` (:mod:`semiseg.models.mlp`, ``model.output: vector``): the SSLDEC moons network.

Shape:
    ``[B, C, H, W]`` → ``[B, K]``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from semiseg.config import ModelConfig
from semiseg.models.registry import register_model


def _conv(c_in: int, c_out: int, norm: str, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    elif norm in ("instance", "group"):
        layers.append(nn.InstanceNorm2d(c_out, affine=True) if norm == "instance" else nn.GroupNorm(1, c_out))
    layers.append(nn.ELU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    return layers


class SSLDECNet(nn.Module):
    """The SSLDEC paper's classification CNN (Fig. 2), width ``width`` (the paper: 128)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 128, norm: str = "batch",
                 dropout: float = 0.25, embedding_activation: bool = False):  # fmt: skip
        super().__init__()
        w = width
        plan = [(w, w, w), (2 * w, 2 * w, 2 * w), (4 * w, 2 * w, w)]
        layers: list[nn.Module] = []
        c = in_channels
        for block in plan:
            for i, c_out in enumerate(block):
                last = i == len(block) - 1
                layers += _conv(c, c_out, norm, 0.0 if last else dropout)
                c = c_out
            layers.append(
                nn.MaxPool2d(2)
            )  # Fig. 2: conv1c, pool1, drop1c (pool before the block's last dropout)
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.AdaptiveMaxPool2d(3))
        self.features = nn.Sequential(*layers)
        dense: list[nn.Module] = [nn.Flatten(), nn.Linear(9 * w, w)]
        if norm == "batch":
            dense.append(nn.BatchNorm1d(w))
        dense += [nn.ELU(), nn.Linear(w, num_classes)]
        if embedding_activation:
            if norm == "batch":
                dense.append(nn.BatchNorm1d(num_classes))
            dense.append(nn.ELU())
        self.head = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("ssldec_cnn")
def _build_ssldec_cnn(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return SSLDECNet(in_channels, out_channels, cfg.width, cfg.norm, cfg.dropout,
                     embedding_activation=cfg.head == "clustering")  # fmt: skip
