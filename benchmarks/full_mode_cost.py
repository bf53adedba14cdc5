"""Compute cost of the benchmark tables' full mode (their published protocols), estimated without training.

Full mode is meant for a GPU and never runs here; this script says what it would cost.

For every full-mode run of a table (its rows × full-mode seeds, as :func:`semiseg.bench.runner.run_table`
would train them: ``full_only`` rows included, each row's own ``seeds``, ``init_from`` rows as runs of
their own, tuning trials counted, post-processing rows skipped as they train nothing, rows whose
config equals an earlier row's counted once as the run cache trains them once):

- **iterations** of each phase, as the trainer counts them (``Trainer.phase_epochs × phase_iters``:
  a phase's own ``epochs`` or ``train.epochs``, times ``train.iters_per_epoch`` or one pass over the
  labeled / first stream's items, read from the data only when the count depends on it); warm-up,
  pre-training and regulariser phases (e.g. the size regressor's) each count;
- **passes** per iteration of each phase: images through each network with and without gradients,
  counted with forward hooks (:class:`semiseg.bench.timing.PassCounter`, on each network's first
  encoder block and its head) while one iteration of the run's method runs through the trainer's own
  ``train_step`` on synthetic batches of the run's batch sizes, streams and views, but at a small
  image size (``--small``, 32x32);
- **forward FLOPs per image** ``F`` of each network at the full image size (encoder and decoder apart,
  since some calls decode without encoding), counted by ``torch.utils.flop_counter.FlopCounterMode``
  on the meta device (a multiply-add counts 2 FLOPs; convolutions and matrix products only);
- **training FLOPs per iteration ≈ n_grad × 3F + n_nograd × F** (the usual rule: a backward pass
  costs about twice its forward); the total per run and table, and GPU-hours at assumed sustained
  throughputs (:data:`THROUGHPUTS`: 5 and 20 TFLOP/s).

As a check of the 3F rule and of the hooks (a network without hooks would be missed), the same
iteration's forward and backward FLOPs are also counted by FlopCounterMode at the small size and
divided by the rule's estimate at that size (for fully convolutional networks both scale with the
pixel count, so the ratio carries over to the full size).

A 3D model's training item is its patch (``data.patch_size``): passes are counted at patches of the same
depth and ``--small``² in-plane, FLOPs per item at the full patch.

Runs whose networks cannot be hooked (no ``encode`` / ``decode`` split: IODA's and SSLDEC's networks, the
shape prior's autoencoder, translation's) are priced by :func:`measure_counted` instead: FlopCounterMode
over one iteration of every phase at the full training size, with real compute on the CPU (exact for
that iteration; no rule, no passes). Rows neither way can price (a 3D run without hooks) are listed as
not estimated, and the totals say they are incomplete.

Writes ``benchmarks/results/full-mode-cost.{json,md}``.

    OMP_NUM_THREADS=1 python benchmarks/full_mode_cost.py [TABLE ...] --data-root ../shared/data

(every table with a full mode by default)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

#: every table with a full mode, issue 11's first (the first version of this estimate covered those four)
DEFAULT_TABLES = (
    "semi-acdc", "curriculum-acdc", "tv-horse", "supervised-horse", "supervised-acdc", "curriculum-acdc-4class",
    "translation-mnist", "translation-acdc-rv", "ssldec", "ssldec-fit", "ssldec-acdc", "ioda-textures",
    "shape-prior-acdc", "acdc-3d",
)  # fmt: skip
#: assumed sustained training throughputs (TFLOP/s, fp32 / TF32) of one data-centre GPU
THROUGHPUTS = (5.0, 20.0)
#: side of the small images the passes are counted at
SMALL = 32
#: the check ratio (counted / 3F rule at the small size) outside this range is flagged
CHECK_RANGE = (0.8, 1.2)
SEMISEG_DATA = "../shared/data"


# ------------------------------------------------------------------------------------------ runs
def run_id(cfg) -> str:
    """Identity of a run: the bench cache's key (:func:`semiseg.bench.cache.run_key`) of its resolved
    config and seed at this commit's training code, so equal configs are one cached run and a run's id
    is its directory name under the runner's work dir (for rows without ``init_from``, whose start path
    is a placeholder here)."""
    from semiseg.bench.cache import run_key
    from semiseg.config import to_dict

    return run_key(_source_hash(), to_dict(cfg), cfg.train.seed)


@functools.cache
def _source_hash() -> str:
    from semiseg.bench.provenance import source_hash

    return source_hash()


def full_runs(table) -> list[dict[str, Any]]:
    """The runs a full-mode ``semiseg bench <table>`` trains, in the runner's order: one record per
    (row, seed) with its RunConfig (``cfg``, None for post-processing rows, which train nothing), and the
    tuning trials first. ``train.init`` of an ``init_from`` row names its start run's identity (the
    runner's path of that run's ``best.pt``); a tuned row takes the grid's first combination (the
    tuning's choice is only known after training)."""
    import itertools

    from semiseg.bench.runner import row_config

    seeds = table.seeds
    runs: list[dict[str, Any]] = []
    ids: dict[tuple[str, int], str] = {}
    tuned: dict[str, Any] = {}
    if table.tuning is not None:
        t = table.tuning
        row = next(r for r in table.rows if r.key == t.row)
        keys = list(t.grid)
        combos = list(itertools.product(*(t.grid[k] for k in keys)))
        for combo in combos:
            extra = dict(zip(keys, combo))
            tuned = tuned or extra
            cfg = row_config(table, row, t.seed, False, extra)
            runs.append({"row": f"tuning of {t.row}", "method": f"tuning of {row.method}",
                         "setting": f"{row.setting}, {len(combos)} grid trials", "seed": t.seed, "cfg": cfg,
                         "id": run_id(cfg), "tuning": extra})  # fmt: skip
    for row in table.rows_for(False):
        for seed in row.seeds_for(seeds, False):
            rec: dict[str, Any] = {"row": row.key, "method": row.method, "setting": row.setting, "seed": seed}
            if row.postprocess:
                runs.append({**rec, "cfg": None, "postprocess": row.postprocess, "reuse": row.reuse})
                if row.postprocess == "ensemble":
                    break  # one value from all of the reused row's runs
                continue
            extra = dict(tuned) if row.tuned else {}
            if row.init_from:
                start = ids[(row.init_from, seed)]
                extra["train.init"] = f"<best.pt of run {start}>"
                rec["init_from"] = row.init_from
            if row.tuned:
                rec["tuned_with"] = extra
            cfg = row_config(table, row, seed, False, extra)
            ids[(row.key, seed)] = run_id(cfg)
            runs.append({**rec, "cfg": cfg, "id": ids[(row.key, seed)]})
    return runs


