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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn

from semiseg.config import FieldError, check_weights, from_dict
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.losses.ramp import ramp_weight
from semiseg.registry import Registry

__all__ = [
    "REGULARIZERS",
    "Regularizer",
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
            ("phase", e.g. a penalty that starts with a method's second phase).
        streams: Streams whose images the loss sees: "labeled" and/or "unlabeled" (a stream absent
            from a batch is skipped).

    Subclasses override :meth:`loss` (or :meth:`build`, for a loss with parameters or state) and may
    check their values in ``__post_init__`` (call ``super().__post_init__()``) by raising
    :class:`~semiseg.config.FieldError`.
    """

    name: str = ""
    weight: float = 1.0
    ramp_up_steps: int = 0
    ramp_shape: Literal["sigmoid", "linear"] = "sigmoid"
    ramp_from: Literal["global", "phase"] = "global"
    streams: list[Literal["labeled", "unlabeled"]] = field(default_factory=lambda: list(STREAMS))

    registered_name: ClassVar[str] = ""  #: set by @register_regularizer

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


def parse_regularizer(data: dict[str, Any], where: str = "method.regularizers") -> RegularizerSpec:
    """A checked spec from a plain mapping (YAML), e.g. ``{"name": "tv", "weight": 0.1}``."""
    return from_dict(RegularizerSpec, data, prefix=where)


class Regularizer(nn.Module):
    """A weighted, ramped loss on the segmenter's logits, averaged over the spec's streams.

    Args:
        spec: A :class:`RegularizerSpec` (or a mapping, parsed with :func:`parse_regularizer`).
        where: Config key named in errors when ``spec`` is a mapping.
    """

    def __init__(self, spec: RegularizerSpec | dict[str, Any], where: str = "method.regularizers"):
        super().__init__()
        self.spec = spec if isinstance(spec, RegularizerSpec) else parse_regularizer(spec, where)
        self.name = self.spec.name
        self.streams = tuple(self.spec.streams)
        self.loss = self.spec.build()

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


def build_regularizers(specs: Sequence[RegularizerSpec | dict[str, Any]]) -> nn.ModuleList:
    """One :class:`Regularizer` per spec; mappings are parsed as ``method.regularizers[i]``."""
    return nn.ModuleList([Regularizer(s, f"method.regularizers[{i}]") for i, s in enumerate(specs)])
