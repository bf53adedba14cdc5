"""Model registry: a name → a builder taking ``(ModelConfig, in_channels, out_channels)``.

Built-in models register in their own module (``@register_model("unet")``); every module of
:mod:`semiseg.models` is imported on first lookup, third-party models come from the
``semiseg.models`` entry-point group (see :class:`~semiseg.registry.Registry`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn as nn

from semiseg.config import ModelConfig
from semiseg.errors import ConfigError
from semiseg.registry import Registry

ModelBuilder = Callable[[ModelConfig, int, int], nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model", package="semiseg.models")

#: decorator of a builder: ``@register_model("unet")``
register_model = MODELS.register


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int, image_size=None) -> nn.Module:
    """The network named ``cfg.name``; an unknown name raises a ConfigError naming ``model.name``.
    A builder that reads ``model.spatial_dims`` declares it with a ``spatial_dims = (2, 3)`` attribute;
    any other refuses 3D in one line. ``image_size`` (the training ``[H, W]``) goes to builders that
    take it (e.g. ``mlp`` maps).
    With ``model.head: clustering`` its output feeds a clustering head (one centroid per output
    channel), :func:`~semiseg.models.heads.clustered`."""
    builder = MODELS.get(cfg.name, where="model.name")
    dims = getattr(builder, "spatial_dims", (2,))  # a builder of volumes too declares (2, 3)
    if cfg.spatial_dims not in dims:
        raise ConfigError(f"model.spatial_dims: model '{cfg.name}' is {' or '.join(f'{d}D' for d in dims)} only, "
                          f"got {cfg.spatial_dims}")  # fmt: skip
    if image_size is not None and "image_size" in inspect.signature(builder).parameters:
        net = builder(cfg, in_channels, out_channels, image_size=tuple(image_size))
    else:
        net = builder(cfg, in_channels, out_channels)
    if cfg.init == "glorot":
        glorot_init_(net)
    if cfg.head == "clustering":
        from semiseg.models.heads import ClusteringHead, clustered

        net = clustered(net, ClusteringHead(out_channels, out_channels, cfg.alpha, cfg.centroid_init))
    return net


@torch.no_grad()
def glorot_init_(net: nn.Module) -> nn.Module:
    """Keras's default initialisation, in place: every convolution's and dense layer's weight
    Glorot-uniform (U(−l, l), l = √(6 / (fan_in + fan_out)), fans including the kernel's size),
    biases zero.

    Examples:
        >>> layer = glorot_init_(nn.Linear(4, 2))
        >>> bool(layer.weight.abs().max() <= (6 / 6) ** 0.5), bool((layer.bias == 0).all())
        (True, True)
    """
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net
