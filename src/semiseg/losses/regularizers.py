"""Regularisers any segmenter can use, named in a method's config.

``method.regularizers: [{name: tv, weight: 0.1, ramp_up_steps: 500, operator: sobel}]`` adds
``weight(step) · loss`` to the method's loss, computed on the segmenter's logits of the streams in
``streams`` (labeled and/or unlabeled images) and averaged over them.

Each regulariser declares a typed spec: a dataclass subclass of :class:`RegularizerSpec` holding
the common fields below plus its own options, registered by name::

    @register_regularizer("tv")
    @dataclass
    class TVSpec(RegularizerSpec):
        operator: Literal["sobel", "forward"] = "sobel"

        def loss(self, logits, batch):
            return total_variation(logits.softmax(1), self.operator)

The config checker (:func:`semiseg.config.from_dict`) builds the spec from YAML like any other
config: the ``name`` picks the class, an unknown key or a wrong type is a one-line error naming it
(``unknown key 'method.regularizers[0].opertor' (did you mean 'operator'?)``) and value checks
in ``__post_init__`` (:class:`~semiseg.config.FieldError`) name the field too. Specs travel typed
from there to the loss; :func:`semiseg.config.to_dict` turns them back into plain mappings.

Regularisers are found in every module of :mod:`semiseg.losses` and through the
``semiseg.regularizers`` entry-point group (:class:`~semiseg.registry.Registry`).

**Context.** A loss with a network of its own needs the run's image channels, classes and model
settings: :meth:`RegularizerSpec.build_for` receives them as a :class:`RegularizerContext` (its
default calls :meth:`RegularizerSpec.build`, so specs without that need ignore it).

**Phases of its own.** A regulariser may train a part of itself before the method's phases (the
``size`` regulariser's ``source: regressor`` trains its size regressor first): its spec's
:meth:`RegularizerSpec.phases` declares them (:class:`~semiseg.phases.Phase`, names unique in the
run) and its loss module, a :class:`PhasedLoss`, runs them (``training_step``, ``parameters_for``,
``validation_metrics`` and the ``on_*`` hooks, with the method's signatures). The method runs these
phases first (:meth:`semiseg.methods.base.Method.run_phases`) and hands them to their
:class:`Regularizer` (:meth:`~semiseg.methods.base.Method.phase_owner`), so no method knows of them.
The loss module is a submodule of the method: its weights are checkpointed and resumed with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn

from semiseg.config import FieldError, ModelConfig, check_weights, from_dict
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.losses.ramp import ramp_weight
from semiseg.phases import Phase
from semiseg.registry import Registry

__all__ = [
    "REGULARIZERS",
    "PhasedLoss",
    "Regularizer",
    "RegularizerContext",
    "RegularizerSpec",
    "build_regularizers",
    "parse_regularizer",
    "ramp_weight",
    "register_regularizer",
]

STREAMS = ("labeled", "unlabeled")

#: name → RegularizerSpec subclass; registering sets the class's ``registered_name``
REGULARIZERS: Registry[type[RegularizerSpec]] = Registry(
    "regularizer", package="semiseg.losses", name_attr="registered_name"
)

#: class decorator of a spec: ``@register_regularizer("tv")`` (above ``@dataclass``)
register_regularizer = REGULARIZERS.register


@dataclass(frozen=True)
class RegularizerContext:
    """What a regulariser may need of its run to build its loss (:meth:`RegularizerSpec.build_for`).

    Attributes:
        in_channels: Image channels of the data.
        num_classes: Classes of the segmentation (with the background).
        model: The run's model settings (e.g. ``model.norm`` for a network of the loss's own).
        where: The spec's config key, e.g. ``method.regularizers[0]`` (named in errors).
    """

    in_channels: int
    num_classes: int
    model: ModelConfig = field(default_factory=ModelConfig)
    where: str = "method.regularizers"


@dataclass
class RegularizerSpec:
    """Common fields of every regulariser; subclasses add the loss's own options and :meth:`loss`.

    Attributes:
        name: The registered name; selects the subclass (filled in when built in code).
        weight: Weight of the loss once ramped up (>= 0).
        ramp_up_steps: Steps of the ramp-up from ~0 to ``weight`` (0 = constant), see
            :func:`~semiseg.losses.ramp.ramp_weight`.
        ramp_shape: "sigmoid" (``exp(-5 (1 - t)²)``) or "linear".
        ramp_from: Count ramp steps from the start of the run ("global") or of the current phase
            ("phase", e.g. a penalty that starts with a method's second phase, or after a
            regulariser's own phase).
        streams: Streams whose images the loss sees: "labeled" and/or "unlabeled" (a stream absent
            from a batch is skipped).

    Subclasses override :meth:`loss` (or :meth:`build` / :meth:`build_for`, for a loss with
    parameters or state), may declare phases of their own (:meth:`phases`) and may check their values
    in ``__post_init__`` (call ``super().__post_init__()``) by raising
    :class:`~semiseg.config.FieldError`.
    """

    name: str = ""
    weight: float = 1.0
    ramp_up_steps: int = 0
    ramp_shape: Literal["sigmoid", "linear"] = "sigmoid"
    ramp_from: Literal["global", "phase"] = "global"
    streams: list[Literal["labeled", "unlabeled"]] = field(default_factory=lambda: list(STREAMS))

    registered_name: ClassVar[str] = ""  #: set by @register_regularizer
    #: the tasks whose outputs the loss takes: "segment" (class maps) and/or "classify" (a class vector
    #: per image); the trainer refuses the spec on other data
    tasks: ClassVar[tuple[str, ...]] = ("segment",)
    #: the models' spatial dimensions the loss supports (``model.spatial_dims``); a spec that works on
    #: volumes too declares ``(2, 3)``
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    #: the supervision kinds of labeled items the loss learns from, as ``Method.learns_from`` (None:
    #: any, or it reads no labels); the trainer refuses a labeled stream of another kind (e.g. clicks
    #: for a shape prior)
    learns_from: ClassVar[tuple[str, ...] | None] = None

    def weak_labels(self) -> tuple[str, ...]:
        """The weak labels of a batch the loss reads ("tag", "size"; default none): a method that learns
        from masks may then train on labeled items that carry only these (the trainer checks)."""
        return ()

    def needs_whole_masks(self) -> str | None:
        """What of the loss learns from the labeled images' masks as wholes, as
        ``Method.needs_whole_masks`` (default: nothing, None)."""
        return None

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.registered_name
        elif self.registered_name and self.name != self.registered_name:
            raise FieldError("name", f"is '{self.name}' but this is the '{self.registered_name}' spec")
        check_weights(self, "weight")
        if self.ramp_up_steps < 0:
            raise FieldError("ramp_up_steps", f"must be >= 0, got {self.ramp_up_steps}")
        if not self.streams or len(set(self.streams)) != len(self.streams):
            raise FieldError("streams", "must list 'labeled' and/or 'unlabeled', each once")

    @classmethod
    def config_subclass(cls, data: dict[str, Any], key: str) -> type[RegularizerSpec]:
        """The spec class named by ``data["name"]`` (the config checker's polymorphism hook)."""
        if cls is not RegularizerSpec:
            return cls
        name = data.get("name")
        if name is None:
            raise ConfigError(f"'{key}.name' is required (known: {', '.join(REGULARIZERS.names())})")
        return REGULARIZERS.get(name, where=f"{key}.name")

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The unweighted loss of one stream: ``logits`` ``[B, K, *S]`` of ``batch``'s images → scalar."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss() or build()")

    def build(self) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
        """The loss callable (default: :meth:`loss`); an ``nn.Module`` here becomes a submodule of the
        :class:`Regularizer`, so its parameters and buffers are trained and checkpointed."""
        return self.loss

    def build_for(self, context: RegularizerContext) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
        """The loss callable for a run described by ``context`` (default: :meth:`build`, which needs
        none); a loss that owns :meth:`phases` returns a :class:`PhasedLoss`."""
        return self.build()

    def phases(self) -> list[Phase]:
        """Phases this regulariser trains in before the method's own (default: none); their names
        must be unique in the run. Its :class:`PhasedLoss` runs them."""
        return []


class PhasedLoss(nn.Module):
    """The loss module of a regulariser that owns phases (:meth:`RegularizerSpec.phases`).

    ``forward(logits, batch)`` is the loss on the segmenter's logits of one stream, used in the
    method's phases; in its own phases the engine calls the hooks below (through the method and
    the :class:`Regularizer`), with the signatures of :class:`semiseg.methods.base.Method`'s.
    """

    def training_step(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        """``{"loss": scalar, <component>: scalar, ...}`` of one step of ``optimizer`` in ``phase``."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step()")

    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        """Parameters updated by ``optimizer`` in ``phase`` (default: all of this module's)."""
        return self.parameters()

    def validation_metrics(
        self, phase: str, records, image_size, device, target_spacing=None
    ) -> dict[str, float] | None:
        """Validation metrics of ``phase``, or None for the engine's default (the segmenter's)."""
        return None

    def on_phase_start(self, phase: str) -> None:
        """Called once when ``phase`` starts (not again when a run resumes inside it)."""

    def on_step_end(self, phase: str, optimizer: str) -> None:
        """Called after every step of ``optimizer`` in ``phase``."""

    def on_epoch_end(self, phase: str, epoch: int) -> None:
        """Called after every epoch of ``phase`` (``epoch`` counts from 1)."""


def parse_regularizer(data: dict[str, Any], where: str = "method.regularizers") -> RegularizerSpec:
    """A checked spec from a plain mapping (YAML), e.g. ``{"name": "tv", "weight": 0.1}``."""
    return from_dict(RegularizerSpec, data, prefix=where)


class Regularizer(nn.Module):
    """A weighted, ramped loss on the segmenter's logits, averaged over the spec's streams.

    For the phases its spec owns (:meth:`phases`, run before the method's) it stands in for the
    method: :meth:`training_step`, :meth:`parameters_for`, :meth:`validation_metrics` and the
    ``on_*`` hooks go to its :class:`PhasedLoss`.

    Args:
        spec: A :class:`RegularizerSpec` (or a mapping, parsed with :func:`parse_regularizer`).
        where: Config key named in errors when ``spec`` is a mapping.
        context: The run's channels, classes and model settings, for a loss that builds a network
            (:meth:`RegularizerSpec.build_for`); None = a context-free loss (:meth:`RegularizerSpec.build`).
    """

    def __init__(
        self,
        spec: RegularizerSpec | dict[str, Any],
        where: str = "method.regularizers",
        context: RegularizerContext | None = None,
    ):
        super().__init__()
        self.spec = spec if isinstance(spec, RegularizerSpec) else parse_regularizer(spec, where)
        self.name = self.spec.name
        self.where = where
        self.streams = tuple(self.spec.streams)
        dims = context.model.spatial_dims if context is not None else 2
        if dims not in self.spec.spatial_dims:
            raise ConfigError(
                f"{where}: regulariser '{self.spec.name}' supports "
                f"{' and '.join(f'{d}D' for d in self.spec.spatial_dims)} models only, "
                f"model.spatial_dims is {dims}"
            )
        if context is None:
            self.loss = self.spec.build()
        else:
            self.loss = self.spec.build_for(dataclasses.replace(context, where=where))
        if self.spec.phases() and not isinstance(self.loss, PhasedLoss):
            raise TypeError(f"{type(self.spec).__name__} declares phases but its loss is not a PhasedLoss")

    def extra_repr(self) -> str:
        return repr(self.spec)

    def ramp_step(self, global_step: int, phase_step: int) -> int:
        """The step the ramp-up counts: ``phase_step`` if ``ramp_from == "phase"``, else ``global_step``."""
        return phase_step if self.spec.ramp_from == "phase" else global_step

    def current_weight(self, step: int) -> float:
        """The weight at ramp step ``step`` (see :meth:`ramp_step`)."""
        s = self.spec
        return ramp_weight(s.weight, step, s.ramp_up_steps, s.ramp_shape)

    def forward(self, logits: dict[str, torch.Tensor], batch: dict[str, Batch]) -> torch.Tensor:
        """Unweighted loss averaged over the configured streams present in ``logits``."""
        values = [self.loss(logits[s], batch[s]) for s in self.streams if s in logits]
        if not values:
            return next(iter(logits.values())).new_zeros(())
        return torch.stack(values).mean()

    # ------------------------------------------------------------------ phases of its own
    def phases(self) -> list[Phase]:
        """The phases this regulariser owns (its spec's), run before the method's."""
        return self.spec.phases()

    def owns(self, phase: str) -> bool:
        return any(p.name == phase for p in self.phases())

    def _phased(self, phase: str) -> PhasedLoss:
        if not self.owns(phase):
            raise ValueError(f"regularizer '{self.name}' ({self.where}) has no phase '{phase}'")
        return self.loss  # a PhasedLoss: checked at construction

    def training_step(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        """One step of ``optimizer`` in the owned ``phase``: ``{"loss": scalar, ...}``."""
        return self._phased(phase).training_step(batch, phase, optimizer)

    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        """Parameters updated by ``optimizer`` in the owned ``phase``."""
        return self._phased(phase).parameters_for(phase, optimizer)

    def validation_metrics(
        self, phase: str, records, image_size, device, target_spacing=None
    ) -> dict[str, float] | None:
        """Validation metrics of the owned ``phase`` (None = the segmenter's)."""
        return self._phased(phase).validation_metrics(phase, records, image_size, device, target_spacing)

    def on_phase_start(self, phase: str) -> None:
        self._phased(phase).on_phase_start(phase)

    def on_step_end(self, phase: str, optimizer: str) -> None:
        self._phased(phase).on_step_end(phase, optimizer)

    def on_epoch_end(self, phase: str, epoch: int) -> None:
        self._phased(phase).on_epoch_end(phase, epoch)


def build_regularizers(
    specs: Sequence[RegularizerSpec | dict[str, Any]], context: RegularizerContext | None = None
) -> nn.ModuleList:
    """One :class:`Regularizer` per spec; mappings are parsed as ``method.regularizers[i]``;
    ``context`` = the run's, for losses that build networks (see :class:`Regularizer`)."""
    return nn.ModuleList([Regularizer(s, f"method.regularizers[{i}]", context) for i, s in enumerate(specs)])
