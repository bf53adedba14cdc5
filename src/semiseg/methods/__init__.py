"""Methods: one file each, registered by name with :func:`register`."""

from __future__ import annotations

import importlib
from typing import Any

from semiseg.config import ModelConfig, from_dict
from semiseg.errors import ConfigError
from semiseg.methods.base import Method, MethodConfig, Phase

__all__ = ["METHODS", "Method", "MethodConfig", "Phase", "build_method", "register"]

METHODS: dict[str, type[Method]] = {}

#: modules imported on first use of the registry (each registers its methods)
_BUILTIN = ("semiseg.methods.supervised", "semiseg.methods.tv", "semiseg.methods.size")


def register(name: str):
    def wrap(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        cls.method_name = name
        return cls

    return wrap


def _load_builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def method_names() -> list[str]:
    _load_builtin()
    return sorted(METHODS)


def build_method(
    options: dict[str, Any], model_cfg: ModelConfig, *, in_channels: int, num_classes: int
) -> Method:
    """Instantiate the method named ``options["name"]`` with its checked config."""
    _load_builtin()
    name = options.get("name")
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    cls = METHODS[name]
    try:
        cfg = from_dict(cls.config_class, dict(options), prefix="method")
    except ConfigError as exc:
        raise ConfigError(f"config: {exc}") from None
    return cls(cfg, in_channels=in_channels, num_classes=num_classes, model_cfg=model_cfg)
