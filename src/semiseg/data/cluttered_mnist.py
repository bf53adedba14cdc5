"""Cluttered MNIST (presence-absence-translation paper, §4.1 and Fig. 6): generation from MNIST digits.

A *present* image holds one complete MNIST digit at a random position on clutter; an *absent*
image holds clutter only. Clutter is made of random 10×10 crops of other digits of the same fold,
added to the canvas; where the sum exceeds 1 the pixel is "dithered": replaced by a draw from
N(0.7, 0.33²) clipped to [0, 1] (the authors' code; the paper only says overlaps are dithered).
The segmentation target of a present image is its digit's pixels (> 0.5 in [0, 1]).

Variants (paper, Table 1): ``48-simple`` (48×48, 8 clutter pieces), ``48-hard`` (48×48, 24) and
``128`` (128×128, 80).

Folds: the 10,000 MNIST test digits split once into train / val / test digits (8,000 / 1,000 /
1,000 by default) by a permutation with the fixed :data:`FOLD_SEED` (:func:`mnist_folds`; shared
with the SSLDEC tables, whatever the generator's seed);
each fold's images use only that fold's digits, as main digits and as clutter. Every digit of a
fold is the main digit of one present image, and the fold gets as many absent images.

Everything is deterministic from ``seed``: each (fold, domain) draws from its own
``numpy.random.SeedSequence([seed, fold, domain])`` stream. :func:`load_variant` generates a
variant once and caches it on disk (8-bit images, one ``.npz`` per fold and a ``manifest.json``),
under ``$SEMISEG_CACHE`` (default ``~/.cache/semiseg``): the data root may be read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semiseg.config import DataConfig
from semiseg.data.mnist import FOLD_SEED, FOLD_SIZES, FOLDS, mnist_folds
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.registry import register_dataset
from semiseg.errors import DataError

#: name → (image side, clutter pieces per image) (paper, Table 1)
VARIANTS: dict[str, tuple[int, int]] = {"48-simple": (48, 8), "48-hard": (48, 24), "128": (128, 80)}
#: side of a clutter crop (pixels)
CROP = 10
#: a digit's pixels above this (in [0, 1]) are its segmentation mask
MASK_THRESHOLD = 0.5
#: dithering of overlaps: N(mean, std²) clipped to [0, 1] (the authors' code)
DITHER_MEAN, DITHER_STD = 0.7, 0.33
#: domain ids of the generator streams
PRESENT, ABSENT = 0, 1


def dither(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``canvas`` with every pixel above 1 replaced by a clipped N(0.7, 0.33²) draw (in place).

    Examples:
        >>> out = dither(np.array([0.2, 1.5, 1.0]), np.random.default_rng(0))
        >>> float(out[0]), float(out[2]), 0.0 <= float(out[1]) <= 1.0
        (0.2, 1.0, True)
    """
    over = canvas > 1.0
    canvas[over] = np.clip(rng.normal(DITHER_MEAN, DITHER_STD, int(over.sum())), 0.0, 1.0)
    return canvas


def add_clutter(
    canvas: np.ndarray, digits: np.ndarray, pool: np.ndarray, pieces: int, rng: np.random.Generator
) -> np.ndarray:
    """Adds ``pieces`` random ``CROP``×``CROP`` crops of digits drawn from ``pool`` (indices into
    ``digits``) at random positions of ``canvas`` (in place; no dithering). Returns the sources used.

    Shape:
        canvas ``[S, S]`` float, digits ``[N, 28, 28]`` float in [0, 1] → sources ``[pieces]``.
    """
    side, digit_side = canvas.shape[0], digits.shape[1]
    sources = rng.choice(pool, size=pieces)
    for j in sources:
        cy, cx = rng.integers(0, digit_side - CROP + 1, size=2)
        ty, tx = rng.integers(0, side - CROP + 1, size=2)
        canvas[ty : ty + CROP, tx : tx + CROP] += digits[j, cy : cy + CROP, cx : cx + CROP]
    return sources


@dataclass
class ClutteredFold:
    """One fold of one variant: present images (one per digit of the fold) and as many absent ones.

    Attributes:
        present: ``[N, S, S]`` float32 in [0, 1].
        masks: ``[N, S, S]`` bool, the main digit's pixels.
        labels: ``[N]`` int, the main digit's class (0–9).
        digit_index: ``[N]`` int, the main digit's index in the MNIST arrays.
        position: ``[N, 2]`` int, top-left corner (y, x) of the main digit.
        absent: ``[N, S, S]`` float32 in [0, 1].
        present_sources, absent_sources: ``[N, pieces]`` int, MNIST indices of the clutter crops.
    """

    present: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    digit_index: np.ndarray
    position: np.ndarray
    absent: np.ndarray
    present_sources: np.ndarray
    absent_sources: np.ndarray


