"""The one training loop every method runs on.

Per phase of the run (:meth:`~semiseg.methods.base.Method.run_phases`: the regularisers' own
phases, then the method's): build its optimizers (and schedulers), then for every epoch draw this
rank's batches of each stream, call the training step once per optimizer, check the loss is
finite, log, and at the epoch end validate (phases with ``validate``), keep the best checkpoint
(validation split only) and write ``last.pt`` atomically. The phase's owner
(:meth:`~semiseg.methods.base.Method.phase_owner`: the method or a regulariser) gives its
parameters, validation metrics and hooks. ``resume`` restarts from ``last.pt``
and reproduces the uninterrupted run exactly on CPU: data order and augmentation are functions of
(seed, epoch, index), and model / optimizer / RNG states are restored.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from semiseg.config import OptimizerConfig, RunConfig, from_dict, to_dict
from semiseg.core import IGNORE_INDEX, Batch, Supervision
from semiseg.data import PreparedData
from semiseg.data.splits import stable_hash
from semiseg.engine import distributed as D
from semiseg.engine.adaptive import AdaptiveLR
from semiseg.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from semiseg.engine.evaluate import FAST_METRICS, evaluate_split, metric_keys
from semiseg.engine.inference import build_predict
from semiseg.engine.loggers import Logger
from semiseg.engine.sweep import TrainerSweep
from semiseg.errors import ConfigError, DataError, TrainingDiverged
from semiseg.io import atomic_write_text
from semiseg.methods.base import Method, OptimizerSpec, Phase
from semiseg.parallel import global_reduction
from semiseg.phases import EpochPlan, StreamSpec

STREAM_IDS = {"labeled": 0, "unlabeled": 1}


def stream_id(name: str) -> int:
    """The id that seeds a stream's sample order: 0 / 1 for the split's two sets, else from the name."""
    return STREAM_IDS.get(name, 2 + stable_hash(name) % 2**16)


#: config keys that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = (
    "train.progress",
    "train.plots",
    "train.num_workers",
    "quick",
    "data.loading",
    "data.cache_mib",
    "data.cache_dir",
    "train.logger",
)
#: learning-rate schedules that depend on the run length (a resumed run cannot lengthen them)
LENGTH_DEPENDENT = ("cosine", "poly", "linear")


def trained_epochs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of trained, kept epochs: not a phase ended by its plan (``"ended"``) nor an epoch
    attempt rejected by the adaptive learning rate (``"accepted": False``)."""
    return [h for h in history if "ended" not in h and h.get("accepted", True)]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def build_optimizer(
    cfg: RunConfig, params, settings: OptimizerConfig, lr: float, where: str = "optimizer"
) -> torch.optim.Optimizer:
    """The optimizer of one :class:`OptimizerSpec`: its own settings, else the run's (``train.*``)."""
    t = cfg.train
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError(f"{where}: has no trainable parameters")
    kind = settings.type or t.optimizer
    wd = t.weight_decay if settings.weight_decay is None else settings.weight_decay
    if settings.amsgrad and kind == "sgd":
        raise ConfigError(f"{where}.amsgrad: applies to adam / adamw, not sgd")
    if kind == "sgd":
        momentum = t.momentum if settings.momentum is None else settings.momentum
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    extra = {"betas": tuple(settings.betas)} if settings.betas is not None else {}
    if settings.amsgrad:
        extra["amsgrad"] = True
    return cls(params, lr=lr, weight_decay=wd, **extra)


def check_optimizer_settings(settings: OptimizerConfig, where: str) -> None:
    """Value checks of an :class:`OptimizerConfig` (types are checked by the config loader)."""
    if settings.lr is not None and settings.lr <= 0:
        raise ConfigError(f"{where}.lr: must be positive, got {settings.lr}")
    if settings.betas is not None and (
        len(settings.betas) != 2 or not all(0 <= b < 1 for b in settings.betas)
    ):
        raise ConfigError(f"{where}.betas: must be two numbers in [0, 1), got {settings.betas}")
    if settings.repeat < 1 or settings.every < 1:
        raise ConfigError(f"{where}: repeat and every must be at least 1")
    if not 0 <= settings.end_factor <= 1:
        raise ConfigError(f"{where}.end_factor: must be in [0, 1], got {settings.end_factor}")
    if settings.growth <= 1 or settings.grow_after < 1 or settings.max_attempts < 1:
        raise ConfigError(f"{where}: adaptive needs growth > 1, grow_after >= 1 and max_attempts >= 1")


def build_scheduler(
    kind: str,
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    end_factor: float = 0.0,
    settings: OptimizerConfig | None = None,
):
    """A per-step learning-rate factor over ``total_iters`` steps: ``cosine`` (to 0), ``poly`` (power
    0.9, to 0), ``linear`` (from 1 to ``end_factor``, e.g. SSLDEC's 1e-3 → 1e-4 = 0.1) or constant;
    or ``adaptive`` (:class:`~semiseg.engine.adaptive.AdaptiveLR`, set per epoch by the criterion)."""
    if kind == "adaptive":
        s = settings or OptimizerConfig()
        return AdaptiveLR(optimizer, s.growth, s.grow_after, s.max_attempts)
    if kind == "linear":
        factor = lambda i: 1.0 + (end_factor - 1.0) * min(i, total_iters) / total_iters  # noqa: E731
    elif kind == "cosine":
        factor = lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total_iters) / total_iters))  # noqa: E731
    elif kind == "poly":
        factor = lambda i: (1 - min(i, total_iters) / total_iters) ** 0.9  # noqa: E731
    else:
        factor = lambda i: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


