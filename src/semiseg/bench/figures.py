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
    from semiseg.data import prepare_data
    from semiseg.engine.plots import compare_models
    from semiseg.engine.run import load_trained

    loaded = {title: load_trained(d / "best.pt") for title, d in panels}
    first_cfg = next(iter(loaded.values()))[1]
    every = prepare_data(first_cfg, ctx.data_root, bundle=ctx.cache.bundle(first_cfg)).test
    test = every[:: max(1, len(every) // n_images)][:n_images]  # spread over the test set
    num_classes = next(iter(loaded.values()))[2]["num_classes"]
    compare_models({t: (m, cfg) for t, (m, cfg, _) in loaded.items()}, test, path, num_classes)


def translation_run_figure(
    run_dir: Path, path: Path, data_root: str | None, n_images: int = 6, fold: str = "test"
) -> None:
    """:func:`translation_figure` of a trained ``translation`` run on ``n_images`` present and absent
    images of its cluttered-MNIST ``fold`` (``test``, or ``val`` for development), spread over it."""
    import torch

    from semiseg.data import dataset_folder
    from semiseg.data.cluttered_mnist import load_variant
    from semiseg.engine.run import load_trained

    method, cfg, _ = load_trained(run_dir / "best.pt")
    folds, _ = load_variant(
        dataset_folder(cfg.data, data_root), cfg.data.variant, seed=cfg.data.generator_seed
    )
    part = folds[fold]
    pick = torch.linspace(0, len(part.present) - 1, n_images).long().numpy()
    present = torch.from_numpy(part.present[pick]).float()[:, None]
    absent = torch.from_numpy(part.absent[pick]).float()[:, None]
    translation_figure(method, present, torch.from_numpy(part.masks[pick]), absent, path)


def translation_figure(method, present, masks, absent, path: Path) -> None:
    """The translation paper's Fig. 7 layout: for each present image, columns input, P→A translation,
    residual (x_PP − x_PA), segmentation and ground truth; then absent images with their A→P
    translation (u ~ N(0, I), drawn from fixed keys so the figure is reproducible).

    Shape:
        present ``[N, C, S, S]``, masks ``[N, S, S]``, absent ``[N, C, S, S]`` (N rows).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from semiseg.core import Batch

    n = len(present)
    key = torch.stack(
        [torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.arange(n)], 1
    )
    batch = {"present": Batch.of(present), "absent": Batch.of(absent)}
    batch["present"].key, batch["absent"].key = key, key.clone()
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            code, skips = method.encoder(present)
            x_pa = method.common(method.split_code(code)[0], skips)
            residual = method.residual(code, skips)
            x_ap = method.translate(batch)[1]
            seg = method.predict(present).argmax(1)
    finally:
        method.train(was_training)
    columns = [
        ("input (P)", present[:, 0], (0, 1), "gray"),
        ("P→A", x_pa[:, 0], (0, 1), "gray"),
        ("residual", residual[:, 0], (-1, 1), "coolwarm"),
        ("segmentation", seg.float(), (0, 1), "gray"),
        ("truth", masks.float(), (0, 1), "gray"),
        ("input (A)", absent[:, 0], (0, 1), "gray"),
        ("A→P", x_ap[:, 0], (0, 1), "gray"),
    ]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.6 * n), squeeze=False)
    for j, (title, images, (lo, hi), cmap) in enumerate(columns):
        axes[0, j].set_title(title, fontsize=9)
        for i in range(n):
            axes[i, j].imshow(images[i].numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            axes[i, j].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save(plt, fig, axes, path: Path, tight: bool = True) -> None:
    """Blank the ``axes``' ticks, lay the figure out and write it to ``path`` (folders created)."""
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if tight:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def moons_figure(
    models: list[tuple[str, object]], points, labels, labeled, path: Path, resolution: int = 150
) -> None:
    """SSLDEC's Fig. 4 layout: (a) the points, labeled ones marked; then one panel per model with its
    decision boundary (probability of the second class on a grid) under the points.

    Args:
        models: ``(title, method)`` pairs; ``method.predict`` maps ``[N, 2, 1, 1]`` to class scores.
        points: ``[N, 2]`` array; labels ``[N]`` (0/1); labeled ``[N]`` bool.
    """
    import numpy as np
    import torch

    plt = _plt()
    points, labels, labeled = np.asarray(points), np.asarray(labels), np.asarray(labeled, dtype=bool)
    lo, hi = points.min(0) - 0.4, points.max(0) + 0.4
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32))[:, :, None, None]
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(4 * (1 + len(models)), 3.6), squeeze=False)

    def scatter(ax):
        ax.scatter(*points[~labeled].T, c=labels[~labeled], cmap="coolwarm", s=4, alpha=0.6)
        ax.scatter(*points[labeled].T, c="orange", edgecolors="k", s=60, marker="o", label="labeled")

    ax = axes[0, 0]
    scatter(ax)
    ax.set_title(f"(a) data: {int(labeled.sum())} labeled points", fontsize=9)
    for i, (title, method) in enumerate(models, start=1):
        with torch.no_grad():
            prob = method.predict(grid).float().softmax(1)[:, 1].reshape(gx.shape).numpy()
        ax = axes[0, i]
        ax.contourf(gx, gy, prob, levels=[0.0, 0.5, 1.0], colors=["#dde8f7", "#f7dddd"])
        ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1)
        scatter(ax)
        ax.set_title(f"({chr(97 + i)}) {title}", fontsize=9)
    _save(plt, fig, axes[0], path)


