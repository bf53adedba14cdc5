"""The contract between a method and the engine.

A method is an ``nn.Module`` holding its networks. It declares its training :class:`Phase`\\ s
(pre-training, a regressor phase, alternating loops, ...); each phase names its optimizers and
the data streams it consumes. For every step the engine calls
``training_step(batch, phase, optimizer)`` once per optimizer of the phase, back-propagates the
returned ``"loss"`` and steps that optimizer, so GAN-style alternating updates fit too. The engine
never knows which method it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from semiseg.config import ModelConfig


@dataclass(frozen=True)
class Phase:
    """One stage of training.

    Attributes:
        name: Shown in logs and checkpoints.
        epochs: Epochs of this phase; ``None`` = ``train.epochs``.
        optimizers: Names of the optimizers stepped, in order, at every iteration.
        streams: Data streams of a batch: "labeled" (the labeled split), "unlabeled".
        optional_streams: Streams used when the data has them (e.g. unlabeled images for a
            regulariser), silently absent otherwise.
        validate: Evaluate the segmenter on the validation split during this phase and keep the
            best checkpoint (the phase that trains the segmenter).
        lr: Learning rate of this phase; ``None`` = ``train.lr``.
        val_metric: Key of the phase's validation metrics that selects within it; ``None`` =
            ``train.val_metric`` (the segmenter's). A method returns other metrics (e.g. a size
            regressor's error) from :meth:`Method.validation_metrics`.
        val_mode: "min" or "max" for ``val_metric``; ``None`` = ``train.val_mode``.
        final: Validations of this phase compete for ``best.pt``, the model evaluated at the end.
            Pre-training phases set it False.
        restore_best: At the end of the phase, reload the method state of its best validation
            (kept in ``best_<phase>.pt``), so the next phase starts from it.
    """

    name: str = "train"
    epochs: int | None = None
    optimizers: tuple[str, ...] = ("main",)
    streams: tuple[str, ...] = ("labeled",)
    optional_streams: tuple[str, ...] = ()
    validate: bool = True
    lr: float | None = None
    val_metric: str | None = None
    val_mode: str | None = None
    final: bool = True
    restore_best: bool = False


@dataclass
class MethodConfig:
    """Base of every method's config; ``name`` selects the method.

    ``regularizers`` adds losses on the segmenter's output from config, e.g.
    ``[{name: tv, weight: 0.1, ramp_up_steps: 200}]`` (see :mod:`semiseg.losses.regularizers`).
    """

    name: str = ""
    regularizers: list[dict[str, Any]] = field(default_factory=list)


class Method(nn.Module):
    """Base class of all methods. Subclasses set ``config_class`` and implement ``training_step``."""

    config_class: type = MethodConfig

    def __init__(self, cfg: MethodConfig, *, in_channels: int, num_classes: int, model_cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.model_cfg = model_cfg
        #: optimisation steps done so far; set by the engine before every step (for ramp-ups)
        self.global_step = 0
        from semiseg.losses.regularizers import build_regularizers

        self.regularizers = build_regularizers(cfg.regularizers)

    # ------------------------------------------------------------------ declared by subclasses
    def phases(self) -> list[Phase]:
        return [Phase()]

    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        """Parameters updated by ``optimizer`` in ``phase`` (default: the segmenter's)."""
        return self.segmenter.parameters()

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], phase: str, optimizer: str) -> dict:
        """Return ``{"loss": scalar, <component>: scalar, ...}`` for one optimizer step."""
        raise NotImplementedError

    def validation_metrics(self, phase: str, records, image_size, device) -> dict[str, float] | None:
        """Validation metrics of ``phase`` on the validation records, or None for the engine's
        default (the segmenter's segmentation metrics). Called with the method in eval mode."""
        return None

    # ------------------------------------------------------------------ shared
    def regularization(
        self, logits: dict[str, torch.Tensor], batch: dict[str, dict]
    ) -> dict[str, torch.Tensor]:
        """The configured regularisers on ``logits`` per stream: ``{"reg/<name>": raw value, ...}``
        plus ``"reg_total"``, the weighted (ramped) sum to add to the loss."""
        out: dict[str, torch.Tensor] = {}
        total = None
        for i, reg in enumerate(self.regularizers):
            value = reg(logits, batch, self.global_step)
            key = f"reg/{reg.name}" if f"reg/{reg.name}" not in out else f"reg/{reg.name}{i}"
            out[key] = value
            weighted = reg.current_weight(self.global_step) * value
            total = weighted if total is None else total + weighted
        if total is not None:
            out["reg_total"] = total
        return out

    def regularizer_streams(self) -> tuple[str, ...]:
        """Streams the configured regularisers look at beyond the labeled one."""
        return tuple(sorted({s for r in self.regularizers for s in r.streams} - {"labeled"}))

    @property
    def segmenter(self) -> nn.Module:
        return self.model  # subclasses with another name override

    def forward(self, batch: dict, phase: str, optimizer: str) -> dict:
        # DDP calls forward; routing it to training_step lets any method run under DDP.
        return self.training_step(batch, phase, optimizer)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits. Shape: ``[B, C, H, W]`` → ``[B, K, H, W]``."""
        return self.segmenter(images)
