"""MNIST digits (LeCun et al.) from the original IDX gzip files, as binary digit-vs-background masks.

Files read from ``root``::

    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz     required (10,000 test digits)
    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz    optional, appended after

Each record is a ``[1, 28, 28]`` image in ``[0, 1]`` with ``label`` = the digit and ``mask`` = the
pixels brighter than ``foreground_threshold``. MNIST has no segmentation protocol of its own, so
everything goes to ``bundle.train`` and a split spec carves validation / test sets from it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semiseg.config import DataConfig
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.registry import register_dataset
from semiseg.errors import ConfigError, DataError

#: IDX magic numbers: ``0x0000_08_0N`` = unsigned bytes with N dimensions.
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
#: File-name prefixes, in loading order (also used in record ids); only "t10k" is required.
PARTS = ("t10k", "train")
CLASS_NAMES = ["background", "digit"]


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Reads a gzip-compressed IDX file of unsigned bytes.

    Args:
        path: ``*-idx?-ubyte.gz`` file.
        magic: Expected magic number (2051 for images, 2049 for labels); its low byte is the
            number of dimensions.

    Returns:
        ``uint8`` array of the dimensions given in the header, e.g. ``[N, 28, 28]`` or ``[N]``.

    Raises:
        DataError: Missing or unreadable file, wrong magic number, or a data size that does not
            match the header.
    """
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"cannot read gzip file: {exc}") from exc
    ndim = magic & 0xFF
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise DataError(path, f"file too short for an IDX header ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(path, f"bad IDX magic number {found} (expected {magic} for {kind})")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = int(np.prod(dims))
    if len(data) - header_size != expected:
        raise DataError(
            path,
            f"IDX header announces {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"file has {len(data) - header_size}",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


#: seed of the MNIST fold definition, shared by the cluttered-MNIST sets (issue 12) and the SSLDEC
#: tables (the cluttered generator's own seed changes the images, not which digits are in which fold)
FOLD_SEED = 0
#: digits per fold (train, val, test) drawn from the 10,000 MNIST test digits
FOLD_SIZES: tuple[int, int, int] = (8000, 1000, 1000)
FOLDS: tuple[str, str, str] = ("train", "val", "test")


def mnist_folds(num_digits: int, seed: int = 0, sizes: Sequence[int] = FOLD_SIZES) -> dict[str, np.ndarray]:
    """Digit indices of the train / val / test folds: consecutive slices of one seeded permutation.

    Examples:
        >>> folds = mnist_folds(10, seed=0, sizes=(6, 2, 2))
        >>> [len(folds[f]) for f in FOLDS], sorted(np.concatenate(list(folds.values())).tolist()) == list(range(10))
        ([6, 2, 2], True)
    """
    if len(sizes) != len(FOLDS) or any(s < 1 for s in sizes):
        raise ValueError(f"fold sizes must be three positive counts, got {list(sizes)}")
    if sum(sizes) > num_digits:
        raise ValueError(f"fold sizes {list(sizes)} need {sum(sizes)} digits, only {num_digits} given")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x4D4E])).permutation(num_digits)
    bounds = np.cumsum([0, *sizes])
    return {f: np.sort(order[bounds[i] : bounds[i + 1]]) for i, f in enumerate(FOLDS)}


def _read_part(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads and cross-checks one images/labels pair; returns ``[N, H, W]`` and ``[N]``."""
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            labels_path, f"has {len(labels)} labels but {images_path.name} has {len(images)} images"
        )
    if labels.size and labels.max() > 9:
        bad = sorted({int(v) for v in labels[labels > 9]})[:5]
        raise DataError(labels_path, f"label values {bad} outside digits 0..9")
    return images, labels


def load_mnist(root: str | os.PathLike, *, foreground_threshold: float = 0.5) -> DatasetBundle:
    """Loads MNIST as a binary digit-vs-background segmentation dataset.

    Args:
        root: Folder with the IDX ``.gz`` files.
        foreground_threshold: Pixels with intensity above it (in ``[0, 1]``) are the digit.

    Returns:
        Bundle ``mnist``: 2 classes (background, digit), 1 input channel; all records in
        ``train`` (t10k first, then train if present), ids ``mnist_t10k_00000`` /
        ``mnist_train_00000``; ``val``/``test`` are ``None``.

    Raises:
        DataError: Missing folder or t10k files, only one of the two train files, or malformed
            IDX files.
        ConfigError: ``foreground_threshold`` outside ``[0, 1)``.
    """
    if not 0.0 <= foreground_threshold < 1.0:
        raise ConfigError(f"foreground_threshold must be in [0, 1); got {foreground_threshold}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "MNIST folder not found")

    records: list[Record] = []
    for prefix in PARTS:
        images_path = root / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        if prefix != "t10k" and not images_path.exists() and not labels_path.exists():
            continue  # the optional training part is absent
        raw, labels = _read_part(root, prefix)
        # Vectorised: one conversion for the whole part; records hold views into these arrays.
        images = (raw.astype(np.float32) / 255.0)[:, None]
        masks = (images[:, 0] > foreground_threshold).astype(np.int64)
        source = str(images_path)
        records.extend(
            Record(
                id=f"mnist_{prefix}_{i:05d}",
                image=images[i],
                mask=masks[i],
                label=digit,
                source=source,
            )
            for i, digit in enumerate(labels.tolist())
        )

    return DatasetBundle(
        name="mnist",
        num_classes=2,
        in_channels=1,
        train=records,
        val=None,
        test=None,
        class_names=list(CLASS_NAMES),
    )


@register_dataset("mnist", folder="mnist")
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    return load_mnist(path)


def load_mnist_digits(root: str | os.PathLike) -> DatasetBundle:
    """MNIST digit classification from the IDX test split: the 8,000 digits of the shared train fold
    (:func:`mnist_folds`, :data:`FOLD_SEED`) train; the val and test folds together (2,000 digits) are
    the test set (SSLDEC's protocol here); no validation set (``data.split.val_from_labeled`` carves
    it from the labeled draw).

    Returns:
        Bundle ``mnist_digits``: task ``classify``, 10 classes, 1 input channel, records ``[1, 28, 28]``
        in [0, 1] with the digit as ``label`` and no mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "MNIST folder not found")
    raw, labels = _read_part(root, "t10k")
    images = (raw.astype(np.float32) / 255.0)[:, None]
    source = str(root / "t10k-images-idx3-ubyte.gz")
    folds = mnist_folds(len(images), FOLD_SEED)

    def records(indices) -> list[Record]:
        return [
            Record(f"digit_{i:05d}", images[i], None, label=int(labels[i]), source=source) for i in indices
        ]

    return DatasetBundle(
        name="mnist_digits",
        num_classes=10,
        in_channels=1,
        train=records(folds["train"]),
        val=None,
        test=records(np.concatenate([folds["val"], folds["test"]])),
        class_names=[str(d) for d in range(10)],
        task="classify",
    )


@register_dataset("mnist_digits", folder="mnist")
def _load_digits(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: mnist_digits``: digit classification (:func:`load_mnist_digits`)."""
    return load_mnist_digits(path)
