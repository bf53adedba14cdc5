"""A shape prior learned from masks alone: the IODA paper's idea (an autoencoder on label maps built
into the segmenter) for convolutional segmenters, as a regulariser any method can use.

``method.regularizers: [{name: shape_prior, weight: 0.1}]``:

1. Phase ``shape_prior_ae`` (run before the method's, owned by the regulariser): a small
   convolutional autoencoder (:class:`LabelAutoencoder`) learns the labeled masks: its input is the
   one-hot mask corrupted (a share ``ae_noise`` of the pixels set to a random class, then a Gaussian
   blur of σ 1 px, so it resembles a softmax map), its target the clean mask (cross-entropy + soft
   Dice). It sees masks only, never images. It is selected on the reconstruction Dice of the
   validation masks (clean input; ``ae_dice``) and restored at its best.
2. In the method's phases it is frozen (eval mode, no parameter gradients); gradients flow through
   it to the segmenter's softmax p:

   - (a) ``code``: on images with a mask (labeled stream, dense masks), the distance between the codes
     of the prediction and of the truth, mean ‖E(p) − E(onehot y)‖² over the code's entries (an
     anatomically constrained network's shape loss);
   - (b) ``recon``: on images without one (unlabeled stream), the distance between the prediction and
     its reconstruction, mean (p − D(E(p)))² with the reconstruction detached: a shape the
     autoencoder cannot reproduce costs.

   The loss on a stream is ``code_weight`` · (a) where the batch has dense masks, plus
   ``recon_weight`` · (b) where it has none. Pixels without a label (``IGNORE_INDEX``) enter the
   truth's code as background.

The autoencoder is fully convolutional (``ae_depth`` stride-2 3×3 convolutions of ``ae_width`` ·
2^i channels with ReLU, a 1×1 convolution to ``code_channels`` with tanh, and the mirror with
transposed convolutions), so it works at any training size divisible by 2^``ae_depth``. Its weights
come from a random stream of its own: the segmenter's initialisation is the same with and without
the prior.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import FieldError
from semiseg.core import IGNORE_INDEX, Batch, Supervision
from semiseg.losses.regularizers import PhasedLoss, RegularizerContext, RegularizerSpec, register_regularizer
from semiseg.losses.supervised import masked_cross_entropy, masked_dice_loss
from semiseg.phases import OptimizerSpec, Phase

__all__ = ["AE_PHASE", "LabelAutoencoder", "ShapePrior", "ShapePriorSpec", "corrupt_labels"]

#: the regulariser's own phase
AE_PHASE = "shape_prior_ae"
#: seeds the autoencoder's weights apart from the global stream
AE_INIT_SALT = 0x5A9E
#: salt of the corruption draws (per sample, from the batch keys)
NOISE_SALT = 0x5A9F


class LabelAutoencoder(nn.Module):
    """A convolutional autoencoder on K-channel label maps (one-hot or softmax).

    Shape:
        ``encode``: ``[B, K, H, W]`` → ``[B, code_channels, H / 2^depth, W / 2^depth]`` (tanh);
        ``decode``: the code → logits ``[B, K, H, W]``.
    """

    def __init__(self, num_classes: int, width: int = 16, depth: int = 4, code_channels: int = 8):
        super().__init__()
        enc: list[nn.Module] = []
        c = num_classes
        for i in range(depth):
            enc += [nn.Conv2d(c, width * 2**i, 3, stride=2, padding=1), nn.ReLU()]
            c = width * 2**i
        enc += [nn.Conv2d(c, code_channels, 1), nn.Tanh()]
        dec: list[nn.Module] = [nn.Conv2d(code_channels, c, 1), nn.ReLU()]
        for i in reversed(range(depth)):
            out = width * 2 ** (i - 1) if i > 0 else width
            dec += [nn.ConvTranspose2d(c, out, 4, stride=2, padding=1), nn.ReLU()]
            c = out
        dec.append(nn.Conv2d(c, num_classes, 3, padding=1))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.factor = 2**depth

    def encode(self, maps: torch.Tensor) -> torch.Tensor:
        return self.encoder(maps)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(maps))


def one_hot_maps(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, H, W]`` class indices (``IGNORE_INDEX`` → background) → ``[B, K, H, W]`` float one-hot."""
    cls = torch.where(mask == IGNORE_INDEX, torch.zeros_like(mask), mask)
    return F.one_hot(cls, num_classes).movedim(-1, 1).float()


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = maps.shape[1]
    maps = F.conv2d(
        F.pad(maps, (radius, radius, 0, 0), mode="replicate"),
        k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
        groups=c,
    )
    return F.conv2d(
        F.pad(maps, (0, 0, radius, radius), mode="replicate"),
        k.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
        groups=c,
    )


