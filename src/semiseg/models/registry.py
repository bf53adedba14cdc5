"""Model registry: a name → a builder taking ``(ModelConfig, in_channels, out_channels)``.

Built-in models register in their own module (``@register_model("unet")``); every module of
:mod:`semiseg.models` is imported on first lookup, third-party models come from the
``semiseg.models`` entry-point group (see :class:`~semiseg.registry.Registry`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from semiseg.config import ModelConfig
from semiseg.registry import Registry

ModelBuilder = Callable[[ModelConfig, int, int], nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model", package="semiseg.models")

#: decorator of a builder: ``@register_model("unet")``
register_model = MODELS.register


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """The network named ``cfg.name``; an unknown name raises a ConfigError naming ``model.name``.
    With ``model.head: clustering`` its output feeds a clustering head (one centroid per output
    channel), :func:`~semiseg.models.heads.clustered`."""
    net = MODELS.get(cfg.name, where="model.name")(cfg, in_channels, out_channels)
    if cfg.head == "clustering":
        from semiseg.models.heads import ClusteringHead, clustered

        net = clustered(net, ClusteringHead(out_channels, out_channels, cfg.alpha, cfg.centroid_init))
    return net
