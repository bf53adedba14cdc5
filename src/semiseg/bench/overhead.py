"""Engine overhead: the trainer's training throughput against a plain PyTorch loop.

Both train the same model (:class:`~semiseg.config.ModelConfig`, e.g. ``unet`` width 16, depth 4,
batch norm) with Adam and masked cross-entropy on the same data tensors (the trainer's labeled
training set), on the CPU, in one process:

- **plain**: the ~15-line loop of :func:`plain_epoch` over random batches of those tensors;
- **trainer**: one real epoch of :class:`~semiseg.engine.trainer.Trainer` (its loader, ``to_batch``,
  ``train_step``, the finite-loss check, step logging, the epoch record, ``last.pt`` and the epoch
  logs), validation excluded (the phase runs with ``validate=False``).

Each side runs once in NCHW and once in channels-last memory format (``train.channels_last``).
Rounds cycle through the sides (plain, trainer, plain channels-last, trainer channels-last, plain,
...), one epoch of ``iters`` iterations per side and round; images/s are medians over rounds.
``benchmarks/engine_overhead.py`` writes the results.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiseg.bench.timing import interleaved, ratio

#: the engine's throughput over the plain loop's that the engine is expected to reach
BAR = 0.95


@dataclass
class Setup:
    """What both sides train. The defaults are the benchmark's; tests shrink them."""

    image_size: int = 128
    batch_size: int = 16
    iters: int = 10  #: iterations per epoch (= per round and side)
    num_images: int = 200  #: generated shapes images (80% labeled training items)
    classes: int = 3  #: foreground shapes (+ background)
    width: int = 16
    depth: int = 4
    norm: str = "batch"
    lr: float = 1e-3
    seed: int = 0

    def config(self, channels_last: bool):
        """The trainer's RunConfig: supervised cross-entropy, Adam, no augmentation, no schedule."""
        from semiseg.config import build_config

        recipe = {
            "data": {
                "dataset": "shapes",
                "image_size": [self.image_size, self.image_size],
                "num_images": self.num_images,
                "shapes_classes": self.classes,
                "split": {"unlabeled": "none", "val_fraction": 0.1, "test_fraction": 0.1, "seed": self.seed},
            },
            "model": {"name": "unet", "width": self.width, "depth": self.depth, "norm": self.norm},
            "method": {"name": "supervised", "ce_weight": 1.0, "dice_weight": 0.0},
            "train": {
                "batch_size": self.batch_size,
                "iters_per_epoch": self.iters,
                "optimizer": "adam",
                "lr": self.lr,
                "scheduler": "none",
                "seed": self.seed,
                "device": "cpu",
                "progress": False,
                "plots": False,
                "channels_last": channels_last,
            },
        }
        return build_config(recipe, [], source="engine-overhead")


