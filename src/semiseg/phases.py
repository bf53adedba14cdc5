"""Training phases: the vocabulary of the engine's contract with what it trains.

A :class:`Phase` is one stage of training (pre-training, a regressor phase, a round of
self-training, ...): its length, optimizers (:class:`OptimizerSpec`), data streams and views, and
how it is validated. Methods declare theirs (:meth:`semiseg.methods.base.Method.phases`), and so
may regularisers that train a part of their own first
(:meth:`semiseg.losses.regularizers.RegularizerSpec.phases`); the engine runs them in order.

These types sit below losses and methods (beside :mod:`semiseg.config`) so that both can declare
phases; :mod:`semiseg.methods.base` re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from semiseg.config import OptimizerConfig
from semiseg.core import Batch, ViewSpec

__all__ = ["EpochPlan", "OptimizerSpec", "Phase", "StreamSpec", "Sweep"]

#: the split's two item sets a stream draws from
SOURCES = ("labeled", "unlabeled")


@dataclass(frozen=True)
class StreamSpec:
    """A data stream named ``name`` drawing from the ``source`` items, optionally only those whose
    image tag of class ``tag_class`` equals ``tag_value`` (e.g. "present" = tag 1 of the target
    class, "absent" = tag 0). A plain stream name ``"labeled"`` / ``"unlabeled"`` is
    ``StreamSpec(name, source=name)``. Each stream has its own sample order and augmentation draws.
    """

    name: str
    source: str = "unlabeled"
    tag_class: int | None = None
    tag_value: float = 1.0

    @staticmethod
    def of(stream: str | StreamSpec) -> StreamSpec:
        return stream if isinstance(stream, StreamSpec) else StreamSpec(stream, source=stream)


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer of a phase with its own settings (type, lr, betas, schedule, update ratio).

    ``persist``: phases whose optimizer specs share this key hand the optimizer's state (e.g. Adam's
    moments and step count) on from one to the next, as one optimizer re-used across phases would
    (e.g. SSLDEC's alternating unlabeled and labeled epochs); each phase keeps its own settings (lr,
    schedule). The parameters must be the same. None = a fresh optimizer per phase.
    """

    name: str = "main"
    settings: OptimizerConfig = field(default_factory=OptimizerConfig)
    persist: str | None = None


class Sweep(Protocol):
    """``sweep(stream, fn)``: ``fn`` applied to every item of the named stream of the current phase
    (or of a split source, "labeled" / "unlabeled"), in batches of clean images (no augmentation, no
    views), the method in eval mode and without gradients; the results concatenated along dim 0 in
    the stream's item order (under DDP each process sweeps a share and all get the whole). The
    engine provides it to :meth:`~semiseg.methods.base.Method.plan_epoch`. For a plain "labeled" /
    "unlabeled" stream, row i belongs to the item whose ``Batch.index`` is i; a tag-filtered stream's
    ``Batch.index`` is the item's index in its source set, not its row in the sweep."""

    def __call__(
        self, stream: str, fn: Callable[[Batch], torch.Tensor], *, batch_size: int | None = None
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class EpochPlan:
    """What a phase's owner asks of the coming epoch (:meth:`semiseg.methods.base.Method.plan_epoch`).

    Attributes:
        done: End the phase now, before this epoch (an end condition: the phase's ``epochs`` is then
            a cap).
        subsets: Per stream name, the positions (in the stream's item order, as a
            :class:`~semiseg.engine.sweep.Sweep` returns them) this epoch draws from, e.g. a
            class-balanced subset of the unlabeled images. Streams not listed draw from all items.
        iters: Iterations of this epoch; None = the phase's rule (``Phase.epoch_iters``).
    """

    done: bool = False
    subsets: dict[str, Sequence[int]] = field(default_factory=dict)
    iters: int | None = None


@dataclass(frozen=True)
class Phase:
    """One stage of training.

    Attributes:
        name: Shown in logs and checkpoints; unique within a run.
        epochs: Epochs of this phase; ``None`` = ``train.epochs``.
        optimizers: The optimizers stepped, in order, at every iteration: names (settings from
            ``train.*``) or :class:`OptimizerSpec` (own type, lr, betas, weight decay, scheduler,
            update ratio).
        streams: Data streams of a batch: "labeled" (the labeled split), "unlabeled", or
            :class:`StreamSpec` (a named stream filtered by an image tag, e.g. "present").
        optional_streams: Streams used when the data has them (e.g. unlabeled images for a
            regulariser), silently absent otherwise.
        validate: Evaluate on the validation split during this phase and keep the best checkpoint.
        lr: Learning rate of this phase; ``None`` = ``train.lr``.
        val_metric: Key of the phase's validation metrics that selects within it; ``None`` =
            ``train.val_metric`` (the segmenter's). The phase's owner returns other metrics (e.g. a
            size regressor's error) from its ``validation_metrics``.
        val_mode: "min" or "max" for ``val_metric``; ``None`` = ``train.val_mode``.
        final: Validations of this phase compete for ``best.pt``, the model evaluated at the end.
            Pre-training phases set it False.
        restore_best: At the end of the phase, reload the method state of its best validation
            (kept in ``best_<phase>.pt``), so the next phase starts from it.
        views: Paired views per stream, e.g. ``{"unlabeled": ViewSpec(strong=2, cutmix=True)}``:
            the stream's ``Batch.strong`` / ``Batch.cutmix`` are then filled.
        epoch_iters: Iterations per epoch: ``"run"`` = the run's (``train.iters_per_epoch``, else one
            pass over the labeled items), ``"pass"`` = one pass over the phase's first stream (or over
            its subset when an :class:`EpochPlan` gives one).
    """

    name: str = "train"
    epochs: int | None = None
    optimizers: tuple[str | OptimizerSpec, ...] = ("main",)
    streams: tuple[str | StreamSpec, ...] = ("labeled",)
    optional_streams: tuple[str, ...] = ()
    validate: bool = True
    lr: float | None = None
    val_metric: str | None = None
    val_mode: str | None = None
    final: bool = True
    restore_best: bool = False
    views: dict[str, ViewSpec] = field(default_factory=dict)
    epoch_iters: str = "run"

    @property
    def stream_specs(self) -> tuple[StreamSpec, ...]:
        return tuple(StreamSpec.of(s) for s in self.streams)

    @property
    def optimizer_specs(self) -> tuple[OptimizerSpec, ...]:
        return tuple(o if isinstance(o, OptimizerSpec) else OptimizerSpec(o) for o in self.optimizers)

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.optimizer_specs)
