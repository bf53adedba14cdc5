"""IODA: input and output deep architecture (the paper ``ioda-input-output-deep-architecture.txt``:
"Input/Output Deep Architecture for structured output problems", with its library Crino).

A fully connected network (``model.name: mlp``, ``model.output: map``) maps a flattened image to a
flattened label map through N layers L_1 … L_N (tanh hidden units, a sigmoid per pixel). Before the
supervised training, its first k layers are pre-trained as stacked autoencoders on the *images*
(input pre-training) and its last j layers as stacked autoencoders on the *label maps* (output
pre-training, whose decoder halves become the network's output layers), Alg. 1:

1. ``input_pretrain<i>``, i = 1 … k (``input_layers``): the autoencoder x ↦ g(W_i^T f(W_i r + b_i) + c_i)
   on r = the code of the first i − 1 (already pre-trained, frozen) layers of each image. Its
   encoder *is* the network's layer L_i; its decoder has tied weights W_i^T (``ae_tied``; else its own
   weights, initialised to W_i^T) and its own bias c_i. Level 1 reconstructs the image in [0, 1] with a
   sigmoid and cross-entropy, deeper levels reconstruct tanh codes with a tanh and squared error
   (ours: Crino feeds (code + 1) / 2 to deeper autoencoders with a sigmoid and cross-entropy; the
   squared error of tanh codes is closer to the paper's h = f for the output side).
2. ``output_pretrain<m>``, m = 1 … j (``output_layers``), from the output side: the autoencoder on
   e_{m−1} (e_0 = the flattened label map y; e_m = the code of output encoders 1 … m) whose *decoder
   is* the network's layer L_{N+1−m} (m = 1: the last layer, so its output is the network's sigmoid
   output, trained with cross-entropy to reproduce y) and whose encoder has tied weights
   W_{N+1−m}^T and its own bias. After this phase the network's last layers are the label
   autoencoder's decoder, by construction.
3. ``finetune``: the whole network on (image, label map) with ``loss`` (the paper: squared error of
   the sigmoid output).

Each pre-training phase trains only its autoencoder (its network layer and the other half), on the
labeled images (input AEs) or masks (output AEs), and is selected on its own validation
reconstruction loss (``val_metric: recon``, restored at the phase end, as the paper's "controlled by
a validation set"); its epochs are a cap (``input_epochs``, ``output_epochs``; the paper: 300 / 100).
k = j = 0 is the plain network (NDA), k ≥ 1 with j = 0 input pre-training only (IDA), k, j ≥ 1 IODA;
k + j ≤ N − 1 (one layer links the two sides). The autoencoder halves draw no random numbers, so the
network's initialisation is the same for every (k, j) of one seed: NDA, IDA and IODA are paired.

Each pre-training phase has its own optimizer (``pretrain_optimizer``; the paper and Crino: plain
gradient descent from learning rate 10 with the adaptive rule, :mod:`semiseg.engine.adaptive`:
a worse epoch is rejected and rerun at a lower rate); fine-tuning uses the run's (``train.*``; the
recipe: the same).

Judgement calls: tied autoencoder weights by default (Crino; the paper's text initialises V = U^T
without saying whether they stay tied); the level-1 input AE and the first output AE use a sigmoid
and cross-entropy, deeper ones tanh and squared error; pixels without a label (``IGNORE_INDEX``, e.g.
rotated in from outside the image) do not count in the fine-tuning loss and the first output
autoencoder's loss, but enter the output autoencoders' inputs as background; labels of K > 2 classes
are one-hot per pixel with a softmax per pixel; the hidden units are ``model.activation``'s (the
paper and the recipe: tanh).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import FieldError, OptimizerConfig
from semiseg.core import IGNORE_INDEX
from semiseg.errors import ConfigError
from semiseg.losses.supervised import masked_cross_entropy, masked_dice_loss
from semiseg.methods import register
from semiseg.methods.base import Method, MethodConfig, OptimizerSpec, Phase
from semiseg.models import build_model
from semiseg.models.mlp import MLPMap


def _paper_pretrain_optimizer() -> OptimizerConfig:
    return OptimizerConfig(type="sgd", lr=10.0, momentum=0.0, weight_decay=0.0, scheduler="adaptive")


@dataclass
class IODAConfig(MethodConfig):
    input_layers: int = 1  #: k: layers pre-trained as autoencoders on the images (0 = none)
    output_layers: int = 1  #: j: layers pre-trained as autoencoders on the label maps (0 = none)
    input_epochs: int = 300  #: cap on the epochs of each input autoencoder (the paper: 300)
    output_epochs: int = 100  #: cap on the epochs of each output autoencoder (the paper: 100)
    #: optimizer of every pre-training phase (the paper: gradient descent, lr 10)
    pretrain_optimizer: OptimizerConfig = field(default_factory=_paper_pretrain_optimizer)
    #: fine-tuning loss: "mse" (the paper: squared error of the probabilities), "ce" or "ce_dice"
    loss: Literal["mse", "ce", "ce_dice"] = "mse"
    ae_tied: bool = True  #: autoencoder halves share the layer's weights (transposed)

    def __post_init__(self) -> None:
        for name in ("input_layers", "output_layers"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("input_epochs", "output_epochs"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")


def phase_layer(phase: str) -> tuple[str, int] | None:
    """``"input_pretrain2"`` → ``("input", 2)``, ``"output_pretrain1"`` → ``("output", 1)``; else None."""
    for side in ("input", "output"):
        prefix = f"{side}_pretrain"
        if phase.startswith(prefix) and phase[len(prefix) :].isdigit():
            return side, int(phase[len(prefix) :])
    return None


class TransposedHalf(nn.Module):
    """The other half of an autoencoder built on a network layer ``W`` (``[out, in]``): ``x ↦ Wᵀ x + c``
    (``[.., out] → [.., in]``), with tied weights (the layer's, passed at call time) or its own weight
    initialised to Wᵀ. Draws no random numbers."""

    def __init__(self, layer: nn.Linear, tied: bool):
        super().__init__()
        self.tied = tied
        self.bias = nn.Parameter(torch.zeros(layer.in_features))
        if not tied:
            self.weight = nn.Parameter(layer.weight.detach().t().clone())

    def forward(self, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        weight = layer.weight.t() if self.tied else self.weight
        return F.linear(x, weight, self.bias)


def label_targets(mask: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flattened label map y the network's output reproduces, and the weight of each entry (0 for
    unlabeled pixels): binary → the foreground indicator per pixel ``[B, H·W]``; K > 2 → one-hot per
    pixel ``[B, K·H·W]`` (class-major, as the network's output units).

    Examples:
        >>> y, w = label_targets(torch.tensor([[[0, 1], [255, 1]]]), 2)
        >>> y.tolist(), w.tolist()
        ([[0.0, 1.0, 0.0, 1.0]], [[1.0, 1.0, 0.0, 1.0]])
    """
    valid = mask != IGNORE_INDEX
    cls = torch.where(valid, mask, torch.zeros_like(mask))
    if num_classes == 2:
        return (cls == 1).float().flatten(1), valid.float().flatten(1)
    one_hot = F.one_hot(cls, num_classes).movedim(-1, 1).float()  # [B, K, H, W]
    weight = valid.unsqueeze(1).expand_as(one_hot).float()
    return one_hot.flatten(1), weight.flatten(1)


@register("ioda")
class IODA(Method):
    """Input and output autoencoder pre-training of a fully connected network, then fine-tuning."""

    config_class = IODAConfig

    def __init__(self, cfg: IODAConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = build_model(self.model_cfg, self.in_channels, self.num_classes, self.image_size)
        if not isinstance(self.model, MLPMap):
            raise ConfigError("method 'ioda' needs model.name: mlp with model.output: map")
        layers = self.model.linears
        n, k, j = len(layers), cfg.input_layers, cfg.output_layers
        if k + j > n - 1:
            raise ConfigError(
                f"method.input_layers + method.output_layers = {k + j}, but the network has {n} layers: at most "
                f"{n - 1} (one layer must link the input and output sides)"
            )
        # the autoencoders' other halves (no random draws: the network's init does not depend on k, j)
        self.input_decoders = nn.ModuleList(TransposedHalf(layers[i], cfg.ae_tied) for i in range(k))
        self.output_encoders = nn.ModuleList(
            TransposedHalf(layers[n - m], cfg.ae_tied) for m in range(1, j + 1)
        )

    # ------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        cfg = self.cfg
        pre = (OptimizerSpec("main", cfg.pretrain_optimizer),)
        ae = dict(optimizers=pre, final=False, restore_best=True, val_metric="recon", val_mode="min")
        phases = [
            Phase(f"input_pretrain{i}", epochs=cfg.input_epochs, **ae) for i in range(1, cfg.input_layers + 1)
        ]
        phases += [
            Phase(f"output_pretrain{m}", epochs=cfg.output_epochs, **ae)
            for m in range(1, cfg.output_layers + 1)
        ]
        return [*phases, Phase("finetune", optional_streams=self.regularizer_streams())]

    def parameters_for(self, phase: str, optimizer: str):
        where = phase_layer(phase)
        if where is None:
            return self.model.parameters()
        side, level = where
        layers = self.model.linears
        if side == "input":
            return [*layers[level - 1].parameters(), *self.input_decoders[level - 1].parameters()]
        return [*layers[len(layers) - level].parameters(), *self.output_encoders[level - 1].parameters()]

    # ------------------------------------------------------------------------------ autoencoders
    def input_autoencoder(self, images: torch.Tensor, level: int) -> torch.Tensor:
        """The reconstruction loss of input autoencoder ``level`` on ``images`` ``[B, C, H, W]`` (at the
        training size): only its layer and decoder get gradients."""
        net, f = self.model, self.model.activation
        if tuple(images.shape[-2:]) != net.image_size:
            images = F.interpolate(images, size=net.image_size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            r = net.hidden_codes(images, level - 1)
        layer = net.linears[level - 1]
        out = self.input_decoders[level - 1](f(net.layer(level - 1, r)), layer)
        if level == 1:  # the image in [0, 1]: sigmoid and cross-entropy
            return F.binary_cross_entropy_with_logits(out, r.clamp(0, 1))
        return F.mse_loss(f(out), r)

    def output_autoencoder(self, mask: torch.Tensor, level: int) -> torch.Tensor:
        """The reconstruction loss of output autoencoder ``level`` (1 = the network's last layer) on the
        label maps ``mask`` ``[B, H, W]`` (at the training size)."""
        net, f = self.model, self.model.activation
        layers = net.linears
        y, weight = label_targets(mask, self.num_classes)
        e = y
        with torch.no_grad():
            for m in range(1, level):
                e = f(self.output_encoders[m - 1](e, layers[len(layers) - m]))
        layer = layers[len(layers) - level]
        out = layer(f(self.output_encoders[level - 1](e, layer)))
        if level > 1:
            return F.mse_loss(f(out), e)
        if self.num_classes == 2:  # the network's output: a sigmoid per pixel
            loss = F.binary_cross_entropy_with_logits(out, y, weight=weight, reduction="sum")
            return loss / weight.sum().clamp_min(1.0)
        logits = out.view(len(out), self.num_classes, *net.image_size)
        return masked_cross_entropy(logits, mask)

    def _mask_at_size(self, mask: torch.Tensor) -> torch.Tensor:
        size = self.model.image_size
        if tuple(mask.shape[-2:]) == size:
            return mask
        from semiseg.data.views import resize_mask

        return resize_mask(mask, size)

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch, phase, optimizer):
        where = phase_layer(phase)
        lab = batch["labeled"]
        if where is not None:
            side, level = where
            if side == "input":
                loss = self.input_autoencoder(lab.image, level)
            else:
                loss = self.output_autoencoder(self._mask_at_size(lab.mask), level)
            return {"loss": loss, "recon": loss.detach()}
        used = ("labeled", *self.regularizer_streams())
        logits = {stream: self.model(b.image) for stream, b in batch.items() if stream in used}
        out = self.supervised_loss(logits["labeled"], lab.mask)
        if len(self.regularizers):
            reg = self.regularization(logits, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out

    def supervised_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.loss == "mse":
            valid = (mask != IGNORE_INDEX).unsqueeze(1).float()
            one_hot = F.one_hot(torch.where(mask == IGNORE_INDEX, 0, mask), self.num_classes).movedim(-1, 1)
            se = (logits.softmax(1) - one_hot.to(logits.dtype)).pow(2) * valid
            mse = se.sum() / (valid.sum() * self.num_classes).clamp_min(1.0)
            return {"loss": mse, "mse": mse}
        out = {"ce": masked_cross_entropy(logits, mask)}
        if self.cfg.loss == "ce_dice":
            out["dice"] = masked_dice_loss(logits, mask)
        return {"loss": out["ce"] + out.get("dice", 0.0), **out}

    # ------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validation_metrics(self, phase, records, image_size, device, target_spacing=None):
        where = phase_layer(phase)
        if where is None:
            return None  # fine-tuning: the engine's segmentation metrics (with mse)
        from semiseg.data.views import resize_image, resize_mask

        side, level = where
        if any(np.asarray(r.image).ndim != 3 for r in records):
            raise ConfigError("method 'ioda': validation needs 2D images (records [C, H, W])")
        size = self.model.image_size
        total, count = 0.0, 0
        for start in range(0, len(records), 64):
            chunk = records[start : start + 64]
            if side == "input":
                x = torch.cat(
                    [resize_image(torch.from_numpy(np.asarray(r.image))[None], size) for r in chunk]
                )
                loss = self.input_autoencoder(x.to(device), level)
            else:
                m = torch.cat(
                    [resize_mask(torch.from_numpy(np.asarray(r.mask))[None].long(), size) for r in chunk]
                )
                loss = self.output_autoencoder(m.to(device), level)
            total += float(loss) * len(chunk)
            count += len(chunk)
        return {"recon": total / max(1, count)}
