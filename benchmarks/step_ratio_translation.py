"""Step time of presence/absence translation over seg-only on the same images (CPU), with FLOPs.

Both sides run the trainer's own ``train_step`` on batches of their own trainer's loader: the
translation method's iteration (generator step, then critic step) on ``train.batch_size`` labeled +
present + absent images; seg-only (the same encoder and residual decoder in segmentation mode,
Dice only) on one labeled batch of as many images. For the quick architecture (quarter widths,
the table's quick runs) and the paper's (appendix A, batch 20). Rounds alternate translation,
seg-only, translation, ... (``--rounds``, each ``--steps`` iterations); the ratio of the medians
is printed to 2 decimals. The FLOPs of one iteration of each side (forward and backward, counted by
``torch.utils.flop_counter.FlopCounterMode``) are split by network: the two multi-scale critics
are the bulk of the translation step's. Writes ``benchmarks/results/translation-step-ratio.{json,md}``.

    python benchmarks/step_ratio_translation.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _flops(fn) -> float:
    """GFLOPs of ``fn()`` (forward and backward ops it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def step_flops(steps) -> dict[str, float]:
    """GFLOPs of one iteration of a :class:`~semiseg.bench.timing.TrainerSteps` (forward + backward;
    optimizer updates not counted) and, for the translation method, of its critics' part alone: in
    the generator step each critic scores one batch of translations (forward and backward to the
    images), in the critic step one batch of real and one of translated images (forward and
    backward to the weights)."""
    import torch

    t, batch = steps.trainer, steps.batches[0]
    out = {"total": _flops(lambda: t.train_step(batch, steps.phase, steps.optimizers, steps.schedulers))}
    method = t.method
    if hasattr(method, "disc_a"):
        b = len(batch["present"].image)
        fake = torch.rand(b, *batch["present"].image.shape[1:], requires_grad=True)
        both = torch.rand(2 * b, *fake.shape[1:])

        def critics() -> None:
            for disc in (method.disc_a, method.disc_p):
                disc(fake).sum().backward()
                disc(both).sum().backward()

        out["critics"] = _flops(critics)
    return out


def configs(cfg):
    """(translation, seg-only) configs of one architecture."""
    seg = dataclasses.replace(cfg, method={**cfg.method, "objective": "segmentation"})
    return cfg, seg


def main() -> None:
    import tempfile

    from semiseg.bench.provenance import provenance, provenance_line
    from semiseg.bench.timing import TrainerSteps, step_time_ratio, with_batch_size
    from semiseg.config import build_config, load_yaml
    from semiseg.data import load_bundle
    from semiseg.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="translation-mnist")
    p.add_argument("--data-root")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--paper-rounds", type=int, default=3, help="rounds for the paper's (slow) architecture")
    p.add_argument("--steps", type=int, default=3, help="iterations per round")
    p.add_argument("--results-dir", default="benchmarks/results")
    a = p.parse_args()
    start = time.perf_counter()
    cases = []
    bundle = None
    for arch, quick in (("quick", True), ("paper", False)):
        cfg = build_config(load_yaml(a.recipe), ["train.progress=false", "train.plots=false"], quick=quick)
        bundle = bundle or load_bundle(cfg.data, a.data_root)
        method, seg = configs(cfg)
        rounds = a.rounds if quick else a.paper_rounds
        steps = a.steps if quick else 1
        r = step_time_ratio(method, seg, bundle=bundle, rounds=rounds, steps=steps)
        with tempfile.TemporaryDirectory() as tmp:
            m = TrainerSteps(method, Path(tmp) / "m", phase=None, steps=1, bundle=bundle)
            b = TrainerSteps(with_batch_size(seg, m.images_per_step), Path(tmp) / "b", phase=None, steps=1,
                             bundle=bundle)  # fmt: skip
            flops = {"method": step_flops(m), "baseline": step_flops(b)}
        cases.append({"architecture": arch, "model_width": cfg.model.width, "batch_size": cfg.train.batch_size,
                      "gflops_per_step": flops, **r})  # fmt: skip
        print(f"{arch}: ratio {r['ratio']:.2f}, {r['seconds_per_step']}, GFLOPs {flops['method']['total']:.1f} "
              f"vs {flops['baseline']['total']:.1f}", flush=True)  # fmt: skip
    results = {
        "recipe": a.recipe,
        "cases": cases,
        "provenance": provenance(config={c["architecture"]: c["method"] for c in cases}, seed=0,
                                 rounds=a.rounds, steps_per_round=a.steps,
                                 wall_seconds=round(time.perf_counter() - start, 1)),
    }  # fmt: skip
    out = Path(a.results_dir)
    atomic_write_text(out / "translation-step-ratio.json", json.dumps(results, indent=1))
    lines = [
        f"# Translation step time / seg-only step time on the same images ({a.recipe}, CPU)",
        "",
        "| architecture | images per iteration | translation (s) | seg-only (s) | ratio | GFLOPs translation "
        "(critics) | GFLOPs seg-only | rounds x steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        s, f = c["seconds_per_step"], c["gflops_per_step"]
        critics = f["method"].get("critics", 0.0)
        lines.append(
            f"| {c['architecture']} (width {c['model_width']}) | {c['batch_size']} labeled + {c['batch_size']} "
            f"present + {c['batch_size']} absent | {s['method']:.3f} | {s['baseline']:.3f} | {c['ratio']:.2f} | "
            f"{f['method']['total']:.1f} ({critics:.1f}) | {f['baseline']['total']:.1f} | "
            f"{c['rounds']} x {c['steps_per_round']} |"
        )
    lines += [
        "",
        "Both sides run the trainer's `train_step`: translation = generator step + critic step; seg-only = "
        "the encoder and residual decoder in segmentation mode on one labeled batch of as many images. "
        "FLOPs of one iteration, forward + backward (FlopCounterMode; optimizer updates not counted); "
        "`critics` = the two multi-scale discriminators' share (in both the generator's and the critic's "
        "step). Medians of interleaved rounds (translation, seg-only, ...).",
        "",
        provenance_line(results["provenance"]),
    ]
    atomic_write_text(out / "translation-step-ratio.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
