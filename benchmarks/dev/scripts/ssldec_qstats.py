"""How confident an SSLDEC classifier's soft assignment is, on its labeled training items only.

For a run's checkpoint: the mean largest class probability, the mean probability of the true class
and the cross-entropy on the labeled training digits (the items pre-training fits), and for a
clustering head the scale of the embedding z it reads (per-dimension std, range), the distances
between its centroids, and the mean squared distance of z to its own class's centroid against all
centroids. A development diagnostic (training data only; the test split is never read).

    python benchmarks/dev/scripts/ssldec_qstats.py runs/dev/ssldec/pre-clustering/last.pt --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json


def _rounded(v):
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return round(v, 4) if isinstance(v, float) else v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data-root", default=None)
    a = p.parse_args()

    import torch

    from semiseg.data import prepare_data
    from semiseg.engine.run import load_trained
    from semiseg.models.heads import Clustered

    method, cfg, _ = load_trained(a.checkpoint)
    data = prepare_data(cfg, a.data_root)
    x = torch.stack([torch.from_numpy(r.image) for r in data.split.labeled]).float()
    y = torch.tensor([int(r.label) for r in data.split.labeled])
    net = method.model
    net.eval()
    out: dict = {"checkpoint": a.checkpoint, "head": cfg.model.head, "labeled": len(y)}
    with torch.no_grad():
        if isinstance(net, Clustered):
            z = net.backbone(x)
            mu = net.head.centroids
            d2 = torch.cdist(z, mu) ** 2
            q = net.head(z).exp()
            out["embedding"] = {
                "std_per_dim": z.std(0).mean().item(),
                "min": z.min().item(),
                "max": z.max().item(),
            }
            apart = torch.pdist(mu)
            out["centroid_distance"] = {"mean": apart.mean().item(), "min": apart.min().item()}
            out["d2_own_centroid"] = d2.gather(1, y[:, None]).mean().item()
            out["d2_all_centroids"] = d2.mean().item()
        else:
            q = net(x).softmax(1)
    true = q.gather(1, y[:, None])
    out["mean_max_q"] = q.max(1).values.mean().item()
    out["mean_true_q"] = true.mean().item()
    out["cross_entropy"] = -true.log().mean().item()
    out["accuracy"] = (q.argmax(1) == y).float().mean().item()
    print(json.dumps(_rounded(out)))


if __name__ == "__main__":
    main()
