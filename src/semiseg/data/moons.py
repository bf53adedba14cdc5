"""Two interleaving half-moons (the SSLDEC paper's toy problem, §IV-C), generated with numpy.

The construction is scikit-learn's ``make_moons`` (not a dependency here): ``n // 2`` points on the
upper unit half-circle (class 0), the rest on a lower half-circle shifted by (1, −0.5) (class 1),
each coordinate plus Gaussian noise of standard deviation ``noise``, then shuffled. Deterministic
from ``seed``.

Dataset ``moons`` (classification): ``data.num_images`` points (the paper: 1000) with noise 0.1 from
``data.generator_seed`` train; a fresh draw of as many points (the next seed) is the test set. A
point is a 1×1 "image" with 2 channels (``data.image_size: [1, 1]``), so the engine's image paths
carry it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semiseg.config import DataConfig
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.registry import register_dataset

__all__ = ["MOONS_NOISE", "load_moons", "make_moons"]

#: noise of the moons dataset (the paper: 0.1)
MOONS_NOISE = 0.1


def make_moons(n: int = 1000, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of two half-moons and their classes.

    Returns:
        ``(points [n, 2] float32, labels [n] int64)``.

    Examples:
        >>> x, y = make_moons(6, noise=0.0, seed=0)
        >>> x.shape, sorted(y.tolist())
        ((6, 2), [0, 0, 0, 1, 1, 1])
    """
    if n < 2:
        raise ValueError(f"need at least 2 points, got {n}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], 1)
    inner = np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], 1)
    points = np.concatenate([outer, inner]) + rng.normal(0.0, noise, size=(n, 2))
    labels = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    order = rng.permutation(n)
    return points[order].astype(np.float32), labels[order]


def load_moons(n: int = 1000, seed: int = 0, noise: float = MOONS_NOISE) -> DatasetBundle:
    """The moons classification bundle: ``n`` training points (seed ``seed``) and ``n`` fresh test
    points (seed ``seed + 1``), records ``[2, 1, 1]`` with their moon as ``label``."""

    def records(prefix: str, draw: int) -> list[Record]:
        x, y = make_moons(n, noise, draw)
        return [Record(f"{prefix}{i:04d}", x[i][:, None, None], None, label=int(y[i])) for i in range(n)]

    return DatasetBundle("moons", num_classes=2, in_channels=2, train=records("point", seed),
                         test=records("test", seed + 1), class_names=["upper", "lower"], task="classify")  # fmt: skip


@register_dataset("moons", needs_root=False)
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: moons`` (:func:`load_moons`; ``data.num_images`` points, ``data.generator_seed``)."""
    return load_moons(cfg.num_images, cfg.generator_seed)
