"""Step time of the size method's segmenter phase over a supervised step on as many images (CPU).

Both sides run the trainer's own ``train_step`` on batches of their own trainer's loader, at the
recipe's quick settings: the size method draws ``train.batch_size`` images from *each* stream
(labeled + unlabeled), the supervised baseline (same cross-entropy / Dice weights) draws all of
them as labeled images in one batch. For each regressor architecture, at the trained batch and at
half of it. Rounds alternate size, supervised, size, ... (``--rounds``, each ``--steps``
iterations); the ratio of the medians is reported to 2 decimals. Writes
``benchmarks/results/size-step-ratio.{json,md}``.

    python benchmarks/step_ratio_size.py --data-root ../shared/data [--recipe curriculum-acdc]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def split_batch_control(cfg, per_stream: int, classes: int, rounds: int, steps: int) -> dict:
    """The segmenter alone (plain PyTorch, cross-entropy, Adam): forward/backward of two batches of
    ``per_stream`` images over one batch of twice as many, interleaved like the ratios. The size
    method passes its labeled and unlabeled batches separately; this is what the split alone costs."""
    import statistics

    import torch
    import torch.nn.functional as F

    from semiseg.bench.timing import interleaved, ratio
    from semiseg.models import build_model

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, 1, classes)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    size = cfg.data.image_size
    x = torch.rand(2 * per_stream, 1, *size)
    y = torch.randint(0, classes, (2 * per_stream, *size))

    def one() -> None:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    def split() -> None:
        for _ in range(steps):
            opt.zero_grad()
            a, b = slice(0, per_stream), slice(per_stream, None)
            (F.cross_entropy(model(x[a]), y[a]) + F.cross_entropy(model(x[b]), y[b])).backward()
            opt.step()

    times = interleaved({"split": split, "one": one}, rounds)
    med = {k: statistics.median(v) / steps for k, v in times.items()}
    return {"images_per_stream": per_stream, "ratio": ratio(med["split"], med["one"]),
            "seconds_per_step": {k: round(v, 4) for k, v in med.items()}}  # fmt: skip


def main() -> None:
    from semiseg.bench.provenance import provenance, provenance_line
    from semiseg.bench.tables import size_step_configs
    from semiseg.bench.timing import ROUNDS, STEPS_PER_ROUND, step_time_ratio
    from semiseg.config import build_config, load_yaml, to_dict
    from semiseg.data import load_bundle
    from semiseg.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="curriculum-acdc")
    p.add_argument("--data-root")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--steps", type=int, default=STEPS_PER_ROUND, help="iterations per round")
    p.add_argument("--results-dir", default="benchmarks/results")
    a = p.parse_args()
    start = time.perf_counter()
    cfg = build_config(load_yaml(a.recipe), ["train.progress=false"], quick=True)
    bundle = load_bundle(cfg.data, a.data_root)
    bs = cfg.train.batch_size
    cases = []
    for arch in ("density", "cnn"):
        for per_stream in (bs, max(1, bs // 2)):
            c = dataclasses.replace(cfg, method={**cfg.method, "regressor_arch": arch},
                                    train=dataclasses.replace(cfg.train, batch_size=per_stream))  # fmt: skip
            method, base = size_step_configs(c)
            r = step_time_ratio(
                method, base, phase="segmenter", bundle=bundle, rounds=a.rounds, steps=a.steps
            )
            cases.append({"regressor_arch": arch, "images_per_stream": per_stream, **r})
            print(f"{arch} {per_stream}/stream: {r['ratio']:.2f}", flush=True)
    classes = bundle.num_classes
    controls = [split_batch_control(cfg, n, classes, a.rounds, a.steps) for n in (bs, max(1, bs // 2))]
    for c in controls:
        print(f"control {c['images_per_stream']} + {c['images_per_stream']} vs one batch: {c['ratio']:.2f}")
    results = {
        "recipe": a.recipe,
        "cases": cases,
        "split_batch_control": controls,
        "provenance": provenance(config=to_dict(cfg), seed=cfg.train.seed, rounds=a.rounds, steps_per_round=a.steps,
                                 wall_seconds=round(time.perf_counter() - start, 1)),
    }  # fmt: skip
    out = Path(a.results_dir)
    atomic_write_text(out / "size-step-ratio.json", json.dumps(results, indent=1))
    size = cfg.data.image_size
    lines = [
        f"# Size-method step time / supervised step time ({a.recipe}, quick settings, CPU)",
        "",
        "| regressor | images per stream (labeled + unlabeled) | size iteration (s) "
        "| supervised iteration, as many images (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        s = c["seconds_per_step"]
        lines.append(f"| {c['regressor_arch']} | {c['images_per_stream']} + {c['images_per_stream']} | "
                     f"{s['method']:.3f} | {s['baseline']:.3f} | {c['ratio']:.2f} |")  # fmt: skip
    pr = results["provenance"]
    control = "; ".join(
        f"{c['images_per_stream']} + {c['images_per_stream']}: {c['ratio']:.2f} ({c['seconds_per_step']['split']:.3f} s vs "
        f"{c['seconds_per_step']['one']:.3f} s)"
        for c in controls
    )
    lines += [
        "",
        "Control, the segmenter alone (plain PyTorch forward/backward, cross-entropy, Adam): two batches of n "
        f"images over one batch of 2n, same rounds: {control}. The size method passes its labeled and "
        "unlabeled batches through the segmenter separately, so a ratio below 1 means its extra work costs "
        "less than the split saves on this CPU, not that it does less work.",
    ]
    lines += [
        "",
        f"{size[0]}x{size[1]} images; both sides run the trainer's `train_step` (the size method's "
        f"segmenter phase); medians of {a.rounds} interleaved rounds (size, supervised, size, ...) of "
        f"{a.steps} iterations each. `train.batch_size` = {bs} images per stream is what training uses.",
        "",
        provenance_line(pr),
    ]
    atomic_write_text(out / "size-step-ratio.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
