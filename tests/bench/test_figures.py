"""Benchmark figures that need no trained run or real data."""

from __future__ import annotations

import torch

from semiseg.bench.figures import translation_figure
from semiseg.config import ModelConfig
from semiseg.methods import build_method


def test_translation_figure_draws_the_fig_7_layout_without_moving_the_method(tmp_path):
    torch.manual_seed(0)
    method = build_method({"name": "translation", "unique_channels": 4, "mlp_hidden": 8, "disc_width": 4,
                           "disc_scales": 2}, ModelConfig(width=4, depth=2), in_channels=1, num_classes=2,
                          image_size=(32, 32)).train()  # fmt: skip
    state = {k: v.clone() for k, v in method.state_dict().items()}
    present, absent = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    masks = (present[:, 0] > 0.5).long()
    path = tmp_path / "fig" / "translation.png"
    translation_figure(method, present, masks, absent, path)
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    assert width > height  # 7 columns, 3 rows
    assert method.training  # mode restored, state unchanged (eval: no spectral-norm power iteration)
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in state.items())
    again = tmp_path / "again.png"
    translation_figure(method, present, masks, absent, again)
    assert path.read_bytes() == again.read_bytes()  # the A->P draws are keyed: reproducible
