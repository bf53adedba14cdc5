"""The IODA paper's toy problem (§4): a ring of one texture on a background of another.

Each image is ``side × side`` (the paper: 128 × 128) in [0, 1]: a random crop of the background
texture, and inside a ring (the part of a disk between two concentric circles) a random crop of
the ring texture; the mask is the ring (binary labels). Ring geometry per image: outer radius
R ~ U(20, 50) · side / 128, inner radius r = a · R with a ~ U(0.3, 0.8), centre uniform such that
the ring lies inside the image; a pixel belongs to the ring when r ≤ ‖p − c‖ ≤ R (pixel centres).

Textures (the paper's Brodatz 77 and 17 are not available here):

- ``gravel`` (background) and ``brick`` (ring), the default: the natural greyscale textures that
  scikit-image ships in its wheel (``skimage/data/gravel.png`` and ``brick.png``, 512 × 512; install
  the ``textures`` extra: ``pip install 'semiseg[textures]'``); read as files, scikit-image is not
  imported. Stochastic against periodic, like the paper's pair.
- ``grain`` (band-passed noise: the difference of Gaussian blurs at 1 and 3 px) and ``weave`` (two
  orthogonal gratings of period 8 px plus noise): procedural, no dependency, for tests.

Inputs are normalised between 0 and 1 as in the paper ("inputs are normalized between 0 and 1"),
each texture image on its own, as one would each scanned Brodatz plate: a natural texture is mapped
from its grey-level range [min, max] to [0, 1] (gravel: mean 0.53, sd 0.16; brick: mean 0.34, sd
0.18); a procedural texture is standardised (mean 0, sd 1) and mapped to clip((t + 3) / 6, 0, 1).
Development (validation only, benchmarks/dev/ioda-dev.md): with both textures standardised, or as
grey levels / 255 (means 0.50 and 0.44), 256-hidden networks learnt nothing beyond the mean ring map
(validation MSE 0.124); a ridge regression on 8×8 block means scores 0.111 on grey levels / 255 and
0.070 with each texture's own range.

Dataset ``texture_rings``: fixed train / validation / test splits of ``data.num_images`` images each
(the paper: 500), deterministic from ``data.generator_seed`` (one stream per split), square images of
side ``max(data.image_size)``, textures ``data.textures`` ([background, ring]).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from semiseg.config import DataConfig
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.registry import register_dataset
from semiseg.errors import ConfigError

__all__ = ["TEXTURES", "make_ring", "make_texture_rings", "texture"]

#: texture name → "skimage" (a file of scikit-image's wheel) or "procedural"
TEXTURES = {"gravel": "skimage", "brick": "skimage", "grain": "procedural", "weave": "procedural"}
TEXTURE_SIDE = 512
SPLITS = ("train", "val", "test")


def _skimage_file(name: str) -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"data.textures: texture '{name}' needs scikit-image (pip install 'semiseg[textures]'), or use the "
            "procedural textures [grain, weave]"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.png"


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with wrap-around (FFT)."""
    f = np.fft.fftfreq(x.shape[0])[:, None] ** 2 + np.fft.fftfreq(x.shape[1])[None, :] ** 2
    return np.real(np.fft.ifft2(np.fft.fft2(x) * np.exp(-2 * (np.pi * sigma) ** 2 * f)))