def generate_fold(
    digits: np.ndarray, labels: np.ndarray, fold: np.ndarray, variant: str, seed: int, fold_id: int
) -> ClutteredFold:
    """Present and absent images of one fold (see the module docstring).

    Args:
        digits: ``[M, 28, 28]`` float in [0, 1] (all MNIST digits).
        labels: ``[M]`` digit classes.
        fold: indices of this fold's digits (main digits and clutter sources).
        variant: a key of :data:`VARIANTS`.
        seed, fold_id: select the fold's random streams.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown cluttered-MNIST variant {variant!r} (choose from {', '.join(VARIANTS)})")
    if len(fold) < 2:
        raise ValueError("a fold needs at least two digits (clutter comes from the other digits)")
    side, pieces = VARIANTS[variant]
    digit_side = digits.shape[1]
    n = len(fold)
    present = np.zeros((n, side, side), np.float32)
    masks = np.zeros((n, side, side), bool)
    position = np.zeros((n, 2), np.int64)
    present_sources = np.zeros((n, pieces), np.int64)
    absent = np.zeros((n, side, side), np.float32)
    absent_sources = np.zeros((n, pieces), np.int64)

    rng = np.random.default_rng(np.random.SeedSequence([seed, fold_id, PRESENT]))
    order = rng.permutation(fold)
    for i, j in enumerate(order):
        y, x = rng.integers(0, side - digit_side + 1, size=2)
        canvas = np.zeros((side, side), np.float64)
        canvas[y : y + digit_side, x : x + digit_side] = digits[j]
        present_sources[i] = add_clutter(canvas, digits, fold[fold != j], pieces, rng)
        present[i] = dither(canvas, rng)
        masks[i, y : y + digit_side, x : x + digit_side] = digits[j] > MASK_THRESHOLD
        position[i] = (y, x)
    rng = np.random.default_rng(np.random.SeedSequence([seed, fold_id, ABSENT]))
    for i in range(n):
        canvas = np.zeros((side, side), np.float64)
        absent_sources[i] = add_clutter(canvas, digits, fold, pieces, rng)
        absent[i] = dither(canvas, rng)
    return ClutteredFold(
        present=present,
        masks=masks,
        labels=np.asarray(labels)[order].astype(np.int64),
        digit_index=order.astype(np.int64),
        position=position,
        absent=absent,
        present_sources=present_sources,
        absent_sources=absent_sources,
    )


#: class names of the segmentation (the digit against everything else, clutter included)
CLASS_NAMES = ["background", "digit"]

#: bump when the generated images change for the same arguments (invalidates caches)
GENERATOR_VERSION = 1
#: the MNIST files the folds come from (the 10,000 test digits)
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def cache_root() -> Path:
    """``$SEMISEG_CACHE`` or ``~/.cache/semiseg`` (:func:`semiseg.data.store.cache_dir`)."""
    from semiseg.data.store import cache_dir

    return cache_dir()


def _quantized(fold: ClutteredFold) -> dict[str, np.ndarray]:
    """The arrays of a fold as stored: images as 8-bit levels, everything else as is."""
    out = {}
    for f in dataclasses.fields(ClutteredFold):
        value = getattr(fold, f.name)
        out[f.name] = np.round(value * 255).astype(np.uint8) if f.name in ("present", "absent") else value
    return out


def _from_stored(arrays) -> ClutteredFold:
    values = {f.name: arrays[f.name] for f in dataclasses.fields(ClutteredFold)}
    for name in ("present", "absent"):
        values[name] = values[name].astype(np.float32) / 255
    return ClutteredFold(**values)


def _read(path: Path) -> ClutteredFold:
    with np.load(path) as arrays:
        return _from_stored(arrays)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 (a file identity, not security)


def load_variant(
    mnist_root: str | Path,
    variant: str,
    seed: int = 0,
    fold_sizes: Sequence[int] = FOLD_SIZES,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, ClutteredFold], Path]:
    """The three folds of ``variant``, generated on the first call and read from the cache after.

    Images come back as the stored 8-bit levels / 255 (also on the first call), so a run sees the
    same pixels whether it generated them or not.

    Args:
        mnist_root: folder with the MNIST IDX test files (:data:`MNIST_FILES`).
        variant, seed, fold_sizes: what to generate (:func:`mnist_folds`, :func:`generate_fold`).
        cache_dir: default :func:`cache_root` ``/ "cluttered_mnist"``.

    Returns:
        ``({"train" | "val" | "test": fold}, the cache folder)``.
    """
    from semiseg.data.mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx

    if variant not in VARIANTS:
        raise ValueError(f"unknown cluttered-MNIST variant {variant!r} (choose from {', '.join(VARIANTS)})")
    root = Path(mnist_root)
    side, pieces = VARIANTS[variant]
    manifest = {
        "dataset": "cluttered_mnist",
        "variant": variant,
        "side": side,
        "clutter_pieces": pieces,
        "crop": CROP,
        "seed": seed,
        "fold_sizes": dict(zip(FOLDS, map(int, fold_sizes))),
        "generator_version": GENERATOR_VERSION,
        "mnist_md5": {name: _md5(root / name) if (root / name).is_file() else None for name in MNIST_FILES},
    }
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cache_dir or cache_root() / "cluttered_mnist") / f"{variant}-s{seed}-{key}"
    if _valid(folder, manifest):
        return {f: _read(folder / f"{f}.npz") for f in FOLDS}, folder

    digits = read_idx(root / MNIST_FILES[0], IMAGES_MAGIC).astype(np.float64) / 255
    labels = read_idx(root / MNIST_FILES[1], LABELS_MAGIC)
    if len(digits) != len(labels) or len(digits) < sum(fold_sizes):
        raise DataError(
            root / MNIST_FILES[0],
            f"{len(digits)} digits and {len(labels)} labels; the folds need {sum(fold_sizes)} digits",
        )
    folds = mnist_folds(len(digits), FOLD_SEED, fold_sizes)  # the same folds for every seed and method
    stored = {
        f: _quantized(generate_fold(digits, labels, folds[f], variant, seed, i)) for i, f in enumerate(FOLDS)
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for f, arrays in stored.items():
            np.savez_compressed(temp / f"{f}.npz", **arrays)
        files = {f"{f}.npz": hashlib.sha256((temp / f"{f}.npz").read_bytes()).hexdigest() for f in FOLDS}
        (temp / "manifest.json").write_text(json.dumps({**manifest, "files": files}, indent=1))
        if not _valid(folder, manifest):  # else another process wrote it meanwhile: keep theirs
            stale = folder.with_name(f".{folder.name}-stale-{os.getpid()}")
            if folder.exists():  # an invalid earlier copy: move it aside, then replace it
                os.replace(folder, stale)
            try:
                os.replace(temp, folder)
            except OSError as exc:
                if not _valid(folder, manifest):
                    raise DataError(folder, f"cannot write the generated data: {exc}") from None
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return {f: _from_stored(arrays) for f, arrays in stored.items()}, folder


def _valid(folder: Path, manifest: dict) -> bool:
    """The cached folder exists, its manifest matches and its files have the recorded hashes."""
    try:
        found = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    files = found.pop("files", {})
    if found != manifest or set(files) != {f"{f}.npz" for f in FOLDS}:
        return False
    return all(hashlib.sha256((folder / name).read_bytes()).hexdigest() == h for name, h in files.items())


def fold_records(fold: ClutteredFold, name: str, absent: bool) -> list[Record]:
    """Records of a fold: one per present image (``label`` = the digit, ``mask`` = its pixels) and,
    with ``absent``, one per absent image (``label`` None, an all-background mask, so its tag says
    "absent"). Images ``[1, S, S]`` float32, masks int64."""
    records = [
        Record(f"{name}-p{i:05d}", fold.present[i][None], fold.masks[i].astype(np.int64), int(fold.labels[i]))
        for i in range(len(fold.present))
    ]
    if absent:
        empty = np.zeros(fold.absent.shape[1:], np.int64)
        records += [Record(f"{name}-a{i:05d}", fold.absent[i][None], empty) for i in range(len(fold.absent))]
    return records


@register_dataset("cluttered_mnist", folder="mnist")
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``train``: the train fold's present and absent images; ``val`` / ``test``: those folds'
    present images (Dice needs a digit; the absent ones stay in the cache for figures)."""
    folds, folder = load_variant(path, cfg.variant, seed=cfg.generator_seed, fold_sizes=FOLD_SIZES)
    return DatasetBundle(
        "cluttered_mnist",
        num_classes=2,
        in_channels=1,
        train=fold_records(folds["train"], "train", absent=True),
        val=fold_records(folds["val"], "val", absent=False),
        test=fold_records(folds["test"], "test", absent=False),
        class_names=list(CLASS_NAMES),
        root=str(folder),
    )


