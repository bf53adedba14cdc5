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
    every = prepare_data(first_cfg, ctx.data_root, bundle=ctx.bundle).test
    test = every[:: max(1, len(every) // n_images)][:n_images]  # spread over the test set
    num_classes = next(iter(loaded.values()))[2]["num_classes"]
    compare_models({t: (m, cfg) for t, (m, cfg, _) in loaded.items()}, test, path, num_classes)