def corrupt_labels(
    mask: torch.Tensor, num_classes: int, noise: float, batch: Batch | None = None
) -> torch.Tensor:
    """The autoencoder's training input: the one-hot mask with a share ``noise`` of its pixels set to a
    random class (drawn from the batch's keys, so resumption and DDP draw the same), blurred (σ 1 px).

    Shape:
        mask ``[B, H, W]`` → ``[B, K, H, W]`` (rows sum to 1).
    """
    mask = torch.where(mask == IGNORE_INDEX, torch.zeros_like(mask), mask)
    if noise > 0 and batch is not None:
        shape = tuple(mask.shape[1:])
        draws = [
            (g.random(shape) < noise, g.integers(0, num_classes, shape)) for g in batch.generators(NOISE_SALT)
        ]
        flip = torch.from_numpy(np.stack([d[0] for d in draws])).to(mask.device)
        random = torch.from_numpy(np.stack([d[1] for d in draws])).to(mask.device, mask.dtype)
        mask = torch.where(flip, random, mask)
    return _blur(one_hot_maps(mask, num_classes), 1.0)


@register_regularizer("shape_prior")
@dataclass
class ShapePriorSpec(RegularizerSpec):
    """Spec of the ``shape_prior`` regulariser (see the module docstring).

    ``method.regularizers: [{name: shape_prior, weight: 0.1, ramp_up_steps: 200}]``
    """

    learns_from = ("dense",)  # the autoencoder learns shapes: clicks are not one

    def needs_whole_masks(self) -> str | None:
        return "learns shapes from the labeled masks"

    code_weight: float = 1.0  #: (a) code distance on images with a dense mask
    recon_weight: float = 1.0  #: (b) distance to the reconstruction on images without one
    ae_epochs: int = 50  #: epochs of phase shape_prior_ae
    ae_lr: float = 1e-3  #: Adam's learning rate in phase shape_prior_ae
    ae_width: int = 16
    ae_depth: int = 4
    code_channels: int = 8
    ae_noise: float = 0.2  #: share of the input pixels set to a random class (denoising)
    ramp_from: Literal["global", "phase"] = "phase"  # the penalty starts with the method's phase

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("code_weight", "recon_weight"):
            if not getattr(self, name) >= 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("ae_epochs", "ae_width", "ae_depth", "code_channels"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if not self.ae_lr > 0:
            raise FieldError("ae_lr", f"must be positive, got {self.ae_lr}")
        if not 0 <= self.ae_noise < 1:
            raise FieldError("ae_noise", f"must be in [0, 1), got {self.ae_noise}")

    def build(self):
        raise ValueError("shape_prior builds a network: use build_for(context) with the run's context")

    def build_for(self, context: RegularizerContext):
        return ShapePrior(self, context)

    def phases(self) -> list[Phase]:
        from semiseg.config import OptimizerConfig

        adam = OptimizerSpec(
            AE_PHASE, OptimizerConfig(type="adam", lr=self.ae_lr, weight_decay=0.0, scheduler="none")
        )
        return [
            Phase(
                AE_PHASE,
                epochs=self.ae_epochs,
                optimizers=(adam,),
                streams=("labeled",),
                val_metric="ae_dice",
                val_mode="max",
                final=False,
                restore_best=True,
            )  # fmt: skip
        ]


class ShapePrior(PhasedLoss):
    """The ``shape_prior`` regulariser's module: owns the label autoencoder, trains it in phase
    ``shape_prior_ae`` and, frozen, scores the segmenter's predictions in the method's phases."""

    def __init__(self, spec: ShapePriorSpec, context: RegularizerContext):
        super().__init__()
        self.spec, self.num_classes = spec, context.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((torch.initial_seed() + AE_INIT_SALT) % 2**63)
            self.autoencoder = LabelAutoencoder(
                context.num_classes, spec.ae_width, spec.ae_depth, spec.code_channels
            )

    def _check_size(self, size) -> None:
        f = self.autoencoder.factor
        if size[-2] % f or size[-1] % f:
            from semiseg.errors import ConfigError

            raise ConfigError(
                f"method.regularizers (shape_prior): data.image_size {list(size[-2:])} must be divisible by "
                f"2**ae_depth = {f}"
            )

    # ------------------------------------------------------------------ phase shape_prior_ae
    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        return self.autoencoder.parameters()

    def training_step(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        lab = batch["labeled"]
        self._check_size(lab.mask.shape)
        self.autoencoder.train()
        logits = self.autoencoder(corrupt_labels(lab.mask, self.num_classes, self.spec.ae_noise, lab))
        ce, dice = masked_cross_entropy(logits, lab.mask), masked_dice_loss(logits, lab.mask)
        return {"loss": ce + dice, "ae_ce": ce, "ae_dice_loss": dice}

    @torch.no_grad()
    def validation_metrics(self, phase, records, image_size, device, target_spacing=None) -> dict[str, float]:
        from semiseg.data.views import resize_mask
        from semiseg.metrics import confusion_matrix

        self.autoencoder.eval()
        pooled = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for r in records:
            masks = torch.from_numpy(np.asarray(r.mask)).long()
            masks = resize_mask(masks[None] if masks.ndim == 2 else masks, tuple(image_size)).to(device)
            pred = self.autoencoder(_blur(one_hot_maps(masks, self.num_classes), 1.0)).argmax(1)
            pooled += confusion_matrix(pred.cpu(), masks.cpu(), self.num_classes)
        tp = pooled.diag().float()[1:]
        denom = (pooled.sum(0) + pooled.sum(1)).float()[1:]
        dice = (2 * tp / denom.clamp_min(1)).mean()
        return {"ae_dice": float(dice)}

    # ------------------------------------------------------------------ the method's phases
    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        self._check_size(logits.shape)
        self.autoencoder.eval()
        # frozen: the code of the prediction runs the encoder on detached copies of its parameters, so
        # gradients reach the segmenter only (the parameters keep requires_grad, for any optimizer built
        # later); the other uses of the autoencoder need no gradient at all
        encoder = {k: v.detach() for k, v in self.autoencoder.encoder.named_parameters()}

        probs = logits.softmax(1)
        dense = batch.kind == int(Supervision.DENSE)
        total = logits.new_zeros(())
        if dense.any() and self.spec.code_weight:
            code = torch.func.functional_call(self.autoencoder.encoder, encoder, (probs[dense],))
            with torch.no_grad():
                target = self.autoencoder.encode(one_hot_maps(batch.mask[dense], self.num_classes))
            total = total + self.spec.code_weight * (code - target).pow(2).mean()
        if (~dense).any() and self.spec.recon_weight:
            p = probs[~dense]
            with torch.no_grad():
                recon = self.autoencoder(p).softmax(1)
            total = total + self.spec.recon_weight * (p - recon).pow(2).mean()
        return total
