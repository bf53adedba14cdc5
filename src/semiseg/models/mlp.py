"""Fully connected networks (``model.name: mlp``), in two forms (``model.output``):

- ``vector``: a vector per image, e.g. the SSLDEC moons network (``model.depth`` hidden layers of
  ``model.width`` units, or ``model.hidden``), for classification data. Inputs ``[B, D, 1, 1]`` (a
  vector as a 1×1 image with D channels) or any shape, flattened. ``[B, C, H, W]`` → ``[B, K]``.
- ``map``: a flattened image to a flattened label map, the IODA paper's network (e.g. 128² → 2048 →
  2048 → 128², tanh hidden units, sigmoid output). With 2 classes the last layer has one unit per
  pixel, z, and the network returns the logits ``[0, z]`` per pixel, whose softmax is exactly
  ``[1 − σ(z), σ(z)]``: the paper's sigmoid output, and every loss, metric and ``predict`` of the
  library works unchanged. With K > 2 classes it has K units per pixel (a softmax per pixel). The
  network reads the training image size (``data.image_size``); an input of another size is resized
  to it (bilinear) and the output map back to the input's size. ``[B, C, H, W]`` → ``[B, K, H, W]``.

Hidden activations: ``model.activation`` (``relu``, ``tanh`` or ``sigmoid``). ``model.init: glorot``
gives the papers' Glorot-uniform weights and zero biases. ``model.input_offset`` (maps) is subtracted
from the input before the first layer (0.5 centres images in [0, 1]); the input autoencoder of IODA
still reconstructs the image itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import ModelConfig
from semiseg.errors import ConfigError
from semiseg.models.registry import register_model
from semiseg.ops import exporting

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """Dense layers ``in_features → hidden[0] → … → num_classes`` with ``activation`` between them, on
    the flattened input (the ``vector`` form)."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (10,) * 4,
                 activation: str = "relu"):  # fmt: skip
        super().__init__()
        dims = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPMap(nn.Module):
    """A flattened ``[C, H, W]`` image to per-pixel class logits ``[K, H, W]`` (the ``map`` form).

    Attributes:
        linears: The dense layers in order (layer l maps the output of layer l − 1): the IODA method
            pre-trains the first and last ones as autoencoders.

    Shape:
        ``[B, C, h, w]`` → ``[B, K, h, w]`` (resized to and from ``image_size`` when ``(h, w)`` differs).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: Sequence[int], hidden: Sequence[int],
                 activation: str = "tanh", input_offset: float = 0.0):  # fmt: skip
        super().__init__()
        self.input_offset = float(input_offset)
        self.image_size = tuple(int(s) for s in image_size)
        self.num_classes = num_classes
        pixels = self.image_size[0] * self.image_size[1]
        self.units_per_pixel = 1 if num_classes == 2 else num_classes
        dims = [in_channels * pixels, *hidden, self.units_per_pixel * pixels]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = ACTIVATIONS[activation]()

    def layer(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Dense layer ``index`` (before its activation) on its input ``h`` (layer 0: the flattened
        image, less ``input_offset``)."""
        return self.linears[index](h - self.input_offset if index == 0 and self.input_offset else h)

    def hidden_codes(self, x: torch.Tensor, layers: int) -> torch.Tensor:
        """The output of the first ``layers`` layers (after their activation) on the flattened ``x``
        (``layers = 0``: the flattened image itself)."""
        h = x.flatten(1)
        for i in range(layers):
            h = self.activation(self.layer(i, h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        resize = exporting() or size != self.image_size  # first: comparing sizes would fix the exported one
        if resize:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        z = self.layer(len(self.linears) - 1, self.hidden_codes(x, len(self.linears) - 1))
        z = z.view(-1, self.units_per_pixel, *self.image_size)  # -1, not len(x): a dynamic batch exports
        logits = torch.cat([torch.zeros_like(z), z], 1) if self.num_classes == 2 else z
        if resize:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


@register_model("mlp")
def _build_mlp(cfg: ModelConfig, in_channels: int, out_channels: int, image_size=None) -> nn.Module:
    """``model.output: vector`` (inputs ``[B, in_channels, 1, 1]``, e.g. the SSLDEC moons net) or
    ``map`` (needs the training image size)."""
    hidden = list(cfg.hidden) if cfg.hidden is not None else [cfg.width] * cfg.depth
    if cfg.output == "vector":
        return MLP(in_channels, out_channels, hidden, cfg.activation)
    if image_size is None:
        raise ConfigError(
            "model.output: map needs the image size, which this method does not pass to its model"
        )
    return MLPMap(in_channels, out_channels, image_size, hidden, cfg.activation, cfg.input_offset)
