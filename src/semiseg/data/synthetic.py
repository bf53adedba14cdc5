"""Generated data: the built-in "shapes" set used by ``semiseg demo`` and the test suite.

Each image is a smooth random texture with a few objects drawn on it: class 1 = ellipses,
class 2 = rectangles, class 3 = triangles (as many classes as requested, up to 4 including
background). By default an image holds 1-3 objects of random classes, so a class is often absent;
with ``every_class`` it holds one object of every class (plus at most one more), as in anatomy
where every structure is present. Object intensity only differs slightly from the background and Gaussian noise is
added, so a pixel's class cannot be read off its intensity alone: shape and context matter.
Everything is deterministic from the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semiseg.config import DataConfig
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.registry import register_dataset


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    coarse = rng.random((cells + 1, cells + 1))
    ys = np.linspace(0, cells, h)
    xs = np.linspace(0, cells, w)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    c00 = coarse[y0][:, x0]
    c01 = coarse[y0][:, x0 + 1]
    c10 = coarse[y0 + 1][:, x0]
    c11 = coarse[y0 + 1][:, x0 + 1]
    return c00 * (1 - fy) * (1 - fx) + c01 * (1 - fy) * fx + c10 * fy * (1 - fx) + c11 * fy * fx


def _shape_mask(rng: np.random.Generator, kind: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.1, 0.22) * h, rng.uniform(0.1, 0.22) * w
    if kind == 1:  # ellipse
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if kind == 2:  # rectangle
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    # triangle pointing up
    top = cy - ry
    rel = (yy - top) / (2 * ry)
    return (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * rx)


def make_shapes(
    num_images: int = 120,
    size: int = 64,
    num_classes: int = 3,
    seed: int = 0,
    noise: float = 0.08,
    every_class: bool = False,
) -> list[Record]:
    """Generate ``num_images`` records of shape ``[1, size, size]`` with ``num_classes`` classes.

    Args:
        num_images: Number of images.
        size: Side length in pixels.
        num_classes: Classes including background, 2 to 4.
        seed: Random seed; the same seed gives the same images.
        noise: Standard deviation of the additive Gaussian noise.
        every_class: Draw one object of every foreground class (in random order, plus at most one
            more of a random class) and redraw an image's objects until every class keeps at least
            one pixel; ``False``: 1-3 objects of random classes.
    """
    if not 2 <= num_classes <= 4:
        raise ValueError("shapes: num_classes must be 2, 3 or 4")
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        background = 0.35 + 0.3 * _smooth_noise(rng, size, size)
        while True:
            image, mask = background.copy(), np.zeros((size, size), dtype=np.int64)
            if every_class:
                kinds = [int(k) for k in rng.permutation(np.arange(1, num_classes))]
                kinds += [int(rng.integers(1, num_classes)) for _ in range(int(rng.integers(0, 2)))]
            else:
                kinds = None
            for j in range(len(kinds) if kinds else int(rng.integers(1, 4))):
                kind = kinds[j] if kinds else int(rng.integers(1, num_classes))
                region = _shape_mask(rng, kind, size, size)
                mask[region] = kind
                image[region] += rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.25)
            if not every_class or len(np.unique(mask)) == num_classes:
                break
        image += rng.normal(0.0, noise, size=image.shape)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)[None]
        records.append(Record(id=f"shape{i:04d}", image=image, mask=mask, source="<generated>"))
    return records


def load_shapes(
    num_images: int = 120, size: int = 64, num_classes: int = 3, seed: int = 0, every_class: bool = False
) -> DatasetBundle:
    names = ["background", "ellipse", "rectangle", "triangle"][:num_classes]
    return DatasetBundle(
        name="shapes",
        num_classes=num_classes,
        in_channels=1,
        train=make_shapes(num_images, size, num_classes, seed, every_class=every_class),
        class_names=names,
    )


@register_dataset("shapes", needs_root=False)
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: shapes``: generated in memory (``num_images``, ``shapes_classes``,
    ``shapes_every_class``), no files."""
    return load_shapes(
        cfg.num_images, max(cfg.image_size), cfg.shapes_classes, seed=1234, every_class=cfg.shapes_every_class
    )
