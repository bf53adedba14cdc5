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


def translation_run_figure(run_dir: Path, path: Path, data_root: str | None, n_images: int = 6) -> None:
    """:func:`translation_figure` of a trained ``translation`` run on ``n_images`` present and absent
    images of its cluttered-MNIST test fold, spread over the fold."""
    import torch

    from semiseg.data import dataset_folder
    from semiseg.data.cluttered_mnist import load_variant
    from semiseg.engine.run import load_trained

    method, cfg, _ = load_trained(run_dir / "best.pt")
    folds, _ = load_variant(
        dataset_folder(cfg.data, data_root), cfg.data.variant, seed=cfg.data.generator_seed
    )
    test = folds["test"]
    pick = torch.linspace(0, len(test.present) - 1, n_images).long().numpy()
    present = torch.from_numpy(test.present[pick]).float()[:, None]
    absent = torch.from_numpy(test.absent[pick]).float()[:, None]
    translation_figure(method, present, torch.from_numpy(test.masks[pick]), absent, path)


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
