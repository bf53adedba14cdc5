"""Does a checkpoint's batch-norm running statistics match its clean validation images?

Scores ``--checkpoint`` on the first ``--volumes`` validation volumes twice: in evaluation mode (the
running statistics, as every prediction uses them) and with batch statistics (training-mode batch
norm, no gradient, running statistics restored afterwards). A large gap means training passes (e.g.
strong views) dragged the running statistics away from clean images. Validation data only.

    python benchmarks/bn_running_stats.py --checkpoint runs/dev/<run>/last.pt --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--volumes", type=int, default=6)
    args = p.parse_args()

    from semiseg.bench.provenance import provenance
    from semiseg.data import prepare_data
    from semiseg.engine.evaluate import evaluate_records
    from semiseg.engine.run import load_trained
    from semiseg.models.batchnorm import frozen_running_stats

    start = time.perf_counter()
    method, cfg, state = load_trained(args.checkpoint)
    val = prepare_data(cfg, args.data_root).val[: args.volumes]
    kw = dict(num_classes=state["num_classes"], image_size=cfg.data.image_size, device=torch.device("cpu"),
              metrics=("dice",))  # fmt: skip
    running, _ = evaluate_records(method.predict, val, **kw)
    method.train()

    def batch_stats(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), frozen_running_stats(method.segmenter):
            return method.segmenter(x)

    batch, _ = evaluate_records(batch_stats, val, **kw)
    out = {
        "checkpoint": args.checkpoint,
        "validation_volumes": [r.id for r in val],
        "dice_mean_running_stats": round(running["dice/mean"], 4),
        "dice_mean_batch_stats": round(batch["dice/mean"], 4),
        "config": {"recipe_method": cfg.method, "image_size": cfg.data.image_size, "seed": cfg.train.seed},
        **provenance(wall_seconds=round(time.perf_counter() - start, 1)),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
