"""Step time of each semi-supervised method against a supervised step and against its pass budget (CPU).

For every method recipe (``<method>-acdc``, quick settings: 128², 8 labeled + 8 unlabeled images
per iteration), two measurements, each interleaved in one process (rounds alternate the sides,
medians over rounds, ratios to 2 decimals):

- **step ratio**: one iteration of the method's training phase over one supervised iteration on the
  same labeled batch (``train.batch_size`` labeled images, the method's CE / Dice weights), both
  through the trainer's own ``train_step`` (:func:`semiseg.bench.timing.step_time_ratio` with
  ``same_images=False``);
- **pass budget** (issue 11): the work a method must do — ``n_grad(b)`` images through its networks
  with gradients and ``n_nograd(b)`` without in calls of batch size ``b``, counted with hooks during
  one iteration — each pass priced at the per-image cost of its own batch size: ``t_grad(b)``
  (seconds per image of a supervised training iteration of ``b`` labeled images) and ``t_nograd(b)``
  (seconds per image of a no-grad eval-mode forward of ``b`` images). The method's iteration time
  over ``Σ_b n_grad(b)·t_grad(b) + Σ_b n_nograd(b)·t_nograd(b)`` shows wasted passes and per-step
  overhead (:func:`semiseg.bench.timing.pass_budget_ratio`). Target: ≤ 1.15. The table also gives
  the ratio with every pass priced at the labeled batch size (the single-price budget this table
  used before), which charges a method that batches its streams into one larger call (mean teacher:
  labeled + strong unlabeled, 16 images, in one student pass) for the larger batch's higher
  per-image cost where it has one (one development measurement found 16 images at 128² ~20 % dearer
  per image than 8, ``benchmarks/dev/scripts/batch16_vs_8.py``; the committed run found them 1–10 %
  cheaper: CPU timing noise of this size is why a ratio near 1.15 does not decide).

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
    from semiseg.bench.provenance import provenance
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
    p.add_argument("--render", metavar="JSON", help="only re-render the Markdown of a results JSON")
    a = p.parse_args()
    if a.render:
        path = Path(a.render)
        atomic_write_text(path.with_suffix(".md"), markdown(json.loads(path.read_text())))
        return
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
              f"(per round {budget['ratio_to_budget_paired']:.2f}, quartiles {budget['ratio_to_budget_paired_quartiles']}) "
              f"(at the labeled batch's price {budget['ratio_to_budget_at_labeled_batch']:.2f}; "
              f"passes {budget['passes_per_batch_size']})", flush=True)  # fmt: skip
    results = {
        "cases": cases,
        "target_ratio_to_budget": TARGET,
        "provenance": provenance(config=configs, seed=0, rounds=a.rounds, steps_per_round=a.steps,
                                 wall_seconds=round(time.perf_counter() - start, 1)),
    }  # fmt: skip
    out = Path(a.results_dir)
    atomic_write_text(out / "semi-step-ratio.json", json.dumps(results, indent=1))
    atomic_write_text(out / "semi-step-ratio.md", markdown(results))


def markdown(results: dict) -> str:
    """The Markdown table of a results dict (also re-renders a committed JSON: ``--render FILE``)."""
    from semiseg.bench.provenance import provenance_line
    from semiseg.bench.render import passes_by_size

    cases, pr = results["cases"], results["provenance"]
    rounds, steps = pr["rounds"], pr["steps_per_round"]
    lines = [
        "# Semi-supervised step time: against a supervised step, and against each method's pass budget (CPU)",
        "",
        "| method | phase | images per iteration (streams) | passes with grad (batch size) "
        "| passes without grad (batch size) | iteration (s) | supervised iteration, same labeled batch (s) "
        "| step ratio | iteration, budget run (s) | pass budget (s) "
        f"| ratio to budget (target ≤ {TARGET:.2f}) "
        "| per-round ratio to budget, median (quartiles) | ratio to budget at the labeled batch's price |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        s, b = c["step"], c["budget"]
        imgs = s["images_per_step"]["method"]
        per_size = b["passes_per_batch_size"]
        q = b["ratio_to_budget_paired_quartiles"]
        lines.append(
            f"| {c['recipe'].removesuffix('-acdc')} | {s['phase']} | {imgs} ({', '.join(s['streams'])}) "
            f"| {passes_by_size(per_size['grad'])} | {passes_by_size(per_size['nograd'])} "
            f"| {s['seconds_per_step']['method']:.3f} | {s['seconds_per_step']['baseline']:.3f} "
            f"| {s['ratio']:.2f} | {b['seconds_per_step']:.3f} | {b['budget_seconds_per_step']:.3f} "
            f"| {b['ratio_to_budget']:.2f} "
            f"| {b['ratio_to_budget_paired']:.2f} ({q[0]:.2f}–{q[1]:.2f}) "
            f"| {b['ratio_to_budget_at_labeled_batch']:.2f} |"
        )
    b0 = cases[0]["budget"] if cases else None
    size = b0["image_size"] if b0 else []
    labeled = b0["labeled_batch_size"] if b0 else "?"
    lines += [
        "",
        "Passes are images through a segmentation network per iteration, by the batch size of the call "
        "(`16 (b16) + 8 (b8)`: 16 images in calls of 16, 8 in calls of 8), counted with forward hooks on each "
        "network's first encoder block and its head (a decoder-only call, e.g. UniMatch's feature-perturbation "
        "stream, counts half a pass at its own batch size). Each pass is priced at the per-image cost of its own "
        "batch size: budget = Σ_b n_grad(b) · t_grad(b) + Σ_b n_nograd(b) · t_nograd(b), with t_grad(b) the "
        "seconds per image of a supervised training iteration on b labeled images and t_nograd(b) the seconds "
        "per image of an eval-mode forward of b images without gradient (one supervised baseline and one "
        "inference per batch size, all measured interleaved with the method). The last column prices every pass "
        f"at the labeled batch size ({labeled}), as this table did before; the two differ where a batch of 16 "
        "costs more or less per image than one of 8 (compare the t_grad prices in the JSON). Ratios of repeated "
        "runs of this script differ by up to about 0.2 (CPU timing noise); a ratio near 1.15 does not decide. "
        "The per-round column divides each round's method time by the budget priced from the same round's "
        "measurements (a drift of the machine's speed then cancels) and gives the median and quartiles over "
        "rounds: the spread of the quartiles is the noise of one round. The step ratio and the pass budget "
        "come from two separate interleaved measurements, each with its own method timing (`iteration` and "
        "`iteration, budget run`). "
        "A method's iteration also pays its loss, augmentation mixing and optimizer work, which neither "
        "budget prices.",
        "",
        f"{'x'.join(map(str, size))} images, quick recipes; medians of {rounds} interleaved rounds of "
        f"{steps} iterations each (step ratio: method, supervised, ...; budget: method, supervised at each "
        "batch size, inference at each batch size, ...), through the trainer's `train_step`; "
        f"{pr['hardware']['torch_threads']} PyTorch thread(s).",
        "",
        provenance_line(pr),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
