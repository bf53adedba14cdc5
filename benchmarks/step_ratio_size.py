"""Step time of the size method's segmenter phase over a supervised step on the same images (CPU).

The curriculum tables record one ratio in their provenance (half the configured batch per stream,
so that both steps see ``batch_size`` images). This script measures the ratio for the settings a
user actually trains with: ``train.batch_size`` images from *each* stream (labeled + unlabeled)
against a supervised step on all of them, for each regressor architecture, at the recipe's quick
resolution, and writes ``benchmarks/results/size-step-ratio.{json,md}``.

    python benchmarks/step_ratio_size.py [--recipe curriculum-acdc] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from semiseg.bench.runner import git_commit, hardware, step_time_ratio
    from semiseg.bench.tables import size_step_options
    from semiseg.config import build_config, load_yaml, to_dict

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="curriculum-acdc")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--results-dir", default="benchmarks/results")
    a = p.parse_args()
    start = time.perf_counter()
    cfg = to_dict(build_config(load_yaml(a.recipe), [], quick=True))
    method, base = size_step_options(cfg)
    bs, size = cfg["train"]["batch_size"], cfg["data"]["image_size"][0]
    classes = 4 if cfg["data"]["dataset"] == "acdc" else 2
    cases = []
    for arch in ("density", "cnn"):
        for per_stream in (bs, max(1, bs // 2)):
            r = step_time_ratio({**method, "regressor_arch": arch}, base, cfg["model"], num_classes=classes,
                                image_size=size, batch_size=per_stream, steps=a.steps,
                                streams=("labeled", "unlabeled"), phase="segmenter")  # fmt: skip
            cases.append({"regressor_arch": arch, "images_per_stream": per_stream, **r})
            print(f"{arch} {per_stream}/stream: {r['ratio']}", flush=True)
    results = {
        "recipe": a.recipe,
        "cases": cases,
        "provenance": {"git_commit": git_commit(), "config": cfg, "seed": 0, "steps": a.steps,
                       "hardware": hardware(), "wall_seconds": round(time.perf_counter() - start, 1)},
    }  # fmt: skip
    out = Path(a.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "size-step-ratio.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"# Size-method step time / supervised step time ({a.recipe}, quick settings, CPU)",
        "",
        "| regressor | images per stream (labeled + unlabeled) | size step (s) | supervised step, same images (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        s = c["seconds_per_step"]
        lines.append(f"| {c['regressor_arch']} | {c['images_per_stream']} + {c['images_per_stream']} | "
                     f"{s['method']:.4f} | {s['baseline']:.4f} | {c['ratio']:.3f} |")  # fmt: skip
    lines += [
        "",
        f"{size}x{size} images, medians over {a.steps} alternating steps. "
        f"`train.batch_size` = {bs} images per stream is what training uses.",
        "",
        f"Commit `{results['provenance']['git_commit']}`; wall time {results['provenance']['wall_seconds']} s; "
        f"hardware: {results['provenance']['hardware']['cpu']} ({results['provenance']['hardware']['cores']} cores).",
    ]
    (out / "size-step-ratio.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
