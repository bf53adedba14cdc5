"""End-of-run figures: colour images are drawn in colour, volumes by their most foreground slice."""

from __future__ import annotations

import numpy as np
import torch

from semiseg.data.records import Record
from semiseg.engine.plots import display_image, overlay_items, overlays


def rgb_record() -> Record:
    image = np.zeros((3, 12, 16), dtype=np.float32)
    image[0, :, :8] = 1.0  # left half red
    image[2, :, 8:] = 1.0  # right half blue
    return Record(id="colour", image=image, mask=np.zeros((12, 16), dtype=np.int64))


def test_colour_images_stay_in_colour():
    rec = rgb_record()
    probs = torch.zeros(2, 12, 16)
    probs[0] = 1.0
    ((title, image, truth, pred),) = overlay_items([rec], [probs])
    assert title == "colour" and image.shape == (12, 16, 3) and truth.shape == pred.shape == (12, 16)
    np.testing.assert_array_equal(image[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(image[0, -1], [0.0, 0.0, 1.0])
    gray = display_image(rec.image[:1])
    assert gray.shape == (12, 16)
    # intensities outside [0, 1] (e.g. z-scored) are scaled for display
    assert display_image(rec.image * 4 - 2).min() == 0.0 and display_image(rec.image * 4 - 2).max() == 1.0


def test_overlay_figure_shows_the_colours(tmp_path):
    """No foreground anywhere, so any saturated pixel of the figure comes from the image itself."""
    import matplotlib.pyplot as plt

    rec = rgb_record()
    probs = torch.zeros(2, 12, 16)
    probs[0] = 1.0
    path = tmp_path / "overlays.png"
    overlays(overlay_items([rec], [probs]), path, num_classes=2)
    figure = plt.imread(path)[..., :3]
    red = (figure[..., 0] > 0.8) & (figure[..., 1] < 0.2) & (figure[..., 2] < 0.2)
    blue = (figure[..., 2] > 0.8) & (figure[..., 0] < 0.2) & (figure[..., 1] < 0.2)
    assert red.sum() > 100 and blue.sum() > 100


def test_volumes_show_the_slice_with_most_foreground():
    mask = np.zeros((3, 8, 8), dtype=np.int64)
    mask[1, 2:6, 2:6] = 1
    mask[2, 3:4, 3:4] = 1
    image = np.stack([np.full((8, 8), d, dtype=np.float32) for d in range(3)])[None]
    rec = Record(id="vol", image=image, mask=mask)
    ((_, shown, truth, pred),) = overlay_items([rec], [torch.zeros(2, 3, 8, 8)])
    assert shown.shape == (8, 8) and (shown == 1).all() and np.array_equal(truth, mask[1])


def test_sparse_truth_is_drawn_as_markers_and_dense_test_rows_are_added(tmp_path, monkeypatch):
    import copy

    import matplotlib.axes

    from semiseg.config import build_config
    from semiseg.core import IGNORE_INDEX
    from semiseg.engine import plots
    from semiseg.engine.run import train

    drawn = []
    real = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(
        matplotlib.axes.Axes, "scatter", lambda ax, x, y, **kw: drawn.append(len(x)) or real(ax, x, y, **kw)
    )
    truth = np.full((12, 16), IGNORE_INDEX)
    truth[2, 3], truth[7, 9], truth[10, 1] = 0, 1, 1
    overlays([("sparse", np.zeros((12, 16)), truth, np.zeros((12, 16), int))], tmp_path / "o.png", 2)
    assert drawn == [3]  # one marker per labeled pixel
    drawn.clear()
    overlays(
        [("dense", np.zeros((12, 16)), np.zeros((12, 16), int), np.zeros((12, 16), int))],
        tmp_path / "d.png",
        2,
    )
    assert drawn == []

    seen = []
    monkeypatch.setattr(plots, "overlays", lambda items, path, k: seen.extend(t for t, *_ in items))
    raw = {"data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 30,
                    "split": {"labeled": 4, "supervision": "sparse", "sparse_pixels": 5, "val_supervision": "same"}},
           "model": {"name": "unet", "width": 4, "depth": 2},
           "train": {"epochs": 1, "batch_size": 4, "iters_per_epoch": 1, "progress": False}}  # fmt: skip
    train(build_config(copy.deepcopy(raw), [], source="test"), output_dir=tmp_path / "run")
    n_val = min(4, len(seen) - 2)
    assert [t.startswith("test ") for t in seen] == [False] * n_val + [True] * 2, seen
