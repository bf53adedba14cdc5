"""Development diagnostic (prints only; validation / unlabeled data, never test). See benchmarks/dev/semi-acdc-dev.md."""

import torch

from semiseg.config import build_config, load_yaml
from semiseg.data import prepare_data
from semiseg.data.transforms import gaussian_blur
from semiseg.engine.run import load_trained

torch.set_num_threads(1)

method, cfg, _ = load_trained("runs/dev/sup10/last.pt")
d = prepare_data(cfg, "../shared/data")

cfg2 = build_config(
    load_yaml("src/semiseg/configs/fixmatch-acdc.yaml"), ["data.split.first_draw=listed"], quick=True
)
d2 = prepare_data(cfg2, "../shared/data")
imgs = torch.stack([d2.unlabeled[(i, i)]["image"] for i in range(0, 1240, 40)])
m = method.model.eval()


def dice(a, b, k):
    x, y = a == k, b == k
    return float(2 * (x & y).sum() / (x.sum() + y.sum()).clamp(min=1))


with torch.no_grad():
    pw = m(imgs).argmax(1)
    print("weak fg share", [round(float((pw == k).float().mean()), 4) for k in (1, 2, 3)])
    for name, f in [
        ("blur0.5", lambda x: torch.stack([gaussian_blur(i, 0.5) for i in x])),
        ("blur1", lambda x: torch.stack([gaussian_blur(i, 1.0) for i in x])),
        ("blur2", lambda x: torch.stack([gaussian_blur(i, 2.0) for i in x])),
        ("bright0.5", lambda x: x * 0.5),
        ("bright1.5", lambda x: x * 1.5),
        (
            "contrast0.5",
            lambda x: (x - x.mean((1, 2, 3), keepdim=True)) * 0.5 + x.mean((1, 2, 3), keepdim=True),
        ),
        (
            "contrast1.5",
            lambda x: (x - x.mean((1, 2, 3), keepdim=True)) * 1.5 + x.mean((1, 2, 3), keepdim=True),
        ),
    ]:
        ps = m(f(imgs)).argmax(1)
        print(
            name,
            "dice vs weak per class",
            [round(dice(pw, ps, k), 3) for k in (1, 2, 3)],
            "fg share",
            [round(float((ps == k).float().mean()), 4) for k in (1, 2, 3)],
        )
