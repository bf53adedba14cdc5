"""Figures of benchmark results (the papers' qualitative comparisons)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semiseg.bench.runner import BenchContext


def comparison_figure(
    panels: list[tuple[str, Path]], path: Path, ctx: BenchContext, n_images: int = 4
) -> None:
    """Rows of test images: image, each run's prediction, ground truth (as the TV paper's Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from semiseg.data import prepare_data
    from semiseg.engine.evaluate import predict_records
    from semiseg.engine.run import load_trained

    loaded = [load_trained(d / "best.pt") for _, d in panels]
    every = prepare_data(loaded[0][1], ctx.data_root, bundle=ctx.bundle).test
    test = every[:: max(1, len(every) // n_images)][:n_images]  # spread over the test set
    preds = []
    for method, cfg, _ in loaded:
        with torch.no_grad():
            preds.append(
                [
                    p.argmax(0).numpy()
                    for p in predict_records(method.predict, test, cfg.data.image_size, "cpu")
                ]
            )
    cols = len(panels) + 2
    fig, axes = plt.subplots(len(test), cols, figsize=(2.4 * cols, 2.0 * len(test)), squeeze=False)
    for i, r in enumerate(test):
        shown = (
            [("image", r.image[0])]
            + [(t, preds[j][i]) for j, (t, _) in enumerate(panels)]
            + [("truth", r.mask)]
        )
        for ax, (title, img) in zip(axes[i], shown):
            ax.imshow(img, cmap="gray")
            ax.set_title(title if i == 0 else "", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
