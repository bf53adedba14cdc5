"""Segmenters with encoders from the ecosystem, optionally ImageNet-pre-trained.

- ``model.name: flexible_unet``: MONAI's ``FlexibleUNet`` (2D or 3D) with ``model.encoder`` one of
  MONAI's backbones (``efficientnet-b0`` … ``b8``, ``resnet10`` … ``resnet200``);
  ``model.encoder_weights: imagenet`` loads the EfficientNets' ImageNet weights.
- ``model.name: smp``: any segmentation-models-pytorch architecture (``model.arch``: unet,
  unetplusplus, fpn, deeplabv3plus, ...) with any of its or timm's encoders (``model.encoder``);
  ``model.encoder_weights: imagenet``. smp needs torchvision (through timm) built for the installed
  torch.

Both expose semiseg's encoder-feature interface (``encode`` → a list of feature maps, ``decode`` →
logits), so every method works with them, UniMatch's feature perturbation included. Inputs are padded
to the encoder's total stride and the logits cropped back. Weights are downloaded once (into
``$TORCH_HOME``, default ``~/.cache/torch``); without a network the error says how to pre-fetch them.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn as nn

from semiseg.config import ModelConfig
from semiseg.errors import ConfigError
from semiseg.models.registry import register_model
from semiseg.models.unet import pad_to_multiple

__all__ = ["EncoderDecoder"]


class EncoderDecoder(nn.Module):
    """An ecosystem network split into ``encode`` / ``decode`` (see the module docstring)."""

    def __init__(self, net: nn.Module, decoder_call, multiple: int, dims: int):
        super().__init__()
        self.net, self._decoder_call, self.multiple, self.dims = net, decoder_call, multiple, dims

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net.encoder(pad_to_multiple(x, (self.multiple,) * self.dims)))

    def decode(self, features: list[torch.Tensor], size: tuple[int, ...] | None = None) -> torch.Tensor:
        out = self.net.segmentation_head(self._decoder_call(self.net, list(features)))
        return out if size is None else out[(..., *(slice(0, s) for s in size))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), tuple(x.shape[2:]))


def _flexible_decoder(net: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    return net.decoder(features, net.skip_connect)


def _smp_decoder(net: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    params = inspect.signature(net.decoder.forward).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in params):  # smp < 0.5: decoder(*features)
        return net.decoder(*features)
    return net.decoder(features)


def _download_error(cfg: ModelConfig, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"model.encoder_weights: the {cfg.encoder_weights} weights of encoder '{cfg.encoder}' could not be "
        f"downloaded ({type(exc).__name__}); on a machine with network, build the same model once to fetch "
        "them, then copy $TORCH_HOME (default ~/.cache/torch) and the Hugging Face cache (~/.cache/huggingface) "
        "here, or set model.encoder_weights: null"
    )


@register_model("flexible_unet")
def _build_flexible_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import FlexibleUNet
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    backbones = list(FLEXUNET_BACKBONE.register_dict)
    if cfg.encoder not in backbones:
        raise ConfigError(
            f"model.encoder: '{cfg.encoder}' is not a flexible_unet backbone ({', '.join(backbones)})"
        )
    pretrained = cfg.encoder_weights == "imagenet"
    if pretrained and not cfg.encoder.startswith("efficientnet"):
        raise ConfigError(
            f"model.encoder_weights: MONAI has no ImageNet weights for '{cfg.encoder}' (EfficientNets only)"
        )
    norms = {"batch": ("batch", {"eps": 1e-3, "momentum": 0.1}), "instance": ("instance", {"affine": True}),
             "group": ("group", {"num_groups": 1}), "none": None}  # fmt: skip
    if cfg.norm == "none":
        raise ConfigError("model.norm: flexible_unet needs a normalisation (batch, instance or group)")
    try:
        net = FlexibleUNet(in_channels, out_channels, backbone=cfg.encoder, pretrained=pretrained,
                           spatial_dims=cfg.spatial_dims, norm=norms[cfg.norm], dropout=cfg.dropout)  # fmt: skip
    except OSError as exc:  # URLError and other download failures
        raise _download_error(cfg, exc) from None
    for head in (
        "_conv_head",
        "_bn1",
        "_avg_pooling",
        "_dropout",
        "_fc",
    ):  # EfficientNet's classifier: unused
        if hasattr(net.encoder, head):
            setattr(net.encoder, head, nn.Identity())
    return EncoderDecoder(net, _flexible_decoder, 32, cfg.spatial_dims)


@register_model("smp")
def _build_smp(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # noqa: BLE001 - ImportError, or timm / torchvision failing to load
        raise ConfigError(
            f"model.name: smp needs segmentation-models-pytorch and a torchvision built for torch "
            f"{torch.__version__} (pip install segmentation-models-pytorch; {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if cfg.spatial_dims != 2:
        raise ConfigError("model.spatial_dims: smp models are 2D")
    try:
        with _offline_without_network(cfg.encoder_weights is not None):
            net = smp.create_model(cfg.arch, encoder_name=cfg.encoder, encoder_weights=cfg.encoder_weights,
                                   in_channels=in_channels, classes=out_channels)  # fmt: skip
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"model.arch / model.encoder: smp cannot build {cfg.arch} with '{cfg.encoder}' ({exc})"
        ) from None
    except OSError as exc:
        raise _download_error(cfg, exc) from None
    multiple = int(getattr(net.encoder, "output_stride", 32) or 32)
    return EncoderDecoder(net, _smp_decoder, multiple, 2)


@contextlib.contextmanager
def _offline_without_network(weights: bool, host: str = "huggingface.co"):
    """With weights requested and ``host`` unreachable (2 s), Hugging Face Hub in offline mode for the
    block: weights already in its cache load, missing ones fail at once (instead of five retries
    with back-off before the same error)."""
    import socket

    offline = False
    if weights:
        try:
            socket.create_connection((host, 443), timeout=2).close()
        except OSError:
            offline = True
    if not offline:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


_build_flexible_unet.spatial_dims = (2, 3)  # type: ignore[attr-defined]