# ---------------------------------------------------------------------------------- synthetic data
class ShapeOnlyItems:
    """What the trainer reads of a training set before loading any item: its length, tags and seed."""

    def __init__(self, n: int, num_classes: int, seed: int = 0):
        import torch

        self.n, self.seed = n, seed
        self.tags = (torch.arange(n)[:, None] + torch.arange(num_classes)[None]).remainder(2).float()

    def __len__(self) -> int:
        return self.n


def shape_only_data(cfg, in_channels: int, num_classes: int, task: str = "segment", lengths=None):
    """A :class:`~semiseg.data.PreparedData` without items, enough to build a Trainer: ``lengths`` =
    (labeled, unlabeled) item counts (default: a few batches; the real counts when an iteration count
    depends on them); no unlabeled set when ``data.split.unlabeled`` is none."""
    from types import SimpleNamespace

    from semiseg.data import PreparedData

    n_lab, n_unl = lengths or (4 * cfg.train.batch_size, 4 * cfg.train.batch_size)
    bundle = SimpleNamespace(name="synthetic", num_classes=num_classes, in_channels=in_channels, task=task,
                             class_names=[str(k) for k in range(num_classes)], root=None)  # fmt: skip
    unlabeled = (
        None if cfg.data.split.unlabeled == "none" or not n_unl else ShapeOnlyItems(n_unl, num_classes, 1)
    )
    return PreparedData(bundle, None, ShapeOnlyItems(n_lab, num_classes), unlabeled, [None], [])


