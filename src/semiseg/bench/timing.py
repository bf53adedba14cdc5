"""Timing: training throughput, and the step time of one method over another.

Every comparison here is measured interleaved in one process: rounds alternate A, B, A, B, ...,
each round runs several steps, and the medians over rounds are compared, so a change of machine
load (other processes on a shared machine, CPU frequency) hits both sides alike. Ratios are
rounded to 2 decimals.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: rounds (each side once per round) and steps per round of :func:`step_time_ratio`
ROUNDS, STEPS_PER_ROUND, WARMUP_ROUNDS = 7, 3, 1


def interleaved(
    runs: dict[str, Callable[[], Any]], rounds: int, warmup: int = WARMUP_ROUNDS
) -> dict[str, list[float]]:
    """Seconds of each call of ``runs[name]()``, the names taking turns: A, B, A, B, ...

    ``warmup`` untimed rounds come first. Returns ``{name: [seconds of round 1, ..., round n]}``.

    Examples:
        >>> times = interleaved({"a": lambda: None, "b": lambda: None}, rounds=5)
        >>> sorted(times), len(times["a"])
        (['a', 'b'], 5)
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` rounded to 2 decimals (the precision every ratio is reported at)."""
    return round(numerator / denominator, 2)


# ------------------------------------------------------------------------------------ throughput
_THROUGHPUT_SCRIPT = """
import json, resource, time, torch
from semiseg.config import ModelConfig
from semiseg.losses.supervised import masked_cross_entropy
from semiseg.models import build_model
torch.manual_seed(0)
cfg = ModelConfig(**json.loads({model!r}))
m = build_model(cfg, 1, 4, image_size=[128, 128]); opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.rand(16, 1, 128, 128)
with torch.no_grad():  # an image-level model (class scores [B, K]) takes one label per image
    image_level = m.eval()(x[:1]).dim() == 2
m.train(); y = torch.randint(0, 4, (16,) if image_level else (16, 128, 128))
for i in range({warmup} + {steps}):
    if i == {warmup}: t = time.perf_counter()
    opt.zero_grad(); masked_cross_entropy(m(x), y).backward(); opt.step()
ips = 16 * {steps} / (time.perf_counter() - t)
try:  # VmHWM belongs to this process's own address space; ru_maxrss would include the forking parent's
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
except OSError:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"images_per_second": ips, "peak_rss_mib": rss}}))
"""


def measure_throughput(model: dict[str, Any], steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Training images/s of a plain PyTorch loop and its peak resident memory at 128x128, batch 16, CPU,
    in a fresh process (a table's provenance: how fast the machine trains this model)."""
    code = _THROUGHPUT_SCRIPT.format(model=json.dumps(model), steps=steps, warmup=warmup)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    record = {"image_size": [128, 128], "batch_size": 16, "device": "cpu", "model": model}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:  # provenance only: a table is still written, saying why this is missing
        last = (res.stderr.strip().splitlines() or ["no error output"])[-1]
        return {**record, "images_per_second": None, "peak_rss_mib": None, "note": f"not measured: {last}"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        **record,
        "images_per_second": round(out["images_per_second"], 2),
        "peak_rss_mib": round(out["peak_rss_mib"], 1),
    }


# ------------------------------------------------------------------------------- step-time ratio
class TrainerSteps:
    """``steps`` iterations of one phase of a run, through the trainer's own ``train_step``.

    The batches come from the trainer's loader (drawn once, outside the timing); each call of the
    object runs them all, advancing the trainer's step counters as training does.
    """

    def __init__(self, cfg, out: Path, *, phase: str | None, steps: int, data_root=None, bundle=None):
        import torch

        from semiseg.data import prepare_data
        from semiseg.engine.checkpoint import seed_everything
        from semiseg.engine.run import build_method_for
        from semiseg.engine.trainer import Trainer

        seed_everything(cfg.train.seed)
        data = prepare_data(cfg, data_root, bundle=bundle)
        method = build_method_for(cfg, data.bundle.in_channels, data.bundle.num_classes)
        t = Trainer(cfg, method, data, out, device=torch.device("cpu"))
        names = [p.name for p in t.phases]
        if phase is not None and phase not in names:
            raise ValueError(
                f"step_time_ratio: method '{cfg.method['name']}' has no phase '{phase}' ({names})"
            )
        t.phase_index = names.index(phase) if phase is not None else len(names) - 1
        self.trainer, self.phase = t, t.phases[t.phase_index]
        self.optimizers, self.schedulers = t.build_optimizers(self.phase)
        t.method.train()
        t.method.on_phase_start(self.phase.name)
        specs = t.stream_specs(self.phase)
        streams = tuple(s.name for s in specs)
        loaders = [t.loader(s, 0, steps, self.phase) for s in specs]
        self.batches = [{s: t.to_batch(b) for s, b in zip(streams, bs)} for bs in zip(*loaders)]
        self.images_per_step = sum(len(b) for b in self.batches[0].values())
        self.streams = list(streams)

    def __call__(self) -> None:
        t = self.trainer
        for batch in self.batches:
            t.train_step(batch, self.phase, self.optimizers, self.schedulers)
            t.global_step += 1
            t.phase_step += 1


def with_batch_size(cfg, batch_size: int):
    """``cfg`` with ``train.batch_size`` set to ``batch_size`` (a copy; ``cfg`` is unchanged)."""
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))


def step_time_ratio(
    method_cfg,
    baseline_cfg,
    *,
    phase: str | None = None,
    data_root: str | None = None,
    bundle=None,
    rounds: int = ROUNDS,
    steps: int = STEPS_PER_ROUND,
    same_images: bool = True,
) -> dict[str, Any]:
    """Wall time of one training iteration of ``method_cfg`` over one of ``baseline_cfg`` (CPU).

    Both run through :meth:`Trainer.train_step` (every optimizer of the phase, the method's hooks)
    on batches of their own trainer's loader. ``phase`` selects the method's phase (default: its
    last one); the baseline (a one-stream method, e.g. supervised) runs its last phase. With
    ``same_images`` the baseline's ``train.batch_size`` is set to the number of images a method
    iteration draws over all its streams (e.g. 8 labeled + 8 unlabeled → 16), so the ratio is the
    cost of the method's extra work on the same amount of data.

    Rounds alternate method, baseline, method, ... (``rounds`` each, after one warm-up round), each
    round ``steps`` iterations; the ratio is of the median seconds per iteration, to 2 decimals.
    """
    with tempfile.TemporaryDirectory(prefix="semiseg-step-ratio-") as tmp:
        method = TrainerSteps(method_cfg, Path(tmp) / "method", phase=phase, steps=steps,
                              data_root=data_root, bundle=bundle)  # fmt: skip
        if same_images:
            baseline_cfg = with_batch_size(baseline_cfg, method.images_per_step)
        baseline = TrainerSteps(baseline_cfg, Path(tmp) / "baseline", phase=None, steps=steps,
                                data_root=data_root, bundle=bundle)  # fmt: skip
        sides = {"method": method, "baseline": baseline}
        times = interleaved(sides, rounds)
    per_step = {k: [t / steps for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in per_step.items()}
    image_size = list(method_cfg.data.image_size)
    return {
        "ratio": ratio(med["method"], med["baseline"]),
        "measured_with": "Trainer.train_step",
        "method": dict(method_cfg.method),
        "baseline": dict(baseline_cfg.method),
        "phase": sides["method"].phase.name,
        "streams": sides["method"].streams,
        "images_per_step": {k: s.images_per_step for k, s in sides.items()},
        "image_size": image_size,
        "seconds_per_step": {k: round(v, 4) for k, v in med.items()},
        "rounds": rounds,
        "steps_per_round": steps,
        "round_seconds_per_step": {k: [round(t, 4) for t in v] for k, v in per_step.items()},
        "device": "cpu",
    }


# --------------------------------------------------------------------------------- pass budget
def segmenter_networks(method) -> dict[str, Any]:
    """The method's segmentation networks (student, teacher, second network, ...): every submodule
    with the ``encode`` / ``decode`` split and an ``encoder`` / ``head`` to hook, by name."""
    return {
        name: m
        for name, m in method.named_modules()
        if hasattr(m, "encode") and hasattr(m, "decode") and hasattr(m, "encoder") and hasattr(m, "head")
    }


class PassCounter:
    """Counts the images each segmentation network processes, split by whether autograd records them
    and by the batch size of the call.

    A forward hook on a network's first encoder block counts encoder passes, one on its head decoder
    passes (feature-perturbation streams decode without encoding again). One full pass = one encoder
    plus one decoder pass; :attr:`full_passes` sums halves of each, :attr:`passes_by_batch_size` the
    same per batch size of the calls.

    Attributes:
        images: images per ``(part, "grad" | "nograd", batch size of the call)``, e.g.
            ``("encoder", "grad", 16)``.
    """

    def __init__(self, method):
        import torch

        self.images: dict[tuple[str, str, int], int] = {}
        self.handles = []

        def hook(part: str):
            def count(module, inputs, output):
                grad = "grad" if torch.is_grad_enabled() and output.requires_grad else "nograd"
                size = int(output.shape[0])
                key = (part, grad, size)
                self.images[key] = self.images.get(key, 0) + size

            return count

        for net in segmenter_networks(method).values():
            self.handles.append(net.encoder[0].register_forward_hook(hook("encoder")))
            self.handles.append(net.head.register_forward_hook(hook("decoder")))

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    @property
    def counts(self) -> dict[str, int]:
        """Images per ``"{encoder|decoder}_{grad|nograd}"`` (all batch sizes)."""
        out = {"encoder_grad": 0, "encoder_nograd": 0, "decoder_grad": 0, "decoder_nograd": 0}
        for (part, grad, _), n in self.images.items():
            out[f"{part}_{grad}"] += n
        return out

    @property
    def full_passes(self) -> dict[str, float]:
        c = self.counts
        return {
            "grad": (c["encoder_grad"] + c["decoder_grad"]) / 2,
            "nograd": (c["encoder_nograd"] + c["decoder_nograd"]) / 2,
        }

    @property
    def passes_by_batch_size(self) -> dict[str, dict[int, float]]:
        """Full passes per batch size of the calls: ``(encoder images + decoder images) / 2`` at each
        size, e.g. ``{"grad": {8: 8.0, 16: 16.0}, "nograd": {8: 8.0}}`` (sizes ascending). A decoder-only
        call counts half a pass at its own size; the values sum to :attr:`full_passes`."""
        out: dict[str, dict[int, float]] = {"grad": {}, "nograd": {}}
        for (_, grad, size), n in sorted(self.images.items(), key=lambda kv: kv[0][2]):
            out[grad][size] = out[grad].get(size, 0.0) + n / 2
        return out


def _inference(segmenter, images, steps: int) -> Callable[[], None]:
    """``steps`` eval-mode forwards of ``segmenter`` on ``images`` without gradients (train mode after)."""
    import torch

    def run() -> None:
        segmenter.eval()
        with torch.no_grad():
            for _ in range(steps):
                segmenter(images)
        segmenter.train()

    return run


def _batch_of(images, size: int):
    """``images`` repeated (or truncated) along the batch dimension to ``size`` images."""
    import torch

    return torch.cat([images] * math.ceil(size / len(images)))[:size]


def pass_budget_ratio(
    method_cfg,
    baseline_cfg,
    *,
    phase: str | None = None,
    data_root: str | None = None,
    bundle=None,
    rounds: int = ROUNDS,
    steps: int = STEPS_PER_ROUND,
) -> dict[str, Any]:
    """A method's iteration time against the work it must do (issue 11's pass budget).

    One iteration of ``method_cfg`` (through :meth:`Trainer.train_step`) sends ``n_grad(b)`` images
    through its networks with gradients and ``n_nograd(b)`` without, in calls of batch size ``b``
    (counted with hooks, per iteration). Each pass is priced at the per-image cost of its own batch
    size: ``t_grad(b)`` = seconds per image of a supervised training iteration (``baseline_cfg``, a
    one-stream method, with ``train.batch_size = b``) and ``t_nograd(b)`` = seconds per image of a
    no-grad forward of the segmenter in eval mode on ``b`` images. The budget is
    ``Σ_b n_grad(b)·t_grad(b) + Σ_b n_nograd(b)·t_nograd(b)``; the ratio (method / budget) shows
    wasted passes and per-step overhead. Both prices are also measured at the labeled batch size
    (``baseline_cfg.train.batch_size``), which gives the single-price figures
    (``*_at_labeled_batch``: every pass priced at the labeled batch size). The method, one baseline
    per grad batch size and one inference per no-grad batch size are measured interleaved in one
    run of :func:`interleaved`; medians over rounds, ratios to 2 decimals. The paired figures
    (``ratio_to_budget_paired``, with the quartiles of the per-round ratios) divide each round's
    method time by the budget priced from that round's own measurements and take the median over
    rounds, so that a slow drift of the machine's speed cancels within a round.
    """
    labeled = baseline_cfg.train.batch_size
    with tempfile.TemporaryDirectory(prefix="semiseg-pass-budget-") as tmp:

        def trainer_steps(cfg, name: str, phase: str | None) -> TrainerSteps:
            return TrainerSteps(
                cfg, Path(tmp) / name, phase=phase, steps=steps, data_root=data_root, bundle=bundle
            )

        method = trainer_steps(method_cfg, "method", phase)
        counter = PassCounter(method.trainer.method)
        try:
            method.trainer.train_step(method.batches[0], method.phase, method.optimizers, method.schedulers)
        finally:
            counter.close()
        passes = counter.passes_by_batch_size
        grad_sizes = sorted({labeled, *passes["grad"]})
        nograd_sizes = sorted({labeled, *passes["nograd"]})
        baselines = {
            b: trainer_steps(with_batch_size(baseline_cfg, b), f"baseline-{b}", None) for b in grad_sizes
        }
        for b, base in baselines.items():
            if base.images_per_step != b:
                raise ValueError(
                    f"pass_budget_ratio: the baseline '{baseline_cfg.method['name']}' draws "
                    f"{base.images_per_step} images per iteration at batch size {b}; it must be a one-stream method"
                )
        segmenter = baselines[labeled].trainer.method.segmenter
        images = next(iter(baselines[labeled].batches[0].values())).image
        sides: dict[str, Callable[[], Any]] = {"method": method}
        sides.update({f"grad {b}": baselines[b] for b in grad_sizes})
        sides.update(
            {f"nograd {b}": _inference(segmenter, _batch_of(images, b), steps) for b in nograd_sizes}
        )
        times = interleaved(sides, rounds)
    med = {k: statistics.median(v) / steps for k, v in times.items()}
    t_grad = {b: med[f"grad {b}"] / b for b in grad_sizes}
    t_nograd = {b: med[f"nograd {b}"] / b for b in nograd_sizes}
    budget = sum(n * t_grad[b] for b, n in passes["grad"].items()) + sum(
        n * t_nograd[b] for b, n in passes["nograd"].items()
    )
    total = counter.full_passes
    budget_labeled = total["grad"] * t_grad[labeled] + total["nograd"] * t_nograd[labeled]
    # the same budget from each round's own measurements: a drift of the machine's speed during the
    # run moves a round's method time and its budget together
    round_ratios = []
    for i in range(rounds):
        g = {b: times[f"grad {b}"][i] / steps / b for b in grad_sizes}
        ng = {b: times[f"nograd {b}"][i] / steps / b for b in nograd_sizes}
        r_budget = sum(n * g[b] for b, n in passes["grad"].items()) + sum(
            n * ng[b] for b, n in passes["nograd"].items()
        )
        round_ratios.append(times["method"][i] / steps / r_budget)
    quartiles = statistics.quantiles(round_ratios, n=4) if rounds > 1 else [round_ratios[0]] * 3
    return {
        "ratio_to_budget": ratio(med["method"], budget),
        "ratio_to_budget_paired": round(statistics.median(round_ratios), 2),
        "ratio_to_budget_paired_quartiles": [round(quartiles[0], 2), round(quartiles[2], 2)],
        "round_ratios_to_budget": [round(r, 3) for r in round_ratios],
        "passes_per_step": total,
        "passes_per_batch_size": passes,
        "pass_counts": counter.counts,
        "labeled_batch_size": labeled,
        "seconds_per_step": round(med["method"], 4),
        "budget_seconds_per_step": round(budget, 4),
        "t_grad_per_image": {b: round(t, 5) for b, t in t_grad.items()},
        "t_nograd_per_image": {b: round(t, 5) for b, t in t_nograd.items()},
        "budget_seconds_at_labeled_batch": round(budget_labeled, 4),
        "ratio_to_budget_at_labeled_batch": ratio(med["method"], budget_labeled),
        "method": dict(method_cfg.method),
        "phase": method.phase.name,
        "image_size": list(method_cfg.data.image_size),
        "rounds": rounds,
        "steps_per_round": steps,
        "measured_with": "Trainer.train_step; hooks on each network's first encoder block and head",
        "device": "cpu",
    }
