"""The contract between a method and the engine.

A method is an ``nn.Module`` holding its networks. It declares its training :class:`Phase` s
(pre-training, a regressor phase, alternating loops, ...); each phase names its optimizers (each
with its own settings, :class:`OptimizerSpec`) and the data streams it consumes, and may ask a
stream for paired weak/strong views (:class:`~semiseg.core.ViewSpec`). For every iteration the
engine calls ``training_step(batch, phase, optimizer)`` once per optimizer of the phase (a batch
is ``{stream: Batch}``), back-propagates the returned ``"loss"``, steps that optimizer and calls
:meth:`Method.on_step_end`; after every epoch it calls :meth:`Method.on_epoch_end`. The engine
never knows which method it runs. (:class:`Phase` and :class:`OptimizerSpec` are defined in
:mod:`semiseg.phases` and re-exported here.)

Regularisers (``method.regularizers``) may own phases too (e.g. the ``size`` regulariser's
``size_regressor``, which trains its size regressor): :meth:`Method.run_phases` is what the engine
runs, the regularisers' phases (in config order) before the method's :meth:`Method.phases`, and
:meth:`Method.phase_owner` names who runs a phase: the method itself or the owning
:class:`~semiseg.losses.regularizers.Regularizer`, which then gets ``training_step`` (through
:meth:`Method.forward`), ``parameters_for``, ``validation_metrics`` and the ``on_*`` hooks. A
method never sees a regulariser's phase, so none needs to know of them.

Method state: everything a method keeps lives in its ``state_dict`` and so in every checkpoint
and ``--resume``: parameters and buffers (EMA weights, cluster centres, caches as buffers) and,
for non-tensor state (its own RNG, counters), torch's ``get_extra_state`` / ``set_extra_state``
returning tensors and plain Python values (checkpoints are loaded weights-only). State that
must agree across DDP processes is synchronised with :mod:`semiseg.parallel`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from semiseg.config import ModelConfig
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.losses.regularizers import Regularizer, RegularizerContext, RegularizerSpec, build_regularizers
from semiseg.phases import EpochPlan, OptimizerSpec, Phase, Sweep

__all__ = ["EpochPlan", "Method", "MethodConfig", "OptimizerSpec", "Phase", "forward_streams"]


def forward_streams(
    model: nn.Module, inputs: dict[str, torch.Tensor], joint: bool
) -> dict[str, torch.Tensor]:
    """``model``'s logits of each named input batch: one forward over all of them concatenated
    (``joint``: one set of batch-norm statistics, as SSL4MIS's mean teacher and CPS), or one
    forward per input (each normalised with its own batch's statistics).

    Shape:
        each input ``[B_i, C, *S]`` → its logits ``[B_i, K, *S]``.

    Examples:
        >>> net = nn.Conv2d(1, 2, 1)
        >>> x = {"labeled": torch.rand(2, 1, 4, 4), "unlabeled": torch.rand(3, 1, 4, 4)}
        >>> {k: tuple(v.shape) for k, v in forward_streams(net, x, joint=True).items()}
        {'labeled': (2, 2, 4, 4), 'unlabeled': (3, 2, 4, 4)}
    """
    if not joint:
        return {name: model(x) for name, x in inputs.items()}
    logits = model(torch.cat(list(inputs.values())))
    return dict(zip(inputs, logits.split([len(x) for x in inputs.values()])))


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
    #: what the method learns from its data: "segment" (masks) and/or "classify" (one class per image)
    tasks: tuple[str, ...] = ("segment",)
    #: the model's spatial dimensions the method supports (``model.spatial_dims``); a method that
    #: trains on volumes too declares ``(2, 3)``
    spatial_dims: tuple[int, ...] = (2,)
    #: the supervision kinds of labeled items its loss learns from (``data.split.supervision``; None:
    #: any): the trainer refuses others unless a regulariser on the labeled stream reads them
    learns_from: tuple[str, ...] | None = None
    #: whether its training steps add ``method.regularizers`` (a method that does not refuses them)
    applies_regularizers: bool = True

    def __init__(
        self,
        cfg: MethodConfig,
        *,
        in_channels: int,
        num_classes: int,
        model_cfg: ModelConfig,
        image_size: Sequence[int] | None = None,
    ):
        super().__init__()
        if model_cfg.spatial_dims not in self.spatial_dims:
            raise ConfigError(
                f"model.spatial_dims: method '{cfg.name or type(self).__name__}' supports "
                f"{' and '.join(f'{d}D' for d in self.spatial_dims)} models only, got {model_cfg.spatial_dims}"
            )
        self.cfg = cfg
        self.in_channels = in_channels
        #: the training image size (``data.image_size``), for networks whose shape depends on it (e.g. an
        #: MLP reading a flattened code); None when the caller does not know it
        self.image_size = tuple(image_size) if image_size is not None else None
        self.num_classes = num_classes
        self.model_cfg = model_cfg
        #: iterations done so far in the run and in the current phase, and the current epoch (0-based)
        #: of the phase; set by the engine before every iteration (ramp-ups, schedules)
        self.global_step = 0
        self.phase_step = 0
        self.epoch = 0
        #: what a regulariser may need of the run (a method adding one of its own passes it too)
        self.regularizer_context = RegularizerContext(in_channels=in_channels, num_classes=num_classes,
                                                      model=model_cfg)  # fmt: skip
        if cfg.regularizers and not self.applies_regularizers:
            raise ConfigError(f"method.regularizers: method '{cfg.name}' does not apply regularisers")
        self.regularizers = build_regularizers(cfg.regularizers, self.regularizer_context)

    # ------------------------------------------------------------------ declared by subclasses
    def phases(self) -> list[Phase]:
        """The method's own phases (default: one, "train"); the engine runs :meth:`run_phases`."""
        return [Phase()]

    def needs_whole_masks(self) -> str | None:
        """What of the method learns from the labeled images' masks as wholes (counts their sizes,
        learns their shapes), e.g. "method.source: regressor counts the labeled masks' sizes"; None
        (default) when nothing does. The trainer refuses labeled masks with unlabeled pixels for it."""
        return None

    def unlabeled_labels_read(self) -> frozenset[str]:
        """The weak labels of unlabeled items ("tag", "size") the method's own losses read (default:
        tags, when a phase draws a stream filtered by an image tag); the trainer refuses weak labels
        that nothing in the run reads."""
        tagged = any(getattr(s, "tag_class", None) is not None for p in self.phases() for s in p.stream_specs)
        return frozenset({"tag"} if tagged else ())

    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        """Parameters updated by ``optimizer`` in ``phase`` (default: the segmenter's; never those of
        a regulariser's own network, which trains in its own phases)."""
        return self.segmenter.parameters()

    def training_step(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        """Return ``{"loss": scalar, <component>: scalar, ...}`` for one optimizer step."""
        raise NotImplementedError

    def on_phase_start(self, phase: str) -> None:
        """Called once when ``phase`` starts (not again when a run resumes inside it)."""

    def on_step_end(self, phase: str, optimizer: str) -> None:
        """Called after every step of ``optimizer`` (e.g. an EMA teacher update)."""

    def plan_epoch(self, phase: str, epoch: int, sweep: Sweep) -> EpochPlan | None:
        """Called before every epoch of ``phase`` (``epoch`` counts from 0; again on resume, so it must
        depend only on the method's state and keyed draws): end the phase, or draw this epoch from a
        subset of a stream (:class:`EpochPlan`). ``sweep(stream, fn)`` evaluates ``fn`` on every item
        of a stream (clean images, eval mode, no gradient), e.g. to refresh targets over the whole
        unlabeled set. Default: None (every item, the phase's length)."""
        return None

    def planned_iterations(self, phase: str) -> int | None:
        """Iterations each epoch of ``phase`` will run when :meth:`plan_epoch` fixes them from the config
        alone (e.g. 0 for a phase the config disables), for estimates made without training
        (``benchmarks/full_mode_cost.py``); None: the phase's own length, or unknown before training."""
        return None

    def on_epoch_end(self, phase: str, epoch: int) -> None:
        """Called after every epoch of ``phase`` (``epoch`` counts from 1), before validation and the
        checkpoint (e.g. DEC's target distribution, a pseudo-label refresh)."""

    def validation_metrics(
        self, phase: str, records, image_size, device, target_spacing=None
    ) -> dict[str, float] | None:
        """Validation metrics of ``phase`` on the validation records, or None for the engine's
        default (the segmenter's segmentation metrics). Called with the method in eval mode;
        ``image_size`` and ``target_spacing`` are ``data``'s (the training grid)."""
        return None

    # ------------------------------------------------------------------ the engine's entry points
    def run_phases(self) -> list[Phase]:
        """The phases the engine runs: each regulariser's own phases (in config order), then the
        method's :meth:`phases`.

        Raises:
            ConfigError: two phases of the run share a name (one line naming both owners).
        """
        owners = [(p, f"regularizer '{r.name}' ({r.where})") for r in self.regularizers for p in r.phases()]
        owners += [(p, f"method '{self.cfg.name or type(self).__name__}'") for p in self.phases()]
        seen: dict[str, str] = {}
        for phase, owner in owners:
            if phase.name in seen:
                raise ConfigError(
                    f"phase name '{phase.name}' of {owner} clashes with the phase '{phase.name}' of "
                    f"{seen[phase.name]}; phase names must be unique in a run"
                )
            seen[phase.name] = owner
        return [phase for phase, _ in owners]

    def phase_owner(self, phase: str) -> Method | Regularizer:
        """Who runs ``phase``: the :class:`~semiseg.losses.regularizers.Regularizer` that owns it, else
        the method. The engine calls the owner's ``parameters_for``, ``validation_metrics`` and
        ``on_*`` hooks; :meth:`forward` sends the training step to it."""
        for reg in self.regularizers:
            if reg.owns(phase):
                return reg
        return self

    def forward(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        """The training step of ``phase``'s owner (:meth:`phase_owner`): :meth:`training_step` for the
        method's phases. The engine calls the module (so DDP sees the step); any method runs under DDP."""
        owner = self.phase_owner(phase)
        if owner is self:
            return self.training_step(batch, phase, optimizer)
        return owner.training_step(batch, phase, optimizer)

    # ------------------------------------------------------------------ shared
    def regularization(
        self, logits: dict[str, torch.Tensor], batch: dict[str, Batch]
    ) -> dict[str, torch.Tensor]:
        """The configured regularisers on ``logits`` per stream: ``{"reg/<name>": raw value, ...}``
        plus ``"reg_total"``, the weighted (ramped) sum to add to the loss."""
        out: dict[str, torch.Tensor] = {}
        total = None
        # a method's own term (e.g. the tv method's) keeps the bare key; a configured one of the same
        # name takes its index in method.regularizers, so a log key always means the same term
        own = {r.name for r in self.regularizers if r.where == "method"}
        for i, reg in enumerate(self.regularizers):
            value = reg(logits, batch)
            bare = f"reg/{reg.name}"
            key = bare if bare not in out and (reg.where == "method" or reg.name not in own) else f"{bare}{i}"
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

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits. Shape: ``[B, C, H, W]`` → ``[B, K, H, W]``."""
        return self.segmenter(images)
