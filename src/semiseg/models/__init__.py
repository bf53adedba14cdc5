"""Networks and a small registry: ``build_model(ModelConfig, in_channels, out_channels)``."""

from semiseg.models.registry import MODELS, build_model, register_model

__all__ = ["MODELS", "build_model", "register_model"]
