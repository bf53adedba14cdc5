"""Regularisers any segmenter can use, named in a method's config.

``regularizers: [{name: tv, weight: 0.1, ramp_up_steps: 500, operator: sobel}]`` adds
``weight(step) · loss`` to the method's loss, computed on the segmenter's logits of the streams
listed in ``streams`` (labeled and/or unlabeled images). Keys other than the common ones below
are options of the loss itself and are checked against its signature.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from semiseg.errors import ConfigError

COMMON_KEYS = ("name", "weight", "ramp_up_steps", "ramp_shape", "streams")

#: name → (factory(**options) -> callable(logits, batch) -> scalar tensor)
REGULARIZERS: dict[str, Callable[..., Callable[[torch.Tensor, dict], torch.Tensor]]] = {}


def register_regularizer(name: str):
    def wrap(factory):
        REGULARIZERS[name] = factory
        return factory

    return wrap


def ramp_weight(weight: float, step: int, ramp_up_steps: int, shape: str = "sigmoid") -> float:
    """``weight`` scaled by a ramp-up from 0 to 1 over ``ramp_up_steps`` (sigmoid: exp(-5 (1-t)^2))."""
    if ramp_up_steps <= 0 or step >= ramp_up_steps:
        return weight
    t = max(step, 0) / ramp_up_steps
    return weight * (math.exp(-5.0 * (1.0 - t) ** 2) if shape == "sigmoid" else t)


class Regularizer(nn.Module):
    """A weighted, ramped loss on the segmenter's logits."""

    def __init__(self, spec: dict[str, Any], where: str = "method.regularizers"):
        super().__init__()
        spec = dict(spec)
        name = spec.get("name")
        if name not in REGULARIZERS:
            raise ConfigError(
                f"{where}: unknown regularizer '{name}' (known: {', '.join(sorted(REGULARIZERS))})"
            )
        self.name = name
        try:
            self.weight = float(spec.pop("weight", 1.0))
            self.ramp_up_steps = int(spec.pop("ramp_up_steps", 0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.{name}: weight and ramp_up_steps must be numbers ({exc})") from None
        self.ramp_shape = spec.pop("ramp_shape", "sigmoid")
        streams = spec.pop("streams", ("labeled", "unlabeled"))
        self.streams = tuple(streams) if isinstance(streams, list | tuple) else ()  # "labeled" → error
        spec.pop("name")
        if self.ramp_shape not in ("sigmoid", "linear"):
            raise ConfigError(f"{where}.{name}.ramp_shape: must be 'sigmoid' or 'linear'")
        if not self.streams or not set(self.streams) <= {"labeled", "unlabeled"}:
            raise ConfigError(f"{where}.{name}.streams: must list 'labeled' and/or 'unlabeled'")
        factory = REGULARIZERS[name]
        allowed = set(inspect.signature(factory).parameters)
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(
                f"{where}.{name}: unknown option '{unknown[0]}' (known: {', '.join(sorted(allowed | set(COMMON_KEYS)))})"
            )
        try:
            self.loss = factory(**spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.{name}: {exc}") from None

    def current_weight(self, step: int) -> float:
        return ramp_weight(self.weight, step, self.ramp_up_steps, self.ramp_shape)

    def forward(self, logits: dict[str, torch.Tensor], batch: dict[str, dict], step: int) -> torch.Tensor:
        """Weighted loss averaged over the configured streams present in ``logits``."""
        values = [self.loss(logits[s], batch[s]) for s in self.streams if s in logits]
        if not values:
            return next(iter(logits.values())).new_zeros(())
        return torch.stack(values).mean()


def build_regularizers(specs: list[dict[str, Any]]) -> nn.ModuleList:
    import semiseg.losses.size  # noqa: F401  (registers "size")
    import semiseg.losses.tv  # noqa: F401  (registers "tv")

    return nn.ModuleList([Regularizer(s, f"method.regularizers[{i}]") for i, s in enumerate(specs)])
