"""Development runs that look at validation data only.

Trains a recipe (quick mode) with ``--set``-style overrides, skips the final test evaluation, and
appends one line per run to a JSONL log: the engine's best validation value and the mean of the
validation metric over the second half of training (less noisy than the best of ~20 noisy values
when the validation split holds only sparse pixels). Used to fix hyper-parameters before a table is
run; the test split is never read.

    python benchmarks/dev_val.py --recipe tv-horse --name tv03e05 --data-root ../shared/data \\
        method.tv_weight=0.3 method.edge_sigma=0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def summarize(run_dir: Path, metric: str) -> dict:
    """The last phase's validation curve and its mean over that phase's second half; the last
    validation values of any earlier phase (e.g. the size regressor's ``size_mae``)."""
    rows = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    last = rows[-1]["phase"] if rows else None
    final = [r for r in rows if r["phase"] == last]
    vals = [(r["epoch"], r[f"val/{metric}"]) for r in final if f"val/{metric}" in r]
    half = [v for e, v in vals if e > len(final) // 2]
    earlier = {}
    for r in rows:
        if r["phase"] != last:
            earlier.update(
                {f"{r['phase']}/{k[4:]}": round(v, 4) for k, v in r.items() if k.startswith("val/")}
            )
    return {
        "val_mean_second_half": sum(half) / max(1, len(half)),
        "val_curve": [round(v, 4) for _, v in vals],
        **({"earlier_phases": earlier} if earlier else {}),
    }


def dev_run(description: str, work_dir: str, log: str):
    """Parse a development run's arguments, train it without the test evaluation, and return
    ``(args, cfg, output folder, train's result, seconds)``; :func:`append_row` logs the outcome."""
    from semiseg.config import build_config, load_yaml
    from semiseg.engine.run import train

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--recipe", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--work-dir", default=work_dir)
    p.add_argument("--log", default=log)
    p.add_argument("--full", action="store_true", help="full mode instead of the recipe's quick section")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    cfg = build_config(load_yaml(a.recipe), ["train.progress=false", "train.plots=false", *a.overrides],
                       quick=not a.full)  # fmt: skip
    out = Path(a.work_dir) / a.name
    t0 = time.time()
    res = train(cfg, data_root=a.data_root, output_dir=out, final_eval=False)
    return a, cfg, out, res, round(time.time() - t0, 1)


def append_row(path: str, row: dict) -> None:
    """Print ``row`` and append it to the JSONL log at ``path``."""
    print(json.dumps(row))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> None:
    from semiseg.bench.provenance import provenance
    from semiseg.config import to_dict

    a, cfg, out, res, seconds = dev_run(__doc__.splitlines()[0], "runs/dev", "runs/dev/dev_val.jsonl")
    row = {"name": a.name, "recipe": a.recipe, "overrides": a.overrides, "quick": not a.full,
           "best": res["best"], **summarize(out, cfg.train.val_metric), "seconds": seconds,
           "seed": cfg.train.seed, **provenance(config=to_dict(cfg))}  # fmt: skip
    append_row(a.log, row)


if __name__ == "__main__":
    main()
