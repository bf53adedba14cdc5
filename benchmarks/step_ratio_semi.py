"""Step time of each semi-supervised method against a supervised step and against its pass budget (CPU).

For every method recipe (``<method>-acdc``, quick settings: 128², 8 labeled + 8 unlabeled images
per iteration), two measurements, each interleaved in one process (rounds alternate the sides,
medians over rounds, ratios to 2 decimals):

- **step ratio**: one iteration of the method's training phase over one supervised iteration on the
  same labeled batch (``train.batch_size`` labeled images, the method's CE / Dice weights), both
  through the trainer's own ``train_step`` (:func:`semiseg.bench.timing.step_time_ratio` with
  ``same_images=False``);
- **pass budget** (issue 11): the work a method must do — ``n_grad`` images through its networks
  with gradients and ``n_nograd`` without, counted with hooks during one iteration — priced at
  ``t_grad`` (seconds per image of a supervised training iteration) and ``t_nograd`` (seconds per
  image of a no-grad eval-mode forward); the method's iteration time over that budget shows wasted
  passes and per-step overhead (:func:`semiseg.bench.timing.pass_budget_ratio`). Target: ≤ 1.15.

Writes ``benchmarks/results/semi-step-ratio.{json,md}``.

    python benchmarks/step_ratio_semi.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ("mean-teacher", "fixmatch", "unimatch", "bcp", "cps", "pseudo-label")
#: pass-budget target of issue 11
TARGET = 1.15


def main() -> None:
    from semiseg.bench.provenance import provenance, provenance_line
    from semiseg.bench.tables import supervised_baseline
    from semiseg.bench.timing import ROUNDS, STEPS_PER_ROUND, pass_budget_ratio, step_time_ratio
    from semiseg.config import build_config, load_yaml, to_dict
    from semiseg.data import load_bundle
    from semiseg.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root")
    p.add_argument("--methods", nargs="*", default=list(METHODS), help="recipes <method>-acdc to measure")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--steps", type=int, default=STEPS_PER_ROUND, help="iterations per round")
    p.add_argument("--results-dir", default="benchmarks/results")
    a = p.parse_args()
    start = time.perf_counter()
    bundle = None
    cases, configs = [], {}
    for name in a.methods:
        cfg = build_config(load_yaml(f"{name}-acdc"), ["train.progress=false"], quick=True)
        configs[name] = to_dict(cfg)
        bundle = bundle or load_bundle(cfg.data, a.data_root)
        base = supervised_baseline(cfg)
        step = step_time_ratio(cfg, base, bundle=bundle, rounds=a.rounds, steps=a.steps, same_images=False)
        budget = pass_budget_ratio(cfg, base, bundle=bundle, rounds=a.rounds, steps=a.steps)
        cases.append({"recipe": f"{name}-acdc", "step": step, "budget": budget})
        print(f"{name}: step ratio {step['ratio']:.2f}, pass budget {budget['ratio_to_budget']:.2f} "
              f"(passes {budget['passes_per_step']})", flush=True)  # fmt: skip
    results = {
        "cases": cases,
        "target_ratio_to_budget": TARGET,
        "provenance": provenance(config=configs, seed=0, rounds=a.rounds, steps_per_round=a.steps,
                                 wall_seconds=round(time.perf_counter() - start, 1)),
    }  # fmt: skip
    out = Path(a.results_dir)
    atomic_write_text(out / "semi-step-ratio.json", json.dumps(results, indent=1))
    lines = [
        "# Semi-supervised step time: against a supervised step, and against each method's pass budget (CPU)",
        "",
        "| method | phase | images per iteration (streams) | passes with grad | passes without grad "
        "| iteration (s) | supervised iteration, same labeled batch (s) | step ratio | pass budget (s) "
        f"| ratio to budget (target ≤ {TARGET:.2f}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        s, b = c["step"], c["budget"]
        imgs = s["images_per_step"]["method"]
        lines.append(
            f"| {c['recipe'].removesuffix('-acdc')} | {s['phase']} | {imgs} ({', '.join(s['streams'])}) "
            f"| {b['passes_per_step']['grad']:g} | {b['passes_per_step']['nograd']:g} "
            f"| {s['seconds_per_step']['method']:.3f} | {s['seconds_per_step']['baseline']:.3f} "
            f"| {s['ratio']:.2f} | {b['budget_seconds_per_step']:.3f} | {b['ratio_to_budget']:.2f} |"
        )
    pr = results["provenance"]
    b0 = cases[0]["budget"] if cases else None
    size = b0["image_size"] if b0 else []
    lines += [
        "",
        "Passes are images through a segmentation network per iteration, counted with forward hooks on each "
        "network's first encoder block and its head (a decoder-only pass, e.g. UniMatch's feature-perturbation "
        "stream, counts half). Budget = n_grad · t_grad + n_nograd · t_nograd, with t_grad the seconds per image "
        "of a supervised training iteration on the labeled batch and t_nograd the seconds per image of an "
        "eval-mode forward without gradient; a method's iteration also pays its loss, augmentation mixing "
        "and optimizer work, which the budget does not price.",
        "",
        f"{'x'.join(map(str, size))} images, quick recipes; medians of {a.rounds} interleaved rounds of "
        f"{a.steps} iterations each (step ratio: method, supervised, ...; budget: method, supervised, "
        f"inference, ...), through the trainer's `train_step`; {pr['hardware']['torch_threads']} PyTorch thread(s).",
        "",
        provenance_line(pr),
    ]
    atomic_write_text(out / "semi-step-ratio.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