def plain_epoch(
    images, masks, model_cfg, num_classes: int, setup: Setup, channels_last: bool
) -> Callable[[], Any]:
    """A plain PyTorch training loop over ``images`` / ``masks``; returns a function running one epoch."""
    import torch
    import torch.nn.functional as F

    from semiseg.core import IGNORE_INDEX
    from semiseg.models import build_model

    torch.manual_seed(setup.seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_cfg, images.shape[1], num_classes).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    gen = torch.Generator().manual_seed(setup.seed)
    losses: list[float] = []

    def epoch() -> None:
        for _ in range(setup.iters):
            idx = torch.randint(len(images), (setup.batch_size,), generator=gen)
            x, y = images[idx].contiguous(memory_format=fmt), masks[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
            loss.backward()
            opt.step()
            losses.append(loss.item())

    epoch.losses = losses  # type: ignore[attr-defined]
    return epoch


def trainer_epoch(setup: Setup, channels_last: bool, out: Path):
    """A :class:`Trainer` on ``setup``; returns (function running one real epoch without validation,
    the trainer)."""
    import torch
    from tqdm.auto import tqdm

    from semiseg.data import prepare_data
    from semiseg.engine.checkpoint import seed_everything
    from semiseg.engine.run import build_method_for
    from semiseg.engine.trainer import Trainer

    cfg = setup.config(channels_last)
    seed_everything(cfg.train.seed)
    data = prepare_data(cfg)
    method = build_method_for(cfg, data.bundle.in_channels, data.bundle.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, method, data, out, device=torch.device("cpu"))
    phase = dataclasses.replace(trainer.phases[0], validate=False)
    opts, scheds = trainer.build_optimizers(phase)
    trainer.method.train()
    bar = tqdm(disable=True)

    def epoch() -> None:
        trainer.train_epoch(phase, opts, scheds, setup.iters, bar)

    return epoch, trainer


def measure(setup: Setup, rounds: int, out: Path, warmup: int = 1) -> dict[str, Any]:
    """Interleaved rounds of the four sides; images/s (medians over rounds) and the ratios."""
    import torch

    sides: dict[str, Callable[[], Any]] = {}
    trainers = {}
    for cl in (False, True):
        fmt = "channels_last" if cl else "nchw"
        epoch, trainer = trainer_epoch(setup, cl, out / f"trainer-{fmt}")
        data = trainer.data.labeled  # the very tensors the trainer's loader serves
        sides[f"plain/{fmt}"] = plain_epoch(data.images, data.masks, trainer.cfg.model,
                                            data.num_classes, setup, cl)  # fmt: skip
        sides[f"trainer/{fmt}"] = epoch
        trainers[fmt] = trainer
    loop_seconds = {fmt: [] for fmt in trainers}  # the trainer's own clock: the loop without last.pt / logs

    def timed_trainer(fmt: str, run: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> None:
            before = trainers[fmt].train_seconds
            run()
            loop_seconds[fmt].append(trainers[fmt].train_seconds - before)

        return call

    for fmt in trainers:
        sides[f"trainer/{fmt}"] = timed_trainer(fmt, sides[f"trainer/{fmt}"])
    times = interleaved(sides, rounds, warmup=warmup)
    images = setup.iters * setup.batch_size
    result: dict[str, Any] = {"sides": {}}
    for name, secs in times.items():
        result["sides"][name] = {
            "images_per_second": round(images / statistics.median(secs), 2),
            "round_images_per_second": [round(images / s, 2) for s in secs],
        }
    for fmt, secs in loop_seconds.items():
        secs = secs[warmup:]
        result["sides"][f"trainer/{fmt}"]["loop_images_per_second"] = round(
            images / statistics.median(secs), 2
        )
    ips = {k: v["images_per_second"] for k, v in result["sides"].items()}
    result["ratios"] = {
        "trainer/plain, NCHW": ratio(ips["trainer/nchw"], ips["plain/nchw"]),
        "trainer/plain, channels-last": ratio(ips["trainer/channels_last"], ips["plain/channels_last"]),
        "channels-last/NCHW, plain": ratio(ips["plain/channels_last"], ips["plain/nchw"]),
        "channels-last/NCHW, trainer": ratio(ips["trainer/channels_last"], ips["trainer/nchw"]),
    }
    result["bar"] = {"trainer/plain at least": BAR,
                     "met": {k: v >= BAR for k, v in result["ratios"].items() if k.startswith("trainer/plain")}}  # fmt: skip
    result["images_per_round"] = images
    result["torch_threads"] = torch.get_num_threads()
    return result


def profile(setup: Setup, channels_last: bool, out: Path, epochs: int = 3, top: int = 25) -> str:
    """cProfile of ``epochs`` trainer epochs (after one warm-up epoch): the top functions by own time
    and by cumulative time, as text."""
    import cProfile
    import io
    import pstats

    epoch, _ = trainer_epoch(setup, channels_last, out)
    epoch()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(epochs):
        epoch()
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()
