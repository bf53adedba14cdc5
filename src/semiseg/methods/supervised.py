"""Supervised baseline: cross-entropy and/or soft Dice on the labeled pixels (dense or sparse)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semiseg.config import FieldError, check_weights
from semiseg.losses.supervised import masked_cross_entropy, masked_dice_loss
from semiseg.methods import register
from semiseg.methods.base import Method, MethodConfig, Phase
from semiseg.models import build_model


@dataclass
class SupervisedConfig(MethodConfig):
    ce_weight: float = 1.0
    dice_weight: float = 0.0

    def __post_init__(self) -> None:  # every subclass's __post_init__ calls it first
        check_weights(self, "ce_weight", "dice_weight")
        # supervised training alone has no other loss (methods built on it may zero the labeled one)
        if self.name == "supervised" and self.ce_weight + self.dice_weight <= 0:
            raise FieldError(
                "ce_weight", "and 'method.dice_weight' are both 0: the labeled loss would be nothing"
            )


@register("supervised")
class Supervised(Method):
    """Trains the segmenter on labeled pixels only; unlabeled data is not used."""

    spatial_dims = (2, 3)  # and every method built on it (its losses and batches are N-D)
    learns_from = ("dense", "sparse")  # its labeled loss reads masks (and so every method built on it)

    config_class = SupervisedConfig

    def __init__(self, cfg: SupervisedConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = build_model(self.model_cfg, self.in_channels, self.num_classes, self.image_size)

    def supervised_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.cfg.ce_weight:
            out["ce"] = masked_cross_entropy(logits, mask)
        if self.cfg.dice_weight:
            out["dice"] = masked_dice_loss(logits, mask)
        loss = self.cfg.ce_weight * out.get("ce", 0.0) + self.cfg.dice_weight * out.get("dice", 0.0)
        return {"loss": loss, **out}

    def phases(self):
        return [Phase(optional_streams=self.regularizer_streams())]

    def training_step(self, batch, phase, optimizer):
        used = ("labeled", *self.regularizer_streams())
        logits = {stream: self.model(b.image) for stream, b in batch.items() if stream in used}
        out = self.supervised_loss(logits["labeled"], batch["labeled"].mask)
        if len(self.regularizers):
            reg = self.regularization(logits, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out