#: the unlabeled share of a labeled mask above which a size regressor or shape prior refuses it (a
#: mask of clicks or scribbles); below it, unlabeled pixels count as no class
PARTIAL_MASK_SHARE = 0.25


def check_supervision(cfg: RunConfig, method, data, task: str) -> None:
    """One-line config errors for labels the run could never learn from: labeled items without the
    masks the method learns from (unless a regulariser on them reads what they carry), or a
    regulariser on a task whose outputs it does not take, on streams the split leaves empty, or
    reading weak labels none of its streams has."""

    def kind(ds) -> str | None:  # the stream's supervision kind (stand-in datasets of tools may not say)
        given = getattr(ds, "kind", None)
        return None if given is None else Supervision(int(given)).name.lower()

    present = {"labeled": data.labeled, "unlabeled": data.unlabeled}
    labeled = kind(data.labeled)
    if labeled is not None and method.learns_from is not None and labeled not in method.learns_from:
        if not any("labeled" in r.streams and labeled in r.spec.weak_labels() for r in method.regularizers):
            raise ConfigError(
                f"data.split.supervision: '{labeled}' gives the labeled images no masks, and method "
                f"'{cfg.method['name']}' learns from {' or '.join(method.learns_from)} masks (weak "
                "labels of the unlabeled images: data.split.unlabeled_supervision)"
            )
    weak = kind(data.unlabeled) if data.unlabeled is not None else None
    if weak in ("tag", "size"):
        read = set(method.unlabeled_labels_read())
        read |= {k for r in method.regularizers if "unlabeled" in r.streams for k in r.spec.weak_labels()}
        if weak not in read:
            raise ConfigError(
                f"data.split.unlabeled_supervision: '{weak}' labels the unlabeled images, and nothing in this "
                f"run reads them (method '{cfg.method['name']}' does not; a regulariser on the unlabeled "
                "images that does, e.g. size with source: data, or unlabeled_supervision: none)"
            )
    for reg in method.regularizers:
        where = f"method.regularizers: '{reg.name}'"
        if task not in reg.spec.tasks:
            raise ConfigError(
                f"{where} acts on segmentation maps, and data.dataset '{cfg.data.dataset}' is a "
                "classification dataset"
            )
        if reg.spec.learns_from is not None and labeled is not None and labeled not in reg.spec.learns_from:
            raise ConfigError(
                f"{where} learns shapes from {' or '.join(reg.spec.learns_from)} masks, and "
                f"data.split.supervision: '{labeled}' gives the labeled images none"
            )
        seen = [s for s in reg.streams if present.get(s) is not None]
        if not seen:
            raise ConfigError(
                f"{where} looks at the {' and '.join(reg.streams)} images, and data.split leaves none"
            )
        needs, kinds = reg.spec.weak_labels(), [kind(present[s]) for s in seen]
        if needs and None not in kinds and not set(kinds) & set(needs):
            raise ConfigError(
                f"{where} reads {' / '.join(needs)} labels, and none of its streams ({', '.join(seen)}) carries "
                "them (data.split.supervision / unlabeled_supervision)"
            )


