"""SSLDEC development runs on training data only: train a classification recipe (quick mode) with
``--set``-style overrides, skip the test evaluation, and report the accuracy of the model as training
left it on the labeled training items and on the *unlabeled training items* (whose labels the run
never saw: a transductive check of whether the rounds turn unlabeled items into accuracy; a
diagnostic, not a tuning criterion), plus the logged validation accuracy. The test split is never
read. One JSON line per run, appended to the log.

    python benchmarks/dev/scripts/ssldec_transductive.py --recipe src/semiseg/configs/ssldec-mnist.yaml \\
        --name r3 --data-root ../shared/data method.max_rounds=3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: dev_val's helpers


def main() -> None:
    import torch
    from dev_val import append_row, dev_run

    from semiseg.bench.provenance import provenance
    from semiseg.config import to_dict
    from semiseg.data import prepare_data
    from semiseg.engine.evaluate import evaluate_labels
    from semiseg.engine.run import load_trained

    a, cfg, out, res, seconds = dev_run(
        __doc__.splitlines()[0], "runs/dev/ssldec", "runs/dev/ssldec/transductive.jsonl"
    )
    method, _, _ = load_trained(out / "last.pt")
    data = prepare_data(cfg, a.data_root)
    labeled_ids = {r.id for r in data.split.labeled}
    unlabeled = [r for r in data.split.unlabeled if r.id not in labeled_ids]
    device = torch.device("cpu")
    score = {name: evaluate_labels(method.predict, records, image_size=cfg.data.image_size, device=device)[0]["accuracy"]
             for name, records in (("labeled", data.split.labeled), ("unlabeled_train", unlabeled))}  # fmt: skip
    log = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    rounds = sum(1 for r in log if r["phase"].startswith("dec") and "ended" not in r)
    row = {"name": a.name, "recipe": a.recipe, "overrides": a.overrides, "accuracy": score,
           "val_last": next((r["val/accuracy"] for r in reversed(log) if "val/accuracy" in r), None),
           "rounds_trained": rounds, "steps": log[-1]["step"] if log else 0, "best": res["best"],
           "seconds": seconds, **provenance(config=to_dict(cfg))}  # fmt: skip
    append_row(a.log, row)


if __name__ == "__main__":
    main()
