"""Methods: one file each, registered by name with ``@register("name")``.

:data:`METHODS` is a :class:`~semiseg.registry.Registry`: every module of this package is imported
on first lookup (so a new method is one new file), and third-party methods come from the
``semiseg.methods`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from semiseg.config import ModelConfig, from_dict
from semiseg.errors import ConfigError
from semiseg.methods.base import EpochPlan, Method, MethodConfig, OptimizerSpec, Phase
from semiseg.registry import Registry

__all__ = [
    "METHODS",
    "EpochPlan",
    "Method",
    "MethodConfig",
    "OptimizerSpec",
    "Phase",
    "build_method",
    "method_names",
    "register",
]

#: name → Method subclass; registering sets the class's ``method_name``
METHODS: Registry[type[Method]] = Registry("method", package="semiseg.methods", name_attr="method_name")

#: class decorator: ``@register("tv")``
register = METHODS.register


def method_names() -> list[str]:
    return METHODS.names()


def build_method(
    options: dict[str, Any],
    model_cfg: ModelConfig,
    *,
    in_channels: int,
    num_classes: int,
    image_size: Sequence[int] | None = None,
) -> Method:
    """Instantiate the method named ``options["name"]`` with its checked config (``image_size``: the
    training ``[H, W]``, for methods whose networks depend on it)."""
    cls = METHODS.get(options.get("name"), where="method.name")
    try:
        cfg = from_dict(cls.config_class, dict(options), prefix="method")
    except ConfigError as exc:
        raise ConfigError(f"config: {exc}") from None
    return cls(
        cfg, in_channels=in_channels, num_classes=num_classes, model_cfg=model_cfg, image_size=image_size
    )
