"""The demo's rows over training seeds, validation only (no test image is read).

Trains rows of ``semiseg.demo.RUNS`` with ``train.seed`` = each given seed and ``final_eval=False``,
and appends one JSONL line per run: the engine's best validation Dice and the mean of the validation
curve over the second half of training (``benchmarks/dev_val.py``'s ``summarize``).

    OMP_NUM_THREADS=1 python benchmarks/dev/scripts/demo_val_seeds.py --rows dense-8 semi-8 \\
        --seeds 0 1 2 --work-dir /tmp/demo-val --log runs/dev/demo-val.jsonl [--set data.shapes_every_class=true]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ (dev_val)


def main() -> None:
    from dev_val import append_row, summarize

    from semiseg.config import to_dict
    from semiseg.data import load_bundle
    from semiseg.demo import BASE, RUNS, run_config
    from semiseg.engine.run import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", required=True, help="row names of semiseg.demo.RUNS")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work-dir", default="/tmp/demo-val")
    p.add_argument("--log", default="runs/dev/demo-val.jsonl")
    p.add_argument("--set", nargs="*", default=[], help="dotted key=JSON value overrides of every row")
    a = p.parse_args()
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    rows = {name: overrides for name, _, overrides in RUNS}
    bundle = None
    for seed in a.seeds:
        for name in a.rows:
            cfg = run_config({**rows[name], **extra, "train.seed": seed, "train.plots": False}, base=BASE)
            bundle = bundle or load_bundle(cfg.data)
            out = Path(a.work_dir) / f"{name}-s{seed}"
            t0 = time.time()
            res = train(cfg, output_dir=out, bundle=bundle, final_eval=False)
            append_row(
                a.log,
                {"row": name, "seed": seed, "set": a.set, "best": res["best"],
                 **summarize(out, cfg.train.val_metric), "seconds": round(time.time() - t0, 1),
                 "data": to_dict(cfg)["data"]},
            )  # fmt: skip


if __name__ == "__main__":
    main()
