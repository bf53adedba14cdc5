"""Development diagnostic (prints only; validation / unlabeled data, never test). See benchmarks/dev/semi-acdc-dev.md."""

import sys

import torch

from semiseg.data import prepare_data
from semiseg.engine.run import load_trained

torch.set_num_threads(1)
method, cfg, _ = load_trained(sys.argv[1])
d = prepare_data(cfg, "../shared/data")
lab = torch.stack([d.labeled[(i, i)]["image"] for i in range(0, 64, 8)])
labm = torch.stack([d.labeled[(i, i)]["mask"] for i in range(0, 64, 8)])
unl = torch.stack([d.unlabeled[(i, i)]["image"] for i in range(0, 1200, 150)])
m = method.model


def frac(logits):
    p = logits.softmax(1)
    a = p.argmax(1)
    return [round(float((a == k).float().mean()), 4) for k in range(4)], round(
        float((p.max(1).values >= 0.95).float().mean()), 3
    )


with torch.no_grad():
    print("labeled truth", [round(float((labm == k).float().mean()), 4) for k in range(4)])
    m.train()
    lo = m(torch.cat([lab, unl]))
    print("train-mode mixed: lab", frac(lo[:8]), "unl", frac(lo[8:]))
    m.eval()
    print("eval lab", frac(m(lab)), "eval unl", frac(m(unl)))
    m.train()
    print("train-mode unl alone", frac(m(unl)), "lab alone", frac(m(lab)))