@lru_cache(maxsize=8)
def texture(name: str) -> np.ndarray:
    """The ``[512, 512]`` float32 texture ``name`` in [0, 1]."""
    if name not in TEXTURES:
        raise ConfigError(f"data.textures: unknown texture '{name}' (known: {', '.join(TEXTURES)})")
    if TEXTURES[name] == "skimage":
        from PIL import Image

        with Image.open(_skimage_file(name)) as im:
            t = np.asarray(im.convert("L"), dtype=np.float64)
        return ((t - t.min()) / (t.max() - t.min())).astype(np.float32)
    else:
        rng = np.random.default_rng([7, sorted(TEXTURES).index(name)])
        noise = rng.standard_normal((TEXTURE_SIDE, TEXTURE_SIDE))
        if name == "grain":
            t = _blur(noise, 1.0) - _blur(noise, 3.0)
        else:  # weave: horizontal and vertical gratings (period 8 px), alternating in 8-px blocks
            yy, xx = np.mgrid[:TEXTURE_SIDE, :TEXTURE_SIDE]
            checker = ((yy // 8 + xx // 8) % 2).astype(np.float64)
            t = (
                checker * np.sin(2 * np.pi * yy / 8)
                + (1 - checker) * np.sin(2 * np.pi * xx / 8)
                + 0.3 * noise
            )
    t = (t - t.mean()) / t.std()
    return np.clip((t + 3) / 6, 0, 1).astype(np.float32)


Ring = tuple[float, float, float, float]  #: (cy, cx, r, R) in pixels


def make_ring(rng: np.random.Generator, side: int, outer: Sequence[float] = (20.0, 50.0),
              inner_ratio: Sequence[float] = (0.3, 0.8)) -> tuple[np.ndarray, Ring]:  # fmt: skip
    """A ring mask ``[side, side]`` (bool) and its ``(cy, cx, r, R)``; radii in pixels of a 128² image,
    scaled by ``side / 128``.

    Examples:
        >>> mask, (cy, cx, r, R) = make_ring(np.random.default_rng(0), 128)
        >>> bool(mask[round(cy), round(cx)]), 20 <= R <= 50, 0.3 * R <= r <= 0.8 * R
        (False, True, True)
    """
    scale = side / 128
    big = rng.uniform(outer[0], outer[1]) * scale
    small = rng.uniform(inner_ratio[0], inner_ratio[1]) * big
    cy, cx = rng.uniform(big, side - 1 - big, size=2)
    yy, xx = np.mgrid[:side, :side]
    d = np.hypot(yy - cy, xx - cx)
    return (d >= small) & (d <= big), (float(cy), float(cx), float(small), float(big))


def make_texture_rings(
    n: int, side: int, seed: int, split: int, textures: Sequence[str] = ("gravel", "brick")
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images of split number ``split``: images ``[n, 1, side, side]`` float32 in [0, 1], masks
    ``[n, side, side]`` int64 (1 = ring), ring parameters ``[n, 4]`` (cy, cx, r, R)."""
    background, ring = texture(textures[0]), texture(textures[1])
    rng = np.random.default_rng(np.random.SeedSequence([seed, split]))
    images = np.empty((n, 1, side, side), np.float32)
    masks = np.empty((n, side, side), np.int64)
    params = np.empty((n, 4), np.float64)
    for i in range(n):
        mask, params[i] = make_ring(rng, side)
        (by, bx), (ry, rx) = rng.integers(0, TEXTURE_SIDE - side + 1, size=(2, 2))
        t = np.where(mask, ring[ry : ry + side, rx : rx + side], background[by : by + side, bx : bx + side])
        images[i, 0] = t
        masks[i] = mask
    return images, masks, params


def load_texture_rings(
    n: int, side: int, seed: int, textures: Sequence[str] = ("gravel", "brick")
) -> DatasetBundle:
    """The ``texture_rings`` bundle: fixed train / val / test splits of ``n`` images each."""
    if len(textures) != 2:
        raise ConfigError(f"data.textures: give [background, ring], got {list(textures)}")
    parts = {}
    for k, name in enumerate(SPLITS):
        images, masks, _ = make_texture_rings(n, side, seed, k, textures)
        parts[name] = [Record(f"{name}{i:04d}", images[i], masks[i]) for i in range(n)]
    return DatasetBundle("texture_rings", num_classes=2, in_channels=1, train=parts["train"], val=parts["val"],
                         test=parts["test"], class_names=["background", "ring"])  # fmt: skip


@register_dataset("texture_rings", needs_root=False)
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: texture_rings`` (:func:`load_texture_rings`)."""
    return load_texture_rings(cfg.num_images, max(cfg.image_size), cfg.generator_seed, cfg.textures)