def synthetic_batch(cfg, spec, phase, n: int, in_channels: int, num_classes: int, spatial, gen) -> dict:
    """A collated batch of ``n`` random items of stream ``spec`` of spatial size ``spatial`` (a 2D image
    or a 3D patch), as the stream's dataset would give them: the labeled items with
    ``data.split.supervision`` (dense masks, or ``sparse_pixels`` labeled pixels, tags or sizes), the
    unlabeled ones with ``data.split.unlabeled_supervision``, and the phase's views of the stream (strong
    views, CutMix boxes)."""
    import torch

    from semiseg.core import IGNORE_INDEX, Supervision
    from semiseg.engine.trainer import stream_id

    spatial = tuple(spatial)
    split = cfg.data.split
    kind = Supervision.parse(split.supervision if spec.source == "labeled" else split.unlabeled_supervision)
    image = torch.rand(n, in_channels, *spatial, generator=gen)
    dense = torch.randint(0, num_classes, (n, *spatial), generator=gen)
    counts = torch.nn.functional.one_hot(dense, num_classes).flatten(1, -2).sum(1).float()
    nan = torch.full((n, num_classes), float("nan"))
    mask = torch.full_like(dense, IGNORE_INDEX)
    if kind == Supervision.DENSE:
        mask = dense
    elif kind == Supervision.SPARSE:
        keep = torch.rand(n, math.prod(spatial), generator=gen).argsort(1)[:, : split.sparse_pixels]
        mask.view(n, -1).scatter_(1, keep, dense.view(n, -1).gather(1, keep))
    tags = (counts > 0).float() if kind == Supervision.TAG else nan.clone()
    if spec.tag_class is not None:
        tags[:, spec.tag_class] = spec.tag_value
    raw = {
        "image": image,
        "mask": mask,
        "tags": tags,
        "sizes": counts if kind == Supervision.SIZE else nan.clone(),
        "kind": torch.full((n,), int(kind)),
        "index": torch.arange(n),
        "key": torch.stack(
            [torch.full((n,), stream_id(spec.name)), torch.zeros(n, dtype=torch.long), torch.arange(n)], 1
        ),  # fmt: skip
    }
    views = phase.views.get(spec.name)
    if views is not None and views.strong:
        k = views.strong
        raw["strong"] = torch.rand(n, k, in_channels, *spatial, generator=gen)
        if views.cutmix:
            boxes = torch.zeros(n, k, *spatial, dtype=torch.bool)
            boxes[(..., *(slice(s // 4, 3 * s // 4) for s in spatial))] = True
            raw["cutmix"] = boxes
    return raw


# ------------------------------------------------------------------------------------------ FLOPs
def counted_flops(fn) -> tuple[float, Any]:
    """FLOPs that ``fn()`` runs (forward and backward ops; FlopCounterMode) and its result."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return float(counter.get_total_flops()), out


def network_flops(net, in_channels: int, spatial: tuple[int, ...]) -> dict[str, float]:
    """Forward FLOPs of one image through ``net`` (a network with ``encode`` / ``decode``), by part:
    ``{"encoder": ..., "decoder": ...}``; on the meta device (no memory, no compute), else on the CPU."""
    import torch

    def count(device: str) -> dict[str, float]:
        m = copy.deepcopy(net).to(device).eval()
        x = torch.zeros(1, in_channels, *spatial, device=device)
        with torch.no_grad():
            enc, features = counted_flops(lambda: m.encode(x))
            dec, _ = counted_flops(lambda: m.decode(features, tuple(spatial)))
        return {"encoder": enc, "decoder": dec}

    try:
        return count("meta")
    except Exception:  # noqa: BLE001  (an op without a meta kernel)
        return count("cpu")


def in_channels_of(net) -> int:
    """Input channels of ``net``'s first convolution."""
    import torch.nn as nn

    return next(m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)).in_channels


def rule_flops(passes: dict[str, dict[str, float]], flops: dict[str, dict[str, float]]) -> float:
    """Training FLOPs of an iteration by the rule: ``3F`` per part-pass with gradient, ``F`` without.

    ``passes[net]`` = images per ``{encoder,decoder}_{grad,nograd}``; ``flops[net]`` = forward FLOPs of
    one image per ``encoder`` / ``decoder``.

    Examples:
        >>> rule_flops({"model": {"encoder_grad": 2, "decoder_grad": 2, "encoder_nograd": 1, "decoder_nograd": 1}},
        ...            {"model": {"encoder": 10.0, "decoder": 30.0}})
        280.0
    """
    total = 0.0
    for net, c in passes.items():
        for part in ("encoder", "decoder"):
            total += (3 * c.get(f"{part}_grad", 0) + c.get(f"{part}_nograd", 0)) * flops[net][part]
    return float(total)


def gpu_hours(flops: float, tflops: float) -> float:
    """Hours at a sustained ``tflops`` TFLOP/s.

    Examples:
        >>> gpu_hours(3.6e16, 5.0)
        2.0
    """
    return flops / (tflops * 1e12) / 3600


# ------------------------------------------------------------------------------------ measurement
def train_spatial(cfg) -> tuple[int, ...]:
    """The spatial size of one training item: ``data.image_size`` for a 2D model, the patch
    ``data.patch_size`` for a 3D one (whose volumes have no fixed size)."""
    if cfg.model.spatial_dims == 2:
        return tuple(cfg.data.image_size)
    if cfg.data.patch_size is None or len(cfg.data.patch_size) != 3:
        raise NotImplementedError("a 3D model without a 3-entry data.patch_size (whole volumes vary in size)")
    return tuple(cfg.data.patch_size)


def small_config(cfg, size: int):
    """``cfg`` at ``size``² images, or for a 3D model at patches of the same depth and ``size``² in-plane
    (everything else, batch sizes included, unchanged)."""
    if cfg.model.spatial_dims == 2:
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=[size, size]))
    depth = train_spatial(cfg)[0]
    data = dataclasses.replace(cfg.data, image_size=[-1, size, size], patch_size=[depth, size, size])
    return dataclasses.replace(cfg, data=data)


def phase_lengths(trainer) -> list[dict[str, Any]]:
    """Epochs and iterations of each phase of ``trainer`` as its ``fit`` counts them before any plan, but
    for iterations a method's plan fixes from the config alone (``Method.planned_iterations``), with what
    makes the count uncertain: a data-dependent length, an epoch plan, an adaptive rate."""
    from semiseg.methods.base import Method

    out = []
    for phase in trainer.phases:
        owner = trainer.method.phase_owner(phase.name)
        planner = getattr(type(owner), "plan_epoch", None)
        epochs, iters = trainer.phase_epochs(phase), trainer.phase_iters(phase)
        planned_iterations = getattr(owner, "planned_iterations", None)  # a plan the config alone decides
        fixed = planned_iterations(phase.name) if planned_iterations is not None else None
        if fixed is not None:
            iters = fixed
        out.append({
            "phase": phase.name,
            "epochs": epochs,
            "iters_per_epoch": iters,
            "iterations": epochs * iters,
            "data_dependent": fixed is None and (phase.epoch_iters == "pass" or not trainer.cfg.train.iters_per_epoch),
            "fixed_by_plan": fixed is not None,
            "planned": planner is not None and planner is not Method.plan_epoch,
            "adaptive": any(trainer._scheduler_kind(s) == "adaptive" for s in phase.optimizer_specs),
        })  # fmt: skip
    return out


def count_iteration(trainer, phase, nets: dict, batch) -> tuple[dict[str, dict[str, float]], float]:
    """One iteration of ``phase`` through ``trainer.train_step`` on ``batch()`` (the phase's optimizers
    built and its start hook called first, as ``Trainer.fit`` does): images per network ``nets[name]``
    and ``{encoder,decoder}_{grad,nograd}`` (networks without any left out), and the FLOPs
    FlopCounterMode counts (forward and backward). When an optimizer steps only every k-th iteration,
    the average over ``lcm(k)`` iterations."""
    from semiseg.bench.timing import PassCounter

    opts, scheds = trainer.build_optimizers(phase)
    trainer.method.phase_owner(phase.name).on_phase_start(phase.name)
    trainer.method.train()
    steps = math.lcm(*(s.settings.every for s in phase.optimizer_specs))
    counters = {name: PassCounter(net) for name, net in nets.items()}
    counted = 0.0
    try:
        for step in range(steps):
            trainer.phase_step = trainer.global_step = step
            counted += counted_flops(functools.partial(trainer.train_step, batch(), phase, opts, scheds))[0]
    finally:
        for c in counters.values():
            c.close()
    passes = {name: {k: v / steps for k, v in c.counts.items()} for name, c in counters.items()}
    return {n: p for n, p in passes.items() if any(p.values())}, counted / steps


class Unhookable(NotImplementedError):
    """The run's networks lack the ``encode`` / ``decode`` split the pass counter hooks (an MLP, a
    clustering head, a regulariser's autoencoder): :func:`measure_counted` prices the run instead."""


def phase_iterations(cfg, method, in_channels: int, num_classes: int, task: str, spatial, nets: dict,
                     seed: int = 0):  # fmt: skip
    """One iteration of every phase of ``method`` under ``cfg`` (:func:`count_iteration`, synthetic batches
    of ``spatial`` items): yields ``(phase, length, stream specs, passes per network, counted FLOPs)``.

    Repeated phases (the same name but for a trailing round number, e.g. SSLDEC's ``dec1``, ``dec2``, ...,
    with the same streams, views, optimizer settings and trained parameter tensors; IODA's
    ``input_pretrain1`` and ``input_pretrain2`` train different layers, so both count) are counted once,
    at their first occurrence: a method with 100 rounds of two phases would otherwise cost 200 counted
    iterations."""
    import re

    import torch

    from semiseg.engine.trainer import Trainer

    seen: dict[str, tuple[dict, float]] = {}
    with tempfile.TemporaryDirectory(prefix="semiseg-cost-") as tmp:
        data = shape_only_data(cfg, in_channels, num_classes, task)
        trainer = Trainer(cfg, method, data, tmp, device=torch.device("cpu"))
        gen = torch.Generator().manual_seed(seed)
        for i, (phase, length) in enumerate(zip(trainer.phases, phase_lengths(trainer))):
            trainer.phase_index, trainer.epoch = i, 0
            specs = trainer.stream_specs(phase)
            owner = trainer.method.phase_owner(phase.name)
            trained = [
                sorted(id(t) for t in owner.parameters_for(phase.name, o.name)) for o in phase.optimizer_specs
            ]
            kind = repr((re.sub(r"\d+$", "", phase.name), [s.name for s in specs], sorted(phase.views.items()),
                         [(o.name, o.settings) for o in phase.optimizer_specs], trained))  # fmt: skip
            if kind in seen:
                yield phase, length, specs, *seen[kind]
                continue

            def batch(phase=phase, specs=specs) -> dict:
                n = cfg.train.batch_size
                raw = {
                    s.name: synthetic_batch(cfg, s, phase, n, in_channels, num_classes, spatial, gen)
                    for s in specs
                }
                return {name: trainer.to_batch(b) for name, b in raw.items()}

            passes, counted = count_iteration(trainer, phase, nets, batch)
            seen[kind] = passes, counted
            yield phase, length, specs, passes, counted


def phase_record(cfg, phase, length: dict, specs) -> dict[str, Any]:
    """What a measurement records of a phase besides its passes and FLOPs."""
    return {
        **length,
        "optimizer_steps_per_iteration": {s.name: s.settings.repeat / s.settings.every
                                          for s in phase.optimizer_specs},
        "images_per_stream": {s.name: cfg.train.batch_size for s in specs},
        "views": {k: dataclasses.asdict(v) for k, v in phase.views.items()},
    }  # fmt: skip


def measure_counted(
    cfg, in_channels: int, num_classes: int, task: str = "segment", seed: int = 0
) -> dict[str, Any]:
    """Passes are not counted; the FLOPs of one iteration of every phase are counted by FlopCounterMode
    (forward and backward) at the full training size, on the CPU with real compute: the fallback of
    :func:`measure` for 2D runs whose networks cannot be hooked. Exact for the iteration it runs (no 3F
    rule, no small-size extrapolation), so it needs no check; it costs one full-size iteration per phase."""
    from semiseg.engine.checkpoint import seed_everything
    from semiseg.engine.run import build_method_for

    if cfg.model.spatial_dims != 2:
        raise NotImplementedError(
            "a 3D run whose networks cannot be hooked (counting it at full size is too slow here)"
        )
    full = train_spatial(cfg)
    seed_everything(seed)
    method = build_method_for(cfg, in_channels, num_classes)
    phases = []
    for phase, length, specs, _, counted in phase_iterations(cfg, method, in_channels, num_classes, task, full,
                                                              {}, seed):  # fmt: skip
        phases.append({
            **phase_record(cfg, phase, length, specs),
            "passes": {},
            "full_passes": {},
            "training_flops_per_iteration": counted,
            "check": {"counted_flops_small": None, "rule_flops_small": None, "ratio": None},
        })  # fmt: skip
    return {"image_size": list(full), "small_size": None, "segmenter": None, "networks": {},
            "counted_at_full_size": True, "phases": phases}  # fmt: skip


def measure(cfg, in_channels: int, num_classes: int, task: str = "segment", small: int = SMALL,
            seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Passes and FLOPs of one run config, per phase (see the module docstring).

    Builds the run's method at ``small``² (passes) and at the full size (FLOPs per image), runs one
    iteration of every phase in order (``lcm`` of the optimizers' ``every`` iterations when some skip
    iterations, averaged) through ``Trainer.train_step`` on synthetic batches, with hooks and a
    FlopCounterMode around it. Returns the networks' FLOPs per image and, per phase, its length
    (:func:`phase_lengths`, with shape-only data), images per stream, passes per network and the
    training FLOPs per iteration by the 3F rule (full size), with the small-size check.
    """

    from semiseg.bench.timing import segmenter_networks
    from semiseg.engine.checkpoint import seed_everything
    from semiseg.engine.run import build_method_for

    full = train_spatial(cfg)
    seed_everything(seed)
    full_nets = segmenter_networks(build_method_for(cfg, in_channels, num_classes))
    if not full_nets:
        raise Unhookable(f"method '{cfg.method['name']}' has no network with encode / decode to hook")
    scfg = small_config(cfg, small)
    small_spatial = train_spatial(scfg)
    method = build_method_for(scfg, in_channels, num_classes)
    nets = segmenter_networks(method)
    if set(nets) != set(full_nets):
        raise ValueError(f"networks differ between sizes: {sorted(nets)} vs {sorted(full_nets)}")
    networks = {}
    for name, net in full_nets.items():
        ch = in_channels_of(net)
        networks[name] = {
            "full": network_flops(net, ch, full),
            "small": network_flops(net, ch, small_spatial),
        }
    segmenter = next((n for n, m in nets.items() if m is method.segmenter), None)
    phases = []
    for phase, length, specs, passes, counted in phase_iterations(scfg, method, in_channels, num_classes, task,
                                                                   small_spatial, nets, seed):  # fmt: skip
        if counted and not passes:
            raise Unhookable(f"phase '{phase.name}' runs networks without encode / decode to hook")
        per_iter = rule_flops(passes, {n: networks[n]["full"] for n in passes})
        small_rule = rule_flops(passes, {n: networks[n]["small"] for n in passes})
        phases.append({
            **phase_record(scfg, phase, length, specs),
            "passes": passes,
            "full_passes": {n: {"grad": (p["encoder_grad"] + p["decoder_grad"]) / 2,
                                "nograd": (p["encoder_nograd"] + p["decoder_nograd"]) / 2}
                            for n, p in passes.items()},
            "training_flops_per_iteration": per_iter,
            "check": {"counted_flops_small": counted, "rule_flops_small": small_rule,
                      "ratio": round(counted / small_rule, 3) if small_rule else None},
        })  # fmt: skip
    return {
        "image_size": list(full),
        "small_size": list(small_spatial),
        "segmenter": segmenter,
        "networks": {
            n: {"gflops_per_image": {k: v / 1e9 for k, v in f["full"].items()}} for n, f in networks.items()
        },
        "phases": phases,
    }


def run_phases(cfg, measured: dict[str, Any], in_channels: int, num_classes: int, task: str, data) -> list:
    """Each phase's iterations for this run: the measurement's, or counted on the run's real split when
    a length depends on the data (``data(cfg)`` → PreparedData)."""
    if not any(p["data_dependent"] for p in measured["phases"]):
        return [p["iterations"] for p in measured["phases"]]
    import torch

    from semiseg.engine.run import build_method_for
    from semiseg.engine.trainer import Trainer

    real = data(cfg)
    lengths = (len(real.labeled), len(real.unlabeled) if real.unlabeled is not None else 0)
    scfg = small_config(cfg, SMALL)
    with tempfile.TemporaryDirectory(prefix="semiseg-cost-") as tmp:
        shape = shape_only_data(scfg, in_channels, num_classes, task, lengths)
        t = Trainer(
            scfg, build_method_for(scfg, in_channels, num_classes), shape, tmp, device=torch.device("cpu")
        )
        return [p["iterations"] for p in phase_lengths(t)]


# --------------------------------------------------------------------------------------- tables
def table_cost(name: str, bundles, data_root: str | None, small: int, cache: dict) -> dict[str, Any]:
    """Cost of every full-mode run of table ``name``, by row (``cache``: measurements by config without
    its seed, shared across tables)."""
    from semiseg.bench.spec import get_table
    from semiseg.config import to_dict
    from semiseg.data import prepare_data
    from semiseg.errors import SemisegError

    table = get_table(name)
    runs_out, rows, seen = [], {}, {}
    for run in full_runs(table):
        row = rows.setdefault(run["row"], {"method": run["method"], "setting": run["setting"], "runs": 0,
                                           "seeds": [], "flops": 0.0, "iterations": []})  # fmt: skip
        row["seeds"].append(run["seed"])
        if run["cfg"] is None:
            row["skipped"] = f"post-processing ({run['postprocess']} of '{run['reuse']}'): no training"
            continue
        cfg = run["cfg"]
        for key in ("init_from", "tuned_with"):
            if key in run:
                row[key] = run[key]
        if run["id"] in seen:  # the same config as an earlier row's run: one cached run
            row.setdefault("shared_with", []).append({"seed": run["seed"], "row": seen[run["id"]]})
            continue
        seen[run["id"]] = run["row"]
        bundle = bundles(cfg.data)
        generic = to_dict(cfg)
        generic["train"] = {k: v for k, v in generic["train"].items() if k not in ("seed", "init")}
        generic["data"]["split"] = {k: v for k, v in generic["data"]["split"].items() if k != "draw"}
        key = json.dumps(
            [generic, bundle.in_channels, bundle.num_classes, bundle.task, small], sort_keys=True
        )
        if key not in cache:
            try:
                try:
                    cache[key] = measure(cfg, bundle.in_channels, bundle.num_classes, bundle.task, small)
                except Unhookable:
                    cache[key] = measure_counted(cfg, bundle.in_channels, bundle.num_classes, bundle.task)
            except (NotImplementedError, SemisegError) as exc:
                cache[key] = {"error": str(exc)}
            if "error" in cache[key]:
                print(f"[{name}] {run['row']}: not estimated: {cache[key]['error']}", flush=True)
                row["not_estimated"] = cache[key]["error"]
                continue
            print(f"[{name}] {run['row']}: "
                  + "; ".join(f"{p['phase']} {p['iterations']} it, "
                              + (f"{p['training_flops_per_iteration'] / 1e9:.3g} GFLOPs counted at full size"
                                 if cache[key].get("counted_at_full_size") else
                                 f"{sum(f['grad'] for f in p['full_passes'].values()):g} / "
                                 f"{sum(f['nograd'] for f in p['full_passes'].values()):g} passes, "
                                 f"check {p['check']['ratio']}") for p in cache[key]["phases"]), flush=True)  # fmt: skip
        m = cache[key]
        if "error" in m:
            row["not_estimated"] = m["error"]
            continue
        iters = run_phases(cfg, m, bundle.in_channels, bundle.num_classes, bundle.task,
                           lambda c, b=bundle: prepare_data(c, data_root, bundle=b))  # fmt: skip
        flops = sum(n * p["training_flops_per_iteration"] for n, p in zip(iters, m["phases"]))
        row["runs"] += 1
        row["flops"] += flops
        row["iterations"].append(iters)
        row["measurement"] = m
        runs_out.append({"row": run["row"], "seed": run["seed"], "id": run["id"], "iterations": iters,
                         "pflops": flops / 1e15})  # fmt: skip
    total = sum(r["flops"] for r in rows.values())
    return {
        "table": name,
        "title": table.title,
        "seeds": table.seeds,
        "rows": [{"row": k, **summary_row(r)} for k, r in rows.items()],
        "runs": runs_out,
        "total": {
            "runs": len(runs_out),
            "pflops": total / 1e15,
            "gpu_hours": {f"{t:g}": gpu_hours(total, t) for t in THROUGHPUTS},
            "rows_not_estimated": [k for k, r in rows.items() if "not_estimated" in r],
        },  # fmt: skip
    }


def summary_row(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in ("flops", "measurement", "iterations")}
    out["pflops"] = r["flops"] / 1e15
    out["gpu_hours"] = {f"{t:g}": gpu_hours(r["flops"], t) for t in THROUGHPUTS}
    if r["iterations"]:
        m = r["measurement"]
        distinct = sorted({tuple(i) for i in r["iterations"]})
        out["image_size"], out["segmenter"], out["networks"] = m["image_size"], m["segmenter"], m["networks"]
        out["counted_at_full_size"] = bool(m.get("counted_at_full_size"))
        out["phases"] = [{k: v for k, v in p.items() if k != "iterations"} for p in m["phases"]]
        out["iterations_per_run"] = [list(d) for d in distinct]  # one entry unless the data sets the length
    return out


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    import torch

    from semiseg.bench.cache import Bundles
    from semiseg.bench.provenance import provenance, write_result

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="*", default=list(DEFAULT_TABLES))
    p.add_argument("--data-root", default=os.environ.get("SEMISEG_DATA", SEMISEG_DATA),
                   help="datasets (channels, classes; item counts only where a length depends on them)")  # fmt: skip
    p.add_argument("--small", type=int, default=SMALL, help="image side at which the passes are counted")
    p.add_argument("--results-dir", default="benchmarks/results")
    p.add_argument("--render", metavar="JSON", help="only re-render the Markdown of a results JSON")
    a = p.parse_args()
    if a.render:
        from semiseg.bench.provenance import provenance_line
        from semiseg.io import atomic_write_text

        path = Path(a.render)
        data = json.loads(path.read_text())
        atomic_write_text(path.with_suffix(".md"), markdown(data, provenance_line(data["provenance"])))
        return
    start = time.perf_counter()
    bundles, cache = Bundles(a.data_root), {}
    tables = [table_cost(name, bundles, a.data_root, a.small, cache) for name in a.tables]
    unique: dict[str, float] = {}
    for t in tables:
        for r in t["runs"]:
            unique[r["id"]] = r["pflops"]
    flops = sum(unique.values()) * 1e15
    results = {
        "tables": tables,
        "total": {"runs": len(unique), "pflops": flops / 1e15,
                  "gpu_hours": {f"{t:g}": gpu_hours(flops, t) for t in THROUGHPUTS},
                  "runs_in_several_tables": sum(len(t["runs"]) for t in tables) - len(unique)},  # fmt: skip
        "throughputs_tflops": list(THROUGHPUTS),
        "rule": "training FLOPs per iteration = n_grad x 3F + n_nograd x F (F = forward FLOPs of one image)",
        "provenance": provenance(
            config={"tables": list(a.tables), "throughputs_tflops": list(THROUGHPUTS), "small": a.small,
                    "runs": "each run's config is semiseg.bench.runner.row_config(table, row, seed, quick=False) "
                            "at this commit; runs[].id = the runner's cache key (semiseg.bench.cache.run_key)"},
            mode="full (estimated, nothing trained)", small_size=[a.small, a.small],
            flop_counter="torch.utils.flop_counter.FlopCounterMode (a multiply-add = 2 FLOPs)",
            torch_threads=torch.get_num_threads(), wall_seconds=round(time.perf_counter() - start, 1)),
    }  # fmt: skip
    text = write_result(Path(a.results_dir) / "full-mode-cost", results, markdown)
    print(text)


# ------------------------------------------------------------------------------------- markdown
def _num(x: float) -> str:
    """3 significant digits below 100, whole numbers above.

    Examples:
        >>> _num(1234.5), _num(99.98), _num(0.01234), _num(12.0)
        ('1,234', '100', '0.0123', '12.0')
    """
    if x == 0:
        return "0"
    digits = 2 - math.floor(math.log10(abs(x)))
    if abs(round(x, max(digits, 0))) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _short(net: str) -> str:
    """A network's short name: ``regularizers.0.regressor.net`` → ``regressor``."""
    parts = [p for p in net.split(".") if p not in ("net",) and not p.isdigit() and p != "regularizers"]
    return parts[-1] if parts else net


def _passes(row: dict[str, Any]) -> str:
    """Passes per iteration, grad / no-grad, of each phase: segmenter-sized networks (the segmenter, its
    teacher or twin) summed, other networks (e.g. a size regressor) named."""
    if row.get("counted_at_full_size"):
        return "not counted (FLOPs counted at full size)"
    seg = row["networks"][row["segmenter"]]["gflops_per_image"] if row.get("segmenter") else None
    out = []
    for p in row["phases"]:
        main, other = [0.0, 0.0], []
        for net, f in p["full_passes"].items():
            if row["networks"][net]["gflops_per_image"] == seg:
                main[0] += f["grad"]
                main[1] += f["nograd"]
            else:
                other.append(f"{_short(net)} {f['grad']:g} / {f['nograd']:g}")
        parts = other if other and not any(main) else [f"{main[0]:g} / {main[1]:g}", *other]
        text = " + ".join(parts)
        out.append(text if len(row["phases"]) == 1 else f"{p['phase']}: {text}")
    return "; ".join(out)


def _rounds(names: list[str]) -> list[tuple[str, list[int]]]:
    """Phase names grouped by kind, in order of first appearance: repeated round phases (``dec1``, ``dec2``,
    ...: a trailing number, 3 or more of a kind) as one group ``"dec1–dec100"``, the others alone; with the
    positions of each group's phases.

    Examples:
        >>> _rounds(["pretrain", "dec1", "labeled1", "dec2", "labeled2", "dec3", "labeled3"])
        [('pretrain', [0]), ('dec1–dec3', [1, 3, 5]), ('labeled1–labeled3', [2, 4, 6])]
    """
    import re

    kinds: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        base = re.sub(r"\d+$", "", name)
        kinds.setdefault(base if base != name else name, []).append(i)
    out = []
    for where in kinds.values():
        if len(where) >= 3:
            out.append((f"{names[where[0]]}–{names[where[-1]]}", where))
        else:
            out += [(names[i], [i]) for i in where]
    return sorted(out, key=lambda g: g[1][0])


def _iterations(row: dict[str, Any]) -> str:
    names = [p["phase"] for p in row["phases"]]
    texts = []
    for its in row["iterations_per_run"]:
        if len(its) == 1:
            texts.append(f"{its[0]:,}")
            continue
        parts = []
        for label, where in _rounds(names):
            values = {its[i] for i in where}
            if len(where) == 1:
                parts.append(f"{its[where[0]]:,} ({label})")
            elif len(values) == 1:
                parts.append(f"{len(where)} × {its[where[0]]:,} ({label})")
            else:
                parts.append(f"{sum(its[i] for i in where):,} ({label}, in all)")
        texts.append(" + ".join(parts))
    return " or ".join(texts)


def _gflops(row: dict[str, Any]) -> str:
    if row.get("counted_at_full_size"):
        return "–"
    nets = row["networks"]
    seg = row.get("segmenter")
    parts = []
    if seg:
        patch = " per patch" if len(row.get("image_size", ())) == 3 else ""
        parts.append(f"{sum(nets[seg]['gflops_per_image'].values()):.2f}{patch}")
    for net, v in nets.items():
        if seg and v["gflops_per_image"] == nets[seg]["gflops_per_image"]:
            continue
        parts.append(f"{_short(net)} {sum(v['gflops_per_image'].values()):.2f}")
    return "; ".join(parts)


def _cell(text: str) -> str:
    """``text`` inside a Markdown table cell (pipes escaped)."""
    return text.replace("|", "\\|")


def markdown(results: dict[str, Any], provenance_line: str) -> str:
    """The Markdown of a results dict: one table per benchmark table, the totals and the notes."""
    t5, t20 = (f"{t:g}" for t in results["throughputs_tflops"])
    lines = ["# Full-mode compute cost of the benchmark tables (estimated, nothing trained)", ""]
    flagged, checks, incomplete = [], [], []
    for table in results["tables"]:
        lines += [
            f"## {table['table']}: {table['title']}",
            "",
            f"Full-mode seeds {table['seeds']}; runs = trained runs of the row (post-processing rows train nothing).",
            "",
            "| row | setting | runs | iterations per run | passes per iteration, grad / no-grad "
            "| GFLOPs per forward image | PFLOPs (all runs) "
            f"| GPU-h at {t5} TFLOP/s | GPU-h at {t20} TFLOP/s | check |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in table["rows"]:
            if "skipped" in r:
                lines.append(
                    f"| {_cell(r['method'])} | {_cell(r['setting'])} | 0 | – | – | – | 0 | 0 | 0 "
                    f"| {_cell(r['skipped'])} |"
                )
                continue
            note = ""
            if r.get("shared_with"):
                note = f" (+{len(r['shared_with'])} = runs of {_cell(r['shared_with'][0]['row'])}, counted there)"
            if "phases" not in r:
                missing = f"**not estimated**: {_cell(r['not_estimated'])}" if "not_estimated" in r else ""
                lines.append(
                    f"| {_cell(r['method'])} | {_cell(r['setting'])} | 0{note} | – | – | – | 0 | 0 | 0 | {missing} |"
                )
                continue
            ratios = [p["check"]["ratio"] for p in r["phases"] if p["check"]["ratio"] is not None]
            checks += ratios
            for label, where in _rounds([p["phase"] for p in r["phases"]]):
                p = r["phases"][where[0]]  # a round's phases share their flags
                flags = [k for k in ("data_dependent", "planned", "adaptive") if p[k]]
                if flags:
                    flagged.append(f"{table['table']} / {r['row']} / {label}: {', '.join(flags)}")
            start = ""
            if r.get("init_from"):
                source = r["init_from"].removesuffix(f" | {r['setting']}")
                start = f" (from {_cell(source)})"
            lines.append(
                f"| {_cell(r['method'])}{start} | {_cell(r['setting'])} | {r['runs']}{note} | {_iterations(r)} "
                f"| {_passes(r)} "
                f"| {_gflops(r)} | {_num(r['pflops'])} | {_num(r['gpu_hours'][t5])} | {_num(r['gpu_hours'][t20])} "
                f"| {', '.join(f'{x:.2f}' for x in ratios) or '–'} |"
            )
        tot = table["total"]
        if tot["rows_not_estimated"]:
            incomplete.append(f"{table['table']}: {'; '.join(tot['rows_not_estimated'])}")
        lines += [
            f"| **total** | | **{tot['runs']}** | | | | **{_num(tot['pflops'])}** | **{_num(tot['gpu_hours'][t5])}** "
            f"| **{_num(tot['gpu_hours'][t20])}** | |",
            "",
        ]
    tot = results["total"]
    shared = tot["runs_in_several_tables"]
    lines += [
        "## Total",
        "",
        f"**{tot['runs']} runs, {_num(tot['pflops'])} PFLOPs: {_num(tot['gpu_hours'][t5])} GPU-hours at {t5} "
        f"TFLOP/s, {_num(tot['gpu_hours'][t20])} at {t20} TFLOP/s** (tables: "
        f"{', '.join(t['table'] for t in results['tables'])}; a run that several tables share is counted once"
        + (f": {shared} such run(s))." if shared else ").")
        + (
            f" **Incomplete**: rows not estimated ({' / '.join(_cell(x) for x in incomplete)})."
            if incomplete
            else ""
        ),
        "",
        "## How this is estimated",
        "",
        "- **Iterations**: each phase's epochs (its own or `train.epochs`) × iterations per epoch "
        "(`train.iters_per_epoch`, else one pass over the phase's first stream, e.g. SSLDEC's unlabeled "
        "`dec` rounds), as the trainer counts them before any epoch plan; warm-up, pre-training and "
        "regulariser phases (e.g. the size regressor's) each count. Iterations a method's epoch plan fixes "
        "from the config alone are taken from it (`Method.planned_iterations`): SSLDEC's `dec` phases run "
        "`method.dec_iters` per round when set (ACDC: 200) and none with `method.targets: none` (the control "
        'rows "supervised, SSLDEC\'s labeled schedule"). Other plans can still change the length (listed '
        "under *Uncertain lengths*): SSLDEC's rounds stop early on their thresholds, and its image-mode `dec` "
        "phases pass over a class-balanced subset.",
        "- **Passes**: images through each network per iteration, with gradient (grad) and without (no-grad), "
        "counted with forward hooks on each network's first encoder block and its head during one iteration of "
        "the run's method through the trainer's `train_step`, on synthetic batches with the run's batch size per "
        "stream, supervision and views (strong views, CutMix boxes) but at "
        f"{results['provenance']['small_size'][0]}² pixels. A decoder-only call (UniMatch's feature perturbation) "
        "counts half a pass here; its FLOPs are the decoder's alone. Segmenter-sized networks (student, EMA "
        "teacher, CPS's second network) are summed; other networks (e.g. a size regressor) are named.",
        "- **FLOPs per forward image** `F`: `torch.utils.flop_counter.FlopCounterMode` on one image at the full "
        "image size on the meta device (a multiply-add = 2 FLOPs; convolutions and matrix products only: "
        "normalisation, activations, pooling, losses and optimizer updates are not counted).",
        "- **Networks without hooks** (IODA's MLP, SSLDEC's classification network on moons and MNIST, the "
        "shape prior's autoencoder, the translation networks and critics; rows whose passes say \"FLOPs "
        'counted at full size"): FlopCounterMode counts one iteration of every phase at the full training '
        "size (real compute on the CPU, synthetic batches of the full size with the run's batch size, "
        "supervision and views), forward and backward, with no rule and no extrapolation; the iteration's "
        "passes are not counted. A repeated round phase (same kind, streams, views, optimizer settings and "
        "trained tensors) is counted at its first round. Networks that run only after a method's sweep are "
        "missed by both counts (per-pixel SSLDEC's frozen teacher in the `dec` phases: about +33 % of those "
        "phases' FLOPs, a few % of the run).",
        "- **3D models**: the item is a patch (`data.patch_size`); passes are counted at patches of the same "
        "depth and the small in-plane size, FLOPs per image at the full patch.",
        "- **Approximation**: training FLOPs per iteration ≈ n_grad × 3F + n_nograd × F (a backward pass ≈ twice "
        "its forward), per network and for encoder and decoder apart. **check** = the FLOPs FlopCounterMode "
        "counts in the same iteration (forward and backward) at the small size over this rule's estimate at "
        "that size, per phase (fully convolutional: both scale with the pixel count); values near 1 confirm the "
        "rule and that no network that runs in a step escaped the hooks (slightly below 1: the first layer "
        "needs no input gradient).",
        f"- **GPU-hours** = FLOPs / ({t5} or {t20} TFLOP/s × 3600 s). These throughputs are **assumptions, not "
        "measurements**: sustained fp32 / TF32 training throughput of one modern data-centre GPU on small "
        "UNets (width 16, batches of 12–24 images of 128²–256²) rarely exceeds them (such networks are bound "
        "by memory traffic and kernel launches, far from peak); data loading and augmentation on the CPU can "
        "be the bottleneck instead. Larger networks (translation's width-128 critics, IODA's 2048-unit dense "
        "layers, 3D UNets) may run nearer peak, so their GPU-hours may be overstated.",
        "- **Not counted**: validation and test evaluation (forward passes over the validation split every "
        "`val_every` epochs and the test split once: by a rough count about 1–2 % of a supervised run's training "
        "FLOPs here, e.g. ACDC's 210 validation slices 60 times against 30,000 × 12 × 3 image-forwards, the "
        "horses' 16 validation images 30 times against 600 × 16 × 3; less for the semi-supervised methods), "
        "MRF / ensemble post-processing, the tuning of post-processing weights, data loading, and reruns of "
        "interrupted runs; passes outside the training step: epoch plans' sweeps (SSLDEC: every round sweeps "
        "the unlabeled set and every retraining epoch the labeled one, about +29 % at 100 MNIST labels), the "
        "adaptive learning rate's criterion (IODA: a second, gradient-free pass over each epoch's batches, "
        "about +35–40 %) and its rejected, rerun epochs.",
    ]
    if flagged:
        lines.append("- **Uncertain lengths** (data-dependent lengths counted on the real split; an epoch plan or "
                     "adaptive rate may shorten or repeat epochs): " + "; ".join(flagged) + ".")  # fmt: skip
    if checks:
        lo, hi = min(checks), max(checks)
        bad = [x for x in checks if not CHECK_RANGE[0] <= x <= CHECK_RANGE[1]]
        lines.append(f"- Check ratios range {lo:.2f}–{hi:.2f}" + (
            f"; {len(bad)} outside {CHECK_RANGE[0]}–{CHECK_RANGE[1]}: a network without hooks or a pass "
            "that is not an image through a network." if bad else "."))  # fmt: skip
    lines += ["", provenance_line]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
