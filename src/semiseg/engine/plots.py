"""End-of-run figures: learning curves and prediction overlays (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, Any]], path: str | Path, val_metric: str) -> None:
    """Training loss components per epoch (left) and the validation metric (right), over the trained,
    kept epochs (not phase ends or rejected attempts)."""
    from semiseg.engine.trainer import trained_epochs

    history = trained_epochs(history)
    plt = _plt()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = sorted({k for h in history for k in h if k.startswith("train/")})
    x = np.arange(1, len(history) + 1)
    for k in keys:
        ax_loss.plot(x, [h.get(k, np.nan) for h in history], label=k[6:])
    ax_loss.set_xlabel("epoch (all phases)")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=7)
    vals = [h.get(f"val/{val_metric}", np.nan) for h in history]
    ax_val.plot(x, vals, marker="o", ms=3)
    ax_val.set_xlabel("epoch (all phases)")
    ax_val.set_ylabel(f"validation {val_metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlays(
    items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: str | Path, num_classes: int
) -> None:
    """Rows of (image, truth overlay, prediction overlay).

    A truth that labels under half of the pixels (sparse supervision: a few clicked pixels) is drawn as
    markers, one per labeled pixel, coloured by class (background in white), so the clicks stay
    visible.

    Args:
        items: ``(title, image, truth [H, W], prediction [H, W])`` tuples; ``image`` is ``[H, W]``
            (drawn in gray) or ``[H, W, 3]`` RGB in ``[0, 1]`` (drawn in colour), see
            :func:`display_image`; ``truth`` may hold ``IGNORE_INDEX`` (unlabeled pixels).
    """
    from semiseg.core import IGNORE_INDEX

    plt = _plt()
    n = len(items)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for row, (title, image, truth, pred) in zip(axes, items):
        for ax, label, name in zip(row, (None, truth, pred), ("image", "truth", "prediction")):
            ax.imshow(image, cmap="gray")
            known = None if label is None else label != IGNORE_INDEX
            if known is not None and known.mean() < 0.5:  # sparse: markers on the labeled pixels
                ys, xs = np.nonzero(known)
                colours = [(1.0, 1.0, 1.0) if c == 0 else cmap(int(c) - 1)[:3] for c in label[ys, xs]]
                ax.scatter(xs, ys, s=16, c=colours, marker="o", edgecolors="black", linewidths=0.6)
                name = f"truth ({len(xs)} labeled pixels)"
            elif label is not None:
                rgba = np.zeros((*label.shape, 4))
                for c in range(1, num_classes):
                    rgba[label == c] = (*cmap(c - 1)[:3], 0.45)
                ax.imshow(rgba)
            ax.set_title(f"{title}: {name}" if name == "image" else name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def display_image(image: np.ndarray) -> np.ndarray:
    """A 2D image ``[C, H, W]`` as matplotlib draws it: ``[H, W]`` for one channel (gray colour
    map, scaled by ``imshow``), ``[H, W, 3]`` for three, min-max scaled to ``[0, 1]`` (``imshow``
    does not scale colour images)."""
    if image.shape[0] != 3:
        return image[0]
    rgb = np.moveaxis(image, 0, -1).astype(np.float64)
    lo, hi = float(rgb.min()), float(rgb.max())
    return (rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb)


def overlay_items(records, probs) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Pick a displayable 2D slice (the one with most foreground) from each record; colour images
    stay in colour (:func:`display_image`)."""
    items = []
    for r, p in zip(records, probs):
        image, truth, pred = r.image, np.asarray(r.mask), p.argmax(0).numpy()
        if image.ndim == 4:  # volume [C, D, H, W]: the slice with most labeled foreground
            from semiseg.core import IGNORE_INDEX

            foreground = (truth > 0) & (truth != IGNORE_INDEX)
            d = int(np.argmax(foreground.reshape(truth.shape[0], -1).sum(1)))
            image, truth, pred = image[:, d], truth[d], pred[d]
        items.append((r.id, display_image(image), truth, pred))
    return items


def comparison(records, predictions: dict[str, list[np.ndarray]], path: str | Path, num_classes: int) -> None:
    """Test cases side by side (the papers' qualitative figures): the image, its ground truth and
    each model's prediction, one row per record. Used by the demo, the benchmark tables and plots.

    Args:
        records: 2D :class:`~semiseg.data.records.Record` s with masks.
        predictions: Column title → one label map ``[H, W]`` per record (native resolution).
        num_classes: Fixes the colour of each class across panels.
    """
    plt = _plt()
    names = list(predictions)
    cols = 2 + len(names)
    fig, axes = plt.subplots(len(records), cols, figsize=(2.3 * cols, 2.2 * len(records)), squeeze=False)
    for i, r in enumerate(records):
        panels = [("image", display_image(r.image), "gray"), ("truth", r.mask, "viridis")]
        panels += [(n, predictions[n][i], "viridis") for n in names]
        for ax, (title, img, cmap) in zip(axes[i], panels):
            labels = cmap == "viridis"
            ax.imshow(img, cmap=cmap, vmin=0 if labels else None, vmax=num_classes - 1 if labels else None)
            ax.set_title(title if i == 0 else "", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare_models(models: dict[str, Any], records, path: str | Path, num_classes: int, device="cpu") -> None:
    """:func:`comparison` of trained methods (title → ``(method, cfg)``) on ``records``."""
    import torch

    from semiseg.engine.evaluate import predict_records
    from semiseg.engine.inference import build_predict

    predictions = {}
    for name, (method, cfg) in models.items():
        with torch.no_grad():
            probs = predict_records(build_predict(method.predict, cfg), records, cfg.data.image_size, device)
        predictions[name] = [p.argmax(0).numpy() for p in probs]
    comparison(records, predictions, path, num_classes)
