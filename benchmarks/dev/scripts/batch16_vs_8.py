"""Development diagnostic (prints only; validation / unlabeled data, never test). See benchmarks/dev/semi-acdc-dev.md."""

import time

import torch

from semiseg.config import build_config, load_yaml
from semiseg.models import build_model

torch.set_num_threads(1)

cfg = build_config(load_yaml("mean-teacher-acdc"), quick=True)
m = build_model(cfg.model, 1, 4).train()
x16 = torch.rand(16, 1, 128, 128)
x8 = x16[:8]


def step(xs):
    loss = sum(m(x).mean() for x in xs)
    loss.backward()


for f, xs in [("16", [x16]), ("8+8", [x8, x16[8:]]), ("16", [x16]), ("8+8", [x8, x16[8:]]), ("8", [x8])]:
    t = time.time()
    for _ in range(3):
        step(xs)
    print(f, round((time.time() - t) / 3, 3))
with torch.no_grad():
    m.train()
    t = time.time()
    [m(x8) for _ in range(3)]
    print("nograd train-mode 8", round((time.time() - t) / 3, 3))
    m.eval()
    t = time.time()
    [m(x8) for _ in range(3)]
    print("nograd eval-mode 8", round((time.time() - t) / 3, 3))