def export_folder(folds: dict[str, ClutteredFold], out: str | Path, manifest: dict | None = None) -> Path:
    """Writes the folds as a ``folder`` dataset: ``out/{train,val,test}/{images,masks}/<id>.png``
    (8-bit images; masks 0 / 1, all 0 for absent images so their tag says absent) plus
    ``labels.json`` (id → digit, or None for absent images) and ``manifest.json``. Written to a
    temporary folder beside ``out`` and moved in place; ``out`` must not exist yet.

    Raises:
        DataError: ``out`` exists.
    """
    from PIL import Image

    out = Path(out)
    if out.exists():
        raise DataError(out, "exists already; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        labels: dict[str, int | None] = {}
        for name, fold in folds.items():
            for kind in ("images", "masks"):
                (temp / name / kind).mkdir(parents=True)
            for r in fold_records(fold, name, absent=True):
                Image.fromarray(np.round(r.image[0] * 255).astype(np.uint8)).save(
                    temp / name / "images" / f"{r.id}.png"
                )
                Image.fromarray(r.mask.astype(np.uint8)).save(temp / name / "masks" / f"{r.id}.png")
                labels[r.id] = r.label
        (temp / "labels.json").write_text(json.dumps(labels, indent=0))
        (temp / "manifest.json").write_text(json.dumps(manifest or {}, indent=1))
        os.replace(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out
