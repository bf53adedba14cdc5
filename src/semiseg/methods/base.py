"""The contract between a method and the engine.

A method is an ``nn.Module`` holding its networks. It declares its training :class:`Phase` s
(pre-training, a regressor phase, alternating loops, ...); each phase names its optimizers (each
with its own settings, :class:`OptimizerSpec`) and the data streams it consumes, and may ask a
stream for paired weak/strong views (:class:`~semiseg.core.ViewSpec`). For every iteration the
engine calls ``training_step(batch, phase, optimizer)`` once per optimizer of the phase (a batch
is ``{stream: Batch}``), back-propagates the returned ``"loss"``, steps that optimizer and calls
:meth:`Method.on_step_end`; after every epoch it calls :meth:`Method.on_epoch_end`. The engine
never knows which method it runs.

Method state: everything a method keeps lives in its ``state_dict`` and so in every checkpoint
and ``--resume``: parameters and buffers (EMA weights, cluster centres, caches as buffers) and,
for non-tensor state (its own RNG, counters), torch's ``get_extra_state`` / ``set_extra_state``
returning tensors and plain Python values (checkpoints are loaded weights-only). State that
must agree across DDP processes is synchronised with :mod:`semiseg.parallel`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from semiseg.config import ModelConfig, OptimizerConfig
from semiseg.core import Batch, ViewSpec
from semiseg.losses.regularizers import RegularizerSpec, build_regularizers


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer of a phase with its own settings (type, lr, betas, schedule, update ratio)."""

    name: str = "main"
    settings: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass(frozen=True)
class Phase:
    """One stage of training.

    Attributes:
        name: Shown in logs and checkpoints.
        epochs: Epochs of this phase; ``None`` = ``train.epochs``.
        optimizers: The optimizers stepped, in order, at every iteration: names (settings from
            ``train.*``) or :class:`OptimizerSpec` (own type, lr, betas, weight decay, scheduler,
            update ratio).
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
        views: Paired views per stream, e.g. ``{"unlabeled": ViewSpec(strong=2, cutmix=True)}``:
            the stream's ``Batch.strong`` / ``Batch.cutmix`` are then filled.
    """

    name: str = "train"
    epochs: int | None = None
    optimizers: tuple[str | OptimizerSpec, ...] = ("main",)
    streams: tuple[str, ...] = ("labeled",)
    optional_streams: tuple[str, ...] = ()
    validate: bool = True
    lr: float | None = None
    val_metric: str | None = None
    val_mode: str | None = None
    final: bool = True
    restore_best: bool = False
    views: dict[str, ViewSpec] = field(default_factory=dict)

    @property
    def optimizer_specs(self) -> tuple[OptimizerSpec, ...]:
        return tuple(o if isinstance(o, OptimizerSpec) else OptimizerSpec(o) for o in self.optimizers)

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.optimizer_specs)


@dataclass
class MethodConfig:
    """Base of every method's config; ``name`` selects the method.

    ``regularizers`` adds losses on the segmenter's output from config, e.g.
    ``[{name: tv, weight: 0.1, ramp_up_steps: 200}]``: typed specs, one subclass of
    :class:`~semiseg.losses.regularizers.RegularizerSpec` per regulariser, chosen by ``name``.
    """

    name: str = ""
    regularizers: list[RegularizerSpec] = field(default_factory=list)


class Method(nn.Module):
    """Base class of all methods. Subclasses set ``config_class`` and implement ``training_step``."""

    config_class: type = MethodConfig

    def __init__(self, cfg: MethodConfig, *, in_channels: int, num_classes: int, model_cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.model_cfg = model_cfg
        #: iterations done so far in the run and in the current phase, and the current epoch (0-based)
        #: of the phase; set by the engine before every iteration (ramp-ups, schedules)
        self.global_step = 0
        self.phase_step = 0
        self.epoch = 0
        self.regularizers = build_regularizers(cfg.regularizers)

    # ------------------------------------------------------------------ declared by subclasses
    def phases(self) -> list[Phase]:
        return [Phase()]

    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        """Parameters updated by ``optimizer`` in ``phase`` (default: the segmenter's)."""
        return self.segmenter.parameters()

    def training_step(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        """Return ``{"loss": scalar, <component>: scalar, ...}`` for one optimizer step."""
        raise NotImplementedError

    def on_phase_start(self, phase: str) -> None:
        """Called once when ``phase`` starts (not again when a run resumes inside it)."""

    def on_step_end(self, phase: str, optimizer: str) -> None:
        """Called after every step of ``optimizer`` (e.g. an EMA teacher update)."""

    def on_epoch_end(self, phase: str, epoch: int) -> None:
        """Called after every epoch of ``phase`` (``epoch`` counts from 1), before validation and the
        checkpoint (e.g. DEC's target distribution, a pseudo-label refresh)."""

    def validation_metrics(self, phase: str, records, image_size, device) -> dict[str, float] | None:
        """Validation metrics of ``phase`` on the validation records, or None for the engine's
        default (the segmenter's segmentation metrics). Called with the method in eval mode."""
        return None

    # ------------------------------------------------------------------ shared
    def regularization(
        self, logits: dict[str, torch.Tensor], batch: dict[str, Batch]
    ) -> dict[str, torch.Tensor]:
        """The configured regularisers on ``logits`` per stream: ``{"reg/<name>": raw value, ...}``
        plus ``"reg_total"``, the weighted (ramped) sum to add to the loss."""
        out: dict[str, torch.Tensor] = {}
        total = None
        for i, reg in enumerate(self.regularizers):
            value = reg(logits, batch)
            key = f"reg/{reg.name}" if f"reg/{reg.name}" not in out else f"reg/{reg.name}{i}"
            out[key] = value
            # ramped by the run's or the phase's step (spec.ramp_from), both set by the engine
            weighted = reg.current_weight(reg.ramp_step(self.global_step, self.phase_step)) * value
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

    def forward(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        # DDP calls forward; routing it to training_step lets any method run under DDP.
        return self.training_step(batch, phase, optimizer)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits. Shape: ``[B, C, H, W]`` → ``[B, K, H, W]``."""
        return self.segmenter(images)
