"""Model registry: a name → a builder taking ``(ModelConfig, in_channels, out_channels)``."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from semiseg.config import ModelConfig
from semiseg.errors import ConfigError

MODELS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {}


def register_model(name: str) -> Callable:
    def wrap(builder: Callable[[ModelConfig, int, int], nn.Module]) -> Callable:
        MODELS[name] = builder
        return builder

    return wrap


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    import semiseg.models.unet  # noqa: F401  (registers the built-in models)

    if cfg.name not in MODELS:
        raise ConfigError(f"model.name: unknown model '{cfg.name}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[cfg.name](cfg, in_channels, out_channels)