class Trainer:
    """Runs ``method`` on ``data`` as ``cfg`` says, writing everything under ``output_dir``."""

    def __init__(
        self,
        cfg: RunConfig,
        method: Method,
        data: PreparedData,
        output_dir: str | Path,
        *,
        info: D.DistInfo | None = None,
        device: torch.device | None = None,
        resume: bool = False,
        logger: Logger | None = None,
    ):
        self.cfg = cfg
        self.logger = logger or Logger()  #: an experiment tracker (train.logger), main process only
        self.info = info or D.DistInfo()
        self.device = device or torch.device("cpu")
        self.data = data
        self.out = Path(output_dir)
        self.resume = resume
        self.method = method.to(self.device)
        self.phases = method.run_phases()
        self.num_classes = data.bundle.num_classes
        task = data.bundle.task
        if task not in method.tasks:
            kind = "classification" if task == "classify" else "segmentation"
            raise ConfigError(
                f"method '{cfg.method['name']}' does not {task} ({', '.join(method.tasks)} only) but "
                f"data.dataset '{cfg.data.dataset}' is a {kind} dataset"
            )
        if task == "classify" and cfg.inference.tta != "none":
            raise ConfigError(
                f"inference.tta: '{cfg.inference.tta}' applies to segmentations, and data.dataset "
                f"'{cfg.data.dataset}' is a classification dataset"
            )
        if not data.val and any(ph.validate for ph in self.phases):
            raise DataError(
                data.bundle.root or None,
                f"{data.bundle.name}: the validation set is empty (raise data.split.val_fraction)",
            )
        lower_better = ("pixel_error", "mse", "error")
        if cfg.train.val_mode == "max" and (
            cfg.train.val_metric in lower_better or any(d in cfg.train.val_metric for d in ("hd95", "asd"))
        ):
            raise ConfigError(
                f"train.val_mode: 'max' would keep the worst epoch of '{cfg.train.val_metric}' (lower is better); "
                "set train.val_mode: min"
            )
        valid = metric_keys(self.num_classes, FAST_METRICS, task)
        if cfg.train.val_metric not in valid:
            raise ConfigError(f"train.val_metric: '{cfg.train.val_metric}' is not one of {', '.join(valid)}")
        check_supervision(cfg, method, data, task)
        if getattr(data.labeled, "kind", None) == Supervision.DENSE:
            self._check_whole_masks(method, data)  # a folder's masks may hold unlabeled pixels
        self._stream_sets: dict[StreamSpec, Any] = {}
        for ph in self.phases:
            for spec in self.stream_specs(ph):
                self.stream_set(spec)  # checks the stream can be drawn (one-line errors)
        if self.info.enabled and cfg.train.sync_batchnorm:
            D.convert_sync_batchnorm(method)
        cl = cfg.train.channels_last
        # not with a strided 1x1 convolution: its channels-last CPU backward corrupts the heap in
        # torch 2.13 (segfault / "double free" from 48x48 inputs on; tests/engine/test_trainer.py)
        cpu_crash = self.device.type == "cpu" and _strided_pointwise_conv(method)
        auto = self.device.type == "cpu" and cfg.model.spatial_dims == 2 and not cpu_crash
        if cl is True and cpu_crash:
            raise ConfigError(
                "train.channels_last: true: this network has a strided 1x1 convolution, whose "
                "channels-last backward on CPU crashes torch 2.13 (heap corruption); use auto or false"
            )
        self.channels_last = auto if cl == "auto" else bool(cl)
        if self.channels_last:  # 4-D tensors channels-last, 5-D (3D networks) channels-last-3d
            for tensor in [*method.parameters(), *method.buffers()]:
                if tensor.ndim in (4, 5):
                    tensor.data = _channels_last(tensor.data)
        self.model = method
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(
                method,
                device_ids=ids,
                find_unused_parameters=len(self.phases) > 1
                or any(len(p.optimizers) > 1 for p in self.phases),
            )
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        # run state (saved in last.pt)
        self.phase_index = 0
        self.epoch = 0  # completed epochs of the current phase
        self.global_step = 0
        self.phase_step = 0  # iterations done in the current phase
        self.best: dict[str, Any] = {"value": None, "epoch": None, "phase": None}
        self.phase_best: dict[str, Any] = {"value": None, "epoch": None, "phase": None}  # current phase
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.images_seen = 0
        self._attempt = 0  #: the adaptive learning rate's attempt of the current epoch (0 = the first)
        #: optimizer states handed on between phases (OptimizerSpec.persist key → state_dict)
        self.persisted: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------- utils
    @property
    def main(self) -> bool:
        return self.info.is_main

    def iters_per_epoch(self) -> int:
        if self.cfg.train.iters_per_epoch:
            return self.cfg.train.iters_per_epoch
        return max(1, math.ceil(len(self.data.labeled) / self.cfg.train.batch_size))

    def phase_iters(self, phase: Phase) -> int:
        """Iterations per epoch of ``phase`` before any plan: the run's, or (``epoch_iters: pass``) one
        pass over its first stream."""
        if phase.epoch_iters == "pass":
            first = self.stream_set(self.stream_specs(phase)[0])
            return max(1, math.ceil(len(first) / self.cfg.train.batch_size))
        if phase.epoch_iters != "run":
            raise ConfigError(
                f"phase '{phase.name}': epoch_iters must be 'run' or 'pass', got {phase.epoch_iters!r}"
            )
        return self.iters_per_epoch()

    def epoch_iters(self, phase: Phase, plan: EpochPlan | None) -> int:
        """Iterations of the coming epoch: the plan's, one pass over the first stream's subset, or the
        phase's (:meth:`phase_iters`)."""
        if plan is not None and plan.iters is not None:
            return plan.iters
        first = self.stream_specs(phase)[0].name
        if phase.epoch_iters == "pass" and plan is not None and first in plan.subsets:
            return max(1, math.ceil(len(plan.subsets[first]) / self.cfg.train.batch_size))
        return self.phase_iters(phase)

    def _check_whole_masks(self, method, data) -> None:
        """A DataError naming the first labeled mask that is mostly unlabeled (more than
        :data:`PARTIAL_MASK_SHARE` of its pixels: clicks, scribbles) when part of the run counts the
        labeled masks' sizes or learns their shapes. A few unlabeled pixels (a void border, an
        nnU-Net "ignore" region) count as no class, as before."""
        needs = [f"method '{self.cfg.method['name']}': {w}" for w in [method.needs_whole_masks()] if w]
        for reg in method.regularizers:
            if need := reg.spec.needs_whole_masks():
                needs.append(f"method.regularizers: '{reg.name}' {need}")
        if not needs:
            return
        for r in data.split.labeled:
            if not r.has_mask:
                continue
            share = float((np.asarray(r.mask) == IGNORE_INDEX).mean())
            if share > PARTIAL_MASK_SHARE:
                raise DataError(
                    r.source or r.id,
                    f"{needs[0]}, and {share:.0%} of this labeled image's mask is unlabeled (clicks or scribbles: "
                    "data.mask_unlabeled, an nnU-Net 'ignore' label): it needs (nearly) whole masks",
                )

    def stream_specs(self, phase: Phase) -> tuple[StreamSpec, ...]:
        """The phase's streams plus the optional ones the data has."""
        available = {"labeled": True, "unlabeled": self.data.unlabeled is not None}
        extra = tuple(StreamSpec.of(s) for s in phase.optional_streams if available.get(s))
        specs = phase.stream_specs + extra
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"phase '{phase.name}': stream names must be unique, got {', '.join(names)}")
        return specs

    def stream_set(self, spec: StreamSpec):
        """The dataset a stream draws from: the split's labeled or unlabeled set, or the part of it
        whose tag matches (a :class:`~semiseg.data.views.TrainSubset` with its own random draws)."""
        if spec in self._stream_sets:
            return self._stream_sets[spec]
        method = self.cfg.method["name"]
        if spec.source not in ("labeled", "unlabeled"):
            raise ConfigError(
                f"method '{method}': stream '{spec.name}' draws from unknown source '{spec.source}'"
            )
        ds = self.data.labeled if spec.source == "labeled" else self.data.unlabeled
        if ds is None:
            raise ConfigError(f"method '{method}' needs unlabeled data but data.split leaves none")
        if spec.tag_class is not None:
            from semiseg.data.views import TrainSubset

            if not 0 <= spec.tag_class < self.num_classes:
                raise ConfigError(
                    f"method '{method}': stream '{spec.name}' filters on class {spec.tag_class}, but the data "
                    f"has classes 0..{self.num_classes - 1}"
                )
            tags = ds.tags[:, spec.tag_class]
            if torch.isnan(tags).any():
                raise ConfigError(
                    f"method '{method}': stream '{spec.name}' needs image tags of the {spec.source} items "
                    f"(data.split.{'unlabeled_' if spec.source == 'unlabeled' else ''}supervision: tag)"
                )
            indices = torch.nonzero(tags == spec.tag_value).flatten().tolist()
            if not indices:
                raise ConfigError(
                    f"method '{method}': stream '{spec.name}' is empty (no {spec.source} item has tag "
                    f"{spec.tag_value:g} for class {spec.tag_class})"
                )
            ds = TrainSubset(ds, indices, seed=ds.seed + 7919 * stream_id(spec.name))
        self._stream_sets[spec] = ds
        return ds

    def phase_epochs(self, phase: Phase) -> int:
        return phase.epochs if phase.epochs is not None else self.cfg.train.epochs

    def loader(
        self,
        stream: str | StreamSpec,
        epoch: int,
        iters: int,
        phase: Phase | None = None,
        subset: Sequence[int] | None = None,
    ) -> DataLoader:
        """This rank's batches of ``stream`` for one epoch of the current phase.

        Items come as ``(index, position)``: ``position`` (in the epoch's global sample order) keys
        every random draw of the sample, so one process and several DDP ranks draw the same
        augmentation for the same global sample, and different samples draw different ones.
        """
        spec = StreamSpec.of(stream)
        ds = self.stream_set(spec)
        key_epoch = epoch + 1000 * self.phase_index
        ds.set_epoch(key_epoch)
        ds.set_views(phase.views.get(spec.name) if phase is not None else None)
        batches = D.epoch_batches(
            len(ds) if subset is None else len(subset),
            self.cfg.train.batch_size,
            iters,
            seed=self.cfg.train.seed,
            epoch=key_epoch,
            stream=stream_id(spec.name),
            info=self.info,
            positions=True,
        )
        if subset is not None:  # draw from the plan's items: j-th of the subset = item subset[j]
            items = [int(i) for i in subset]
            batches = [[(items[j], position) for j, position in b] for b in batches]
        # pinned host memory on GPUs, so that to_batch's non-blocking copies overlap compute
        pin = self.device.type == "cuda"
        return DataLoader(ds, batch_sampler=batches, num_workers=self.cfg.train.num_workers, pin_memory=pin)

    def to_batch(self, raw: dict[str, torch.Tensor]) -> Batch:
        """A collated dict of a dataset → :class:`Batch` on this rank's device."""
        batch = Batch.from_dict(raw).to(self.device, non_blocking=True)
        if self.channels_last:
            batch.image = _channels_last(batch.image)
            if batch.strong is not None:
                batch.strong = torch.stack([_channels_last(v) for v in batch.strong.unbind(1)], 1)
        return batch

    def build_optimizers(self, phase: Phase):
        """Optimizers and schedulers of ``phase``, each with its own settings (:class:`OptimizerSpec`)."""
        phase_lr = phase.lr if phase.lr is not None else self.cfg.train.lr
        opts, scheds = {}, {}
        for spec in phase.optimizer_specs:
            where = f"phase '{phase.name}' optimizer '{spec.name}'"
            s = spec.settings
            check_optimizer_settings(s, where)
            lr = s.lr if s.lr is not None else phase_lr
            params = self.method.phase_owner(phase.name).parameters_for(phase.name, spec.name)
            opts[spec.name] = build_optimizer(self.cfg, params, s, lr, where)
            kind = self._scheduler_kind(spec)
            if kind == "adaptive" and len(phase.optimizer_specs) > 1:
                raise ConfigError(f"{where}: the adaptive learning rate drives a phase with one optimizer")
            scheds[spec.name] = build_scheduler(kind, opts[spec.name], self._optimizer_steps(phase, spec),
                                                s.end_factor, s)  # fmt: skip
        return opts, scheds

    def _take_persisted(self, phase: Phase, opts) -> None:
        """At the start of ``phase``: optimizers whose spec shares a ``persist`` key with an earlier
        phase take over its state (moments, step counts), keeping their own settings (lr, betas,
        schedule)."""
        for spec in phase.optimizer_specs:
            state = self.persisted.get(spec.persist) if spec.persist is not None else None
            if state is None:
                continue
            opt = opts[spec.name]
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            sizes = [len(g["params"]) for g in opt.param_groups]
            if sizes != [len(g["params"]) for g in state["param_groups"]]:
                raise ConfigError(
                    f"phase '{phase.name}' optimizer '{spec.name}': persist key '{spec.persist}' joins "
                    "optimizers over different parameters"
                )
            opt.load_state_dict(state)
            for group, settings in zip(opt.param_groups, fresh):
                group.update(settings)

    def _scheduler_kind(self, spec: OptimizerSpec) -> str:
        return spec.settings.scheduler or self.cfg.train.scheduler

    def _optimizer_steps(self, phase: Phase, spec: OptimizerSpec) -> int:
        iters = self.phase_epochs(phase) * self.phase_iters(phase)
        return max(1, math.ceil(iters / spec.settings.every) * spec.settings.repeat)

    # ------------------------------------------------------------------------------- checkpoints
    def _state(self, opts, scheds) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "method_state": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "schedulers": {k: s.state_dict() for k, s in scheds.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "phase_index": self.phase_index,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "phase_step": self.phase_step,
            "best": self.best,
            "phase_best": self.phase_best,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "persisted_optimizers": self.persisted,
            "rng": rng_state(),
            **self.meta(),
        }

    def meta(self) -> dict[str, Any]:
        b = self.data.bundle
        return {
            "num_classes": b.num_classes,
            "in_channels": b.in_channels,
            "class_names": b.class_names,
            "image_size": list(self.cfg.data.image_size),
            "dataset": b.name,
            #: the training data were volumes (a 2D model then read their slices, each volume scaled as a
            #: whole): the Python API scales an array [D, H, W] for it the same way
            "volumes": any(r.ndim == 4 for r in b.train[:1]),
        }

    def _check_resume_config(self, saved: dict[str, Any]) -> None:
        try:  # keys added to the config since the run started take their defaults (the old behaviour)
            saved = to_dict(from_dict(RunConfig, copy.deepcopy(saved)))
        except ConfigError:
            pass  # a key since removed or renamed: compared as saved, and named below
        now, then = _flatten(to_dict(self.cfg)), _flatten(saved)
        for key in sorted(set(now) | set(then)):
            if key.startswith(RESUMABLE_CHANGES) or key == "train.epochs":
                continue
            if now.get(key) != then.get(key):
                raise ConfigError(
                    f"--resume: config differs from the checkpoint at '{key}' ({then.get(key)!r} → {now.get(key)!r})"
                )
        before, after = then.get("train.epochs"), now.get("train.epochs")
        shared = [ph.name for ph in self.phases if ph.epochs is None]
        if before != after and after < before:
            raise ConfigError(
                f"--resume: train.epochs can only grow on resume ({before} → {after}); start a new run"
            )
        if before != after and len(shared) > 1:
            raise ConfigError(
                f"--resume: train.epochs changed ({before} → {after}) but it is the length of several phases "
                f"({', '.join(shared)}): phases already trained would keep {before}; resume with "
                f"train.epochs={before} or start a new run"
            )
        if before != after:
            # phases without their own epoch count run train.epochs: their LR schedule spans the run
            for phase in self.phases:
                if phase.epochs is not None:
                    continue
                for spec in phase.optimizer_specs:
                    kind = self._scheduler_kind(spec)
                    if kind in LENGTH_DEPENDENT:
                        raise ConfigError(
                            f"--resume: train.epochs changed ({before} → {after}) but the '{kind}' learning-rate "
                            f"schedule of phase '{phase.name}' depends on the run length; resume with "
                            f"train.epochs={before} or start a new run"
                        )

    def _restore(self) -> dict[str, Any] | None:
        path = self.out / "last.pt"
        if not path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {path}")
        state = load_checkpoint(path, self.device)
        self._check_resume_config(state["config"])
        self.method.load_state_dict(state["method_state"])
        self.phase_index, self.epoch, self.global_step = (
            state["phase_index"],
            state["epoch"],
            state["global_step"],
        )
        self.phase_step = state.get("phase_step", self.epoch * self.iters_per_epoch())  # older checkpoints
        self.best, self.history = state["best"], state["history"]
        self.phase_best = state.get("phase_best", self.phase_best)
        kept = [(self.best, self.out / "best.pt")]
        if self.phase_index < len(self.phases) and self.phases[self.phase_index].restore_best:
            kept.append((self.phase_best, self._phase_best_path(self.phases[self.phase_index])))
        for best, file in kept:  # a selected model whose file is gone would be reported from another state
            if best.get("epoch") is not None and not file.is_file():
                raise ConfigError(
                    f"--resume: {file} is missing, but the run selected it (phase '{best['phase']}', epoch "
                    f"{best['epoch']}); resume needs the run folder as training left it"
                )
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        self.persisted = state.get("persisted_optimizers", {})
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self._truncate_step_log()
        return state

    def _truncate_step_log(self) -> None:
        path = self.out / "steps.jsonl"
        if not (self.main and path.is_file()):
            return
        keep = [
            ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.global_step
        ]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------------------------ logging
    def _log_step(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.out / "steps.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            shown = {k: v for k, v in record.items() if k not in ("epoch", "step", "attempt")}
            self.logger.scalars(shown, record["step"], prefix="step/")

    def _write_epoch_logs(self) -> None:
        if not self.main:
            return
        atomic_write_text(self.out / "epochs.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))
        keys: list[str] = []
        for h in self.history:
            keys += [k for k in h if k not in keys]
        rows = [",".join(keys)] + [
            ",".join("" if h.get(k) is None else str(h.get(k, "")) for k in keys) for h in self.history
        ]
        atomic_write_text(self.out / "epochs.csv", "\n".join(rows) + "\n")

    # ---------------------------------------------------------------------------------- training
    def validate(self, phase: Phase | None = None) -> dict[str, float]:
        self.method.eval()
        if phase is not None:
            own = self.method.phase_owner(phase.name).validation_metrics(
                phase.name, self.data.val, self.cfg.data.image_size, self.device, self.cfg.data.target_spacing
            )
            if own is not None:
                self.method.train()
                return own
        means, _ = evaluate_split(
            build_predict(self.method.predict, self.cfg, validation=True),
            self.data.val,
            task=self.data.bundle.task,
            num_classes=self.num_classes,
            image_size=self.cfg.data.image_size,
            device=self.device,
            metrics=FAST_METRICS,
        )
        self.method.train()
        return means

    def _is_better(self, value: float, best: dict[str, Any] | None = None, mode: str | None = None) -> bool:
        best = self.best if best is None else best
        mode = mode or self.cfg.train.val_mode
        if best["value"] is None or math.isnan(best["value"]):
            return not math.isnan(value)
        return value > best["value"] if mode == "max" else value < best["value"]

    def _phase_metric(self, phase: Phase, val: dict[str, float]) -> float:
        key = phase.val_metric or self.cfg.train.val_metric
        if key not in val:
            raise ConfigError(
                f"phase '{phase.name}': validation metric '{key}' is not one of {', '.join(sorted(val))}"
            )
        return val[key]

    def _phase_best_path(self, phase: Phase) -> Path:
        return self.out / f"best_{phase.name}.pt"

    def _restore_phase_best(self, phase: Phase) -> None:
        """End of a ``restore_best`` phase: continue from the state of its best validation."""
        D.barrier(self.info)
        path = self._phase_best_path(phase)
        if phase.restore_best and phase.validate and path.is_file():
            self.method.load_state_dict(load_checkpoint(path, self.device)["method_state"])

    def train_step(self, batch: dict[str, Batch], phase: Phase, opts, scheds) -> dict[str, float]:
        """One iteration: every optimizer of ``phase`` (``repeat`` times, on iterations divisible by its
        ``every``) on ``batch``, the phase owner's ``on_step_end`` after each step. Returns the step's
        values averaged over processes (``<optimizer>/<key>`` when the phase has several)."""
        self.method.global_step, self.method.phase_step = self.global_step, self.phase_step
        self.method.epoch = self.epoch
        values: dict[str, torch.Tensor] = {}
        specs = phase.optimizer_specs
        owner = self.method.phase_owner(phase.name)
        for spec in specs:
            if self.phase_step % spec.settings.every:
                continue
            name, opt = spec.name, opts[spec.name]
            for _ in range(spec.settings.repeat):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, enabled=self.amp), global_reduction(self.info.enabled):
                    out = self.model(batch, phase.name, name)
                    loss = out["loss"]
                    if self.scaler:
                        self.scaler.scale(loss).backward()
                        if self.cfg.train.grad_clip:
                            self.scaler.unscale_(opt)
                    else:
                        loss.backward()
                if self.cfg.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(
                        owner.parameters_for(phase.name, name), self.cfg.train.grad_clip
                    )
                if self.scaler:
                    self.scaler.step(opt)
                    self.scaler.update()
                else:
                    opt.step()
                scheds[name].step()
                owner.on_step_end(phase.name, name)
            prefix = "" if len(specs) == 1 else f"{name}/"
            for k, v in out.items():
                values[prefix + k] = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
        keys = sorted(values)
        if not keys:
            return {}
        stacked = D.all_reduce_mean(torch.stack([values[k].cpu().reshape(()) for k in keys]), self.info)
        return dict(zip(keys, stacked.tolist()))

    def fit(self, on_start: Callable[[], None] | None = None) -> dict[str, Any]:
        """Train all phases; returns the final history record. Raises TrainingDiverged on NaN/inf.
        ``on_start`` runs once a resume is accepted (its checkpoint read and its config checked), before
        the first step: e.g. to write the run's record, which a refused resume must leave as it was."""
        seed_everything(self.cfg.train.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self._restore() if self.resume else None
        if on_start is not None:
            on_start()
        if not self.resume and self.main:
            # a fresh run must not leave an earlier run's checkpoints or results next to its own logs
            for name in ("steps.jsonl", "epochs.jsonl", "epochs.csv", "last.pt", "best.pt", "metrics.json",
                         "learning_curves.png", "overlays.png"):  # fmt: skip
                (self.out / name).unlink(missing_ok=True)
            events = self.out.glob("tensorboard/events.out.tfevents.*")
            for old in [*self.out.glob("best_*.pt"), *self.out.glob("epoch_*.pt"), *events]:
                old.unlink()
        from tqdm.auto import tqdm

        self.method.train()
        while self.phase_index < len(self.phases):
            phase = self.phases[self.phase_index]
            opts, scheds = self.build_optimizers(phase)
            if saved is None:
                self._take_persisted(phase, opts)
            if saved is not None:
                for k in opts:
                    opts[k].load_state_dict(saved["optimizers"][k])
                    scheds[k].load_state_dict(saved["schedulers"][k])
                saved = None
            if self.epoch == 0 and self.phase_step == 0:
                self.method.phase_owner(phase.name).on_phase_start(phase.name)
            n_epochs = self.phase_epochs(phase)
            iters = self.phase_iters(phase)
            bar = tqdm(
                total=n_epochs * iters,  # an estimate when plans change the epochs' lengths
                initial=self.epoch * iters,
                desc=phase.name,
                dynamic_ncols=True,
                disable=not (self.main and self.cfg.train.progress),
                leave=False,
            )
            while self.epoch < n_epochs:
                plan = self.plan_epoch(phase)
                if plan is not None and plan.done:
                    record = {
                        "phase": phase.name,
                        "epoch": self.epoch,
                        "step": self.global_step,
                        "ended": "plan",
                    }
                    if self.epoch > 0 and self.epoch % self.cfg.train.val_every:
                        # the phase's last state would never compete for best.pt: validate it now (again
                        # on resume, with the same result; last.pt already holds this state)
                        self._validate_epoch(phase, record)
                    self.history.append(record)
                    if self.main:
                        self._write_epoch_logs()
                    break
                self.train_epoch(phase, opts, scheds, self.epoch_iters(phase, plan), bar, plan)
            bar.close()
            self._restore_phase_best(phase)
            for spec in phase.optimizer_specs:
                if spec.persist is not None:
                    self.persisted[spec.persist] = copy.deepcopy(opts[spec.name].state_dict())
            self.phase_index += 1
            self.epoch = 0
            self.phase_step = 0
            self.phase_best = {"value": None, "epoch": None, "phase": None}
        return self.history[-1] if self.history else {}

    def plan_epoch(self, phase: Phase) -> EpochPlan | None:
        """The phase owner's plan for the coming epoch (:meth:`Method.plan_epoch`), checked."""
        owner = self.method.phase_owner(phase.name)
        planner = getattr(owner, "plan_epoch", None)
        plan = planner(phase.name, self.epoch, TrainerSweep(self, phase)) if planner else None
        if plan is None or plan.done:
            return plan
        names = {s.name for s in self.stream_specs(phase)}
        unknown = set(plan.subsets) - names
        if unknown:
            raise ConfigError(
                f"phase '{phase.name}': the plan names streams it does not draw: {sorted(unknown)}"
            )
        if plan.subsets or plan.iters is not None:
            for spec in phase.optimizer_specs:
                kind = self._scheduler_kind(spec)
                if kind in LENGTH_DEPENDENT and (plan.iters is not None or phase.epoch_iters == "pass"):
                    raise ConfigError(
                        f"phase '{phase.name}' optimizer '{spec.name}': its plan changes the epochs' length, "
                        f"which the '{kind}' learning-rate schedule depends on (use scheduler: none)"
                    )
        return plan

    def train_epoch(self, phase: Phase, opts, scheds, iters: int, bar, plan: EpochPlan | None = None) -> None:
        """One epoch of ``phase``: ``iters`` iterations (over the plan's subsets, if any), the epoch-end
        hook, validation (phases that validate), ``best.pt`` / ``last.pt`` and the epoch logs. ``bar``
        is a tqdm progress bar."""
        t0 = time.perf_counter()
        adaptive = next((s for s in scheds.values() if isinstance(s, AdaptiveLR)), None)
        snapshot = self._snapshot(opts) if adaptive is not None else None
        self._attempt = 0
        criterion = None
        if adaptive is not None and adaptive.last is None:  # a phase's first baseline: at its start
            start = self._criterion(phase, iters, plan)
            adaptive.last = start if math.isfinite(start) else None
        while True:
            sums, counts, bad = self._iterate(phase, opts, scheds, iters, bar, plan, adaptive is not None)
            if adaptive is None:
                break
            # the criterion: the loss on the epoch's batches *after* the attempt's updates (inf when a
            # step's loss was not finite), against the last accepted epoch's
            criterion = self._criterion(phase, iters, plan) if bad is None else math.inf
            accepted = adaptive.decide(criterion)
            if accepted and bad is not None:
                self._diverged(phase, bad)
            if accepted:
                break
            self.history.append({"phase": phase.name, "epoch": self.epoch + 1, "step": self.global_step,
                                 "attempt": adaptive.attempts, "criterion": criterion, "accepted": False,
                                 "next_lr": adaptive.lr})  # fmt: skip
            self._rollback(snapshot, opts, adaptive)
            self._attempt = adaptive.attempts  # the rerun's step log lines say which attempt they belong to
        self._end_epoch(phase, opts, scheds, t0, sums, counts, criterion)

    @torch.no_grad()
    def _criterion(self, phase: Phase, iters: int, plan: EpochPlan | None) -> float:
        """The adaptive learning rate's criterion: the mean loss of the current epoch's batches (the
        attempt's, drawn again) at the current parameters, in eval mode and without a step, averaged
        over processes; ``inf`` when not finite. The random state is left as it was."""
        specs = self.stream_specs(phase)
        subsets = plan.subsets if plan is not None else {}
        loaders = [self.loader(s, self.epoch, iters, phase, subsets.get(s.name)) for s in specs]
        optimizer = phase.optimizer_specs[0].name  # the adaptive rate drives a phase of one optimizer
        saved = rng_state()
        total, n = torch.zeros((), dtype=torch.float64), 0
        self.method.eval()
        try:
            for batches in zip(*loaders):
                batch = {s.name: self.to_batch(b) for s, b in zip(specs, batches)}
                with torch.autocast(self.device.type, enabled=self.amp), global_reduction(self.info.enabled):
                    total += self.model(batch, phase.name, optimizer)["loss"].detach().double().cpu()
                n += 1
        finally:
            self.method.train()
            set_rng_state(saved)
        value = float(D.all_reduce_mean((total / max(n, 1)).float().reshape(1), self.info)[0])
        return value if math.isfinite(value) else math.inf

    def _diverged(self, phase: Phase, bad: dict[str, float]) -> None:
        where = f"phase '{phase.name}' epoch {self.epoch + 1} step {self.global_step}"
        last = self.out / "last.pt"
        kept = f"last good checkpoint kept at {last}" if last.is_file() else "no checkpoint yet"
        raise TrainingDiverged(f"training stopped: non-finite loss {bad} at {where}; {kept}")

    def _snapshot(self, opts) -> dict[str, Any]:
        """Everything an epoch changes, to roll a rejected attempt back (the adaptive learning rate)."""
        return {
            "method": copy.deepcopy(self.method.state_dict()),
            "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in opts.items()},
            "scaler": copy.deepcopy(self.scaler.state_dict()) if self.scaler else None,
            "rng": rng_state(),
            "counters": (self.global_step, self.phase_step, self.images_seen),
        }

    def _rollback(self, snapshot: dict[str, Any], opts, adaptive: AdaptiveLR) -> None:
        self.method.load_state_dict(snapshot["method"])
        for k, o in opts.items():
            o.load_state_dict(copy.deepcopy(snapshot["optimizers"][k]))
        adaptive.apply()  # the new attempt's learning rate
        if self.scaler and snapshot["scaler"] is not None:
            self.scaler.load_state_dict(snapshot["scaler"])
        set_rng_state(snapshot["rng"])
        self.global_step, self.phase_step, self.images_seen = snapshot["counters"]

    def _iterate(self, phase: Phase, opts, scheds, iters: int, bar, plan: EpochPlan | None, tolerant: bool):
        """The iterations of one epoch (or attempt): ``(sums, counts, None)`` of the step values, or, when
        a loss is not finite, TrainingDiverged (``tolerant``: the values so far and the bad ones)."""
        specs = self.stream_specs(phase)
        streams = tuple(s.name for s in specs)
        subsets = plan.subsets if plan is not None else {}
        loaders = [self.loader(s, self.epoch, iters, phase, subsets.get(s.name)) for s in specs]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for batches in zip(*loaders):
            batch = {s: self.to_batch(b) for s, b in zip(streams, batches)}
            values = self.train_step(batch, phase, opts, scheds)
            self.global_step += 1
            self.phase_step += 1
            self.images_seen += sum(len(b) for b in batch.values()) * self.info.world_size
            if not all(math.isfinite(v) for v in values.values()):
                bad = {k: v for k, v in values.items() if not math.isfinite(v)}
                if tolerant:
                    return sums, counts, bad
                self._diverged(phase, bad)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if self.global_step % self.cfg.train.log_every == 0:
                lr = next(iter(opts.values())).param_groups[0]["lr"]
                self._log_step(
                    {
                        "phase": phase.name,
                        "epoch": self.epoch + 1,
                        "step": self.global_step,
                        "lr": lr,
                        **({"attempt": self._attempt} if self._attempt else {}),
                        **values,
                    }
                )
            if values:
                shown = values.get("loss", next(iter(values.values())))
                bar.set_postfix(loss=f"{shown:.4f}", refresh=False)
            bar.update(1)
        return sums, counts, None

    def _end_epoch(
        self, phase: Phase, opts, scheds, t0: float, sums, counts, criterion: float | None = None
    ) -> None:
        """After an (accepted) epoch: the epoch-end hook, validation, checkpoints and logs."""
        self.epoch += 1
        self.method.phase_owner(phase.name).on_epoch_end(phase.name, self.epoch)
        self.train_seconds += time.perf_counter() - t0
        record: dict[str, Any] = {"phase": phase.name, "epoch": self.epoch, "step": self.global_step}
        record.update({f"train/{k}": v / counts[k] for k, v in sums.items()})
        if criterion is not None:
            record["train/criterion"] = criterion  # the adaptive rate's: the loss after the epoch's steps
        n_epochs = self.phase_epochs(phase)
        if self.epoch % self.cfg.train.val_every == 0 or self.epoch == n_epochs:
            self._validate_epoch(phase, record)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        self.history.append(record)
        if self.main:
            self.logger.scalars(
                {k: v for k, v in record.items() if k not in ("epoch", "step")}, self.global_step
            )
            every = self.cfg.train.checkpoint_every
            if self.epoch % every == 0 or self.epoch == n_epochs:  # and always at the end of a phase
                save_checkpoint(self._state(opts, scheds), self.out / "last.pt")
            if phase.final and self.epoch in self.cfg.train.save_epochs:
                snapshot = {
                    "config": to_dict(self.cfg),
                    "method_state": self.method.state_dict(),
                    **self.meta(),
                }
                save_checkpoint(snapshot, self.out / f"epoch_{phase.name}_{self.epoch}.pt")
            self._write_epoch_logs()
        D.barrier(self.info)

    def _validate_epoch(self, phase: Phase, record: dict[str, Any]) -> None:
        """Validate the current state (phases that validate): the metrics go into ``record``; an
        improvement is kept in ``best_<phase>.pt`` (``restore_best``) and ``best.pt`` (``final``)."""
        if not phase.validate:
            return
        improved = phase_improved = False
        if self.main:
            val = self.validate(phase)
            record.update({f"val/{k}": v for k, v in val.items()})
            value = self._phase_metric(phase, val)
            if phase.restore_best:
                phase_improved = self._is_better(value, self.phase_best, phase.val_mode)
                if phase_improved:
                    self.phase_best = {"value": value, "epoch": self.epoch, "phase": phase.name}
            if phase.final:
                improved = self._is_better(value)
                if improved:
                    self.best = {"value": value, "epoch": self.epoch, "phase": phase.name}
        improved = D.broadcast_flag(improved, self.info)
        phase_improved = D.broadcast_flag(phase_improved, self.info)
        if not self.main:
            return
        if phase_improved:
            save_checkpoint({"method_state": self.method.state_dict(), "best": self.phase_best},
                            self._phase_best_path(phase))  # fmt: skip
        if improved:
            save_checkpoint(
                {"config": to_dict(self.cfg), "method_state": self.method.state_dict(), "best": self.best,
                 **self.meta()},
                self.out / "best.pt",
            )  # fmt: skip


def _strided_pointwise_conv(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a 1x1 convolution with a stride above 1 (a ResNet-style shortcut)."""
    return any(
        isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and max(m.stride) > 1
        for m in module.modules()
    )


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x
