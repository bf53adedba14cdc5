"""Dataset statistics (`semiseg data check`): class shares, unlabeled pixels of partial masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.data.folder import load_folder
from semiseg.data.stats import dataset_stats, format_stats


def _write(root: Path, stem: str, mask: np.ndarray) -> None:
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(mask.shape, 100, np.uint8)).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}.png")


def test_class_shares_count_labeled_pixels_and_the_unlabeled_share_is_reported(tmp_path):
    dense = np.zeros((4, 5), np.uint8)
    dense[:, :1] = 1  # 4 of 20 pixels: class 1
    clicks = np.full((4, 5), 255, np.uint8)
    clicks[0, 0], clicks[0, 1] = 1, 0  # two labeled pixels, 18 unlabeled
    _write(tmp_path / "dense", "a", dense)
    _write(tmp_path / "dense", "b", dense)
    _write(tmp_path / "mixed", "a", dense)
    _write(tmp_path / "mixed", "b", clicks)
    whole = load_folder(tmp_path / "dense", num_classes=2)
    stats = dataset_stats(whole, {"all": whole.train})["parts"]["all"]
    assert stats["classes"][whole.class_names[1]]["pixel_share"] == 0.2
    assert "unlabeled_pixel_share" not in stats
    assert "% of pixels" in format_stats(dataset_stats(whole, {"all": whole.train}))
    partial = load_folder(tmp_path / "mixed", num_classes=2, mask_unlabeled=255)
    report = dataset_stats(partial, {"all": partial.train})
    part = report["parts"]["all"]
    assert part["unlabeled_pixel_share"] == 0.45  # 18 of 40 mask pixels
    assert part["classes"][partial.class_names[1]]["pixel_share"] == round(5 / 22, 6)  # of 22 labeled
    text = format_stats(report)
    assert "unlabeled: 45.00 % of the masks' pixels" in text and "% of labeled pixels" in text