def embedding_pca(method, images, batch_size: int = 256):
    """2-D PCA of a method's embeddings of ``images`` (the input of its clustering head, else its
    logits): ``[N, 2]`` coordinates."""
    import torch

    net = method.segmenter
    embed = getattr(net, "backbone", net)
    with torch.no_grad():
        z = torch.cat([embed(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])
    z = z.flatten(1) - z.flatten(1).mean(0)
    u, s, _ = torch.linalg.svd(z.double(), full_matrices=False)  # exact: N x D with D = the classes
    return (u[:, :2] * s[:2]).float().numpy()


def embedding_figure(models: list[tuple[str, object]], images, labels, path: Path) -> None:
    """SSLDEC's Fig. 7 layout with PCA (no t-SNE library here): each model's embeddings of the same
    images in two dimensions, coloured by the true class."""
    import numpy as np

    plt = _plt()
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, (title, method) in zip(axes[0], models):
        xy = embedding_pca(method, images)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=5, vmin=-0.5, vmax=9.5)
        ax.set_title(title, fontsize=9)
    fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(10), fraction=0.03)
    _save(plt, fig, axes[0], path, tight=False)  # the colorbar spans the panels: no tight layout


def snapshot_grid(snapshots: dict[str, dict[int, object]], image, mask, path: Path) -> None:
    """The IODA paper's Fig. 6 layout: one row per setup (e.g. NDA, IDA, IODA), its output (foreground
    probability) on one image after each saved epoch, beside the input and the truth.

    Args:
        snapshots: setup → {epoch: method} (methods in eval mode).
        image: ``[C, H, W]`` tensor; mask ``[H, W]``.
    """
    import torch

    plt = _plt()
    epochs = sorted({e for per in snapshots.values() for e in per})
    rows = list(snapshots)
    fig, axes = plt.subplots(len(rows), len(epochs) + 2, figsize=(1.9 * (len(epochs) + 2), 1.9 * len(rows)),
                             squeeze=False)  # fmt: skip
    for i, setup in enumerate(rows):
        axes[i, 0].imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(setup, fontsize=9)
        axes[i, -1].imshow(mask.numpy(), cmap="gray", vmin=0, vmax=1)
        for j, epoch in enumerate(epochs, start=1):
            method = snapshots[setup].get(epoch)
            if method is not None:
                with torch.no_grad():
                    prob = method.predict(image[None]).float().softmax(1)[0, 1]
                axes[i, j].imshow(prob.numpy(), cmap="gray", vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(f"after {epoch} epochs", fontsize=9)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, -1].set_title("truth", fontsize=9)
    _save(plt, fig, axes.flat, path)
