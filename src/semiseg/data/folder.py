"""A user's own dataset: a folder of images and (optionally) masks paired by file name.

Two layouts are recognised::

    root/images/a.png   root/masks/a.png        everything goes to bundle.train
    root/train/images/… root/train/masks/…      fixed splits: train (required), val, test
    root/val/images/…   root/test/images/…

Images and masks are paired by file stem, so ``images/a.jpg`` may have ``masks/a.png``. An image
without a mask is an unlabeled record (``mask=None``); a mask without an image is an error.

Volumes: NIfTI files (``.nii`` / ``.nii.gz``, :mod:`semiseg.data.volume_io`) make a volume dataset
(records ``[1, D, H, W]`` with their spacing; ``case.nii.gz`` pairs with ``masks/case.nii.gz``). The
image and its mask must have the same shape and affine. ``data.intensity: auto`` scales each volume to
[0, 1] by its minimum and maximum. A 2D model trains on the training volumes' slices (each volume one
group, so splits by group keep a patient's slices together) and is evaluated per volume. Mixing
NIfTI and 2D image files is an error.

An optional ``root/labels.json`` maps image stems to an image-level class (an integer, or null for
none), e.g. the digit of an exported cluttered-MNIST image; split rules such as
``data.split.labeled_labels`` read it. An optional ``root/tags.json`` maps 2D image stems to the
foreground classes present (``[]``: none): image-level tags for images without a mask
(``data.split.unlabeled_supervision: tag``), checked against the mask of an image that has one; an
optional ``root/sizes.json`` maps them to rough region sizes (``{"<class>": pixels}`` at the image's
own resolution) for ``unlabeled_supervision: size``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from semiseg.config import DataConfig
from semiseg.data.io import (
    CHANNEL_MODES,
    INTENSITY_MODES,
    check_same_size,
    list_images,
    normalize_intensity,
    read_image,
    read_mask,
    unlabeled_to_ignore,
)
from semiseg.data.records import DatasetBundle, Record, load_records
from semiseg.data.registry import register_dataset
from semiseg.data.store import cache_dir
from semiseg.data.volume_io import check_same_geometry, is_nifti, nifti_stem, read_volume
from semiseg.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")
#: optional file of image-level labels: {"<image stem>": <int> | null, ...}
LABELS_FILE = "labels.json"
#: optional file of image-level tags: {"<image stem>": [<foreground class present>, ...], ...}
TAGS_FILE = "tags.json"
#: optional file of region sizes: {"<image stem>": {"<foreground class>": <pixels>, ...}, ...}
SIZES_FILE = "sizes.json"


def _entries(splits: dict[str, list[Record]], path: Path, form: str, images_only: bool = False):
    """The ``(stem, value, record)`` entries of a JSON file ``{image stem: value}`` beside the images
    (``form`` describes the object for the error), one per record of that stem (the same stem may name
    an image in train/ and one in test/); with ``images_only``, weak labels of training images: only
    train/'s 2D images. One-line DataError on an unreadable file, another JSON value, or a stem that
    names none of those."""
    import json

    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    if not isinstance(entries, dict):
        raise DataError(path, f"must hold one JSON object {form}")
    records: dict[str, list[Record]] = {}
    for name, recs in splits.items():
        for r in recs if name == "train" or not images_only else []:
            records.setdefault(r.id, []).append(r)
    for stem, value in entries.items():
        if stem not in records:
            what = (
                "a training image (train/ or the flat layout)" if images_only else "an image of the dataset"
            )
            raise DataError(path, f"names '{stem}', which is not {what}")
        for record in records[stem]:
            if images_only and record.ndim != 3:
                raise DataError(path, f"'{stem}' is a volume: the file names 2D images (a volume's tag or size "
                                      "says nothing of its slices)")  # fmt: skip
            yield stem, value, record


def _apply_labels(splits: dict[str, list[Record]], path: Path) -> None:
    """Sets each record's ``label`` from ``labels.json`` (one-line DataError on a bad file)."""
    for stem, label, record in _entries(splits, path, "{image stem: integer label or null}"):
        if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
            raise DataError(path, f"label of '{stem}' must be a non-negative integer or null, got {label!r}")
        record.label = label


def _check_present(path: Path, given: str, present: list[int], record: Record, num_classes: int) -> None:
    """A DataError when the foreground classes ``present`` (sorted) that a weak-label file gives an
    image with a mask disagree with that mask: every class the mask shows must be present, and with
    no unlabeled pixel in the mask nothing else may be. ``given`` names the entry in the message."""
    import numpy as np

    from semiseg.core import IGNORE_INDEX

    if not record.has_mask:
        return
    values = np.unique(record.mask)
    in_mask = sorted(int(c) for c in values if 0 < c < num_classes)
    partial = bool((values == IGNORE_INDEX).any())  # a mask with unlabeled pixels may not show every class
    if not set(in_mask) <= set(present) or (not partial and in_mask != present):
        raise DataError(path, f"{given} disagree with its mask, which shows {in_mask}")


def _read_tags(splits: dict[str, list[Record]], path: Path, num_classes: int) -> dict[str, list[int]]:
    """``tags.json``: each listed 2D image's foreground classes present (``[]``: none, e.g. a healthy
    image), for weak supervision (``data.split.unlabeled_supervision: tag``) of images without a
    mask (a mask with unlabeled pixels too: the file's tag is used for it). An image with a mask must
    agree with it (only the classes it shows, if it has unlabeled pixels). One-line DataError on a bad file."""
    out: dict[str, list[int]] = {}
    form = "{image stem: [foreground classes present]}"
    for stem, present, record in _entries(splits, path, form, images_only=True):
        if not isinstance(present, list) or any(
            isinstance(c, bool) or not isinstance(c, int) or not 1 <= c < num_classes for c in present
        ):
            raise DataError(path, f"tags of '{stem}' must be a list of foreground classes 1..{num_classes - 1} "
                                  f"(data.num_classes {num_classes}), got {present!r}")  # fmt: skip
        present = sorted(set(present))
        _check_present(path, f"tags of '{stem}' ({present})", present, record, num_classes)
        out[stem] = present
    return out


def _read_sizes(splits: dict[str, list[Record]], path: Path, num_classes: int) -> dict[str, dict[int, float]]:
    """``sizes.json``: each listed 2D image's region sizes, ``{"<class>": pixels}`` at the image's own
    resolution (rough sizes are fine: the size penalty bounds them by ±γ; a foreground class not
    listed is absent, size 0, as in tags.json), for weak supervision
    (``data.split.unlabeled_supervision: size``) of images without a mask or with unlabeled pixels in
    it (an image listed takes its sizes from the file). One-line DataError on a bad file."""
    import math

    out: dict[str, dict[int, float]] = {}
    form = "{image stem: {foreground class: pixels}}"
    for stem, given, record in _entries(splits, path, form, images_only=True):
        bad = DataError(path, f"sizes of '{stem}' must map foreground classes 1..{num_classes - 1} to pixel "
                              f"counts >= 0, got {given!r}")  # fmt: skip
        if not isinstance(given, dict):
            raise bad
        entry: dict[int, float] = {}
        for key, value in given.items():
            # ASCII digits only: "²".isdigit() holds, and int("²") fails
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and 1 <= int(key) < num_classes):
                raise bad
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise bad
            try:
                pixels = float(value)
            except OverflowError:
                raise bad from None
            if not math.isfinite(pixels) or pixels < 0:
                raise bad
            entry[int(key)] = pixels
        area = math.prod(record.shape[1:])
        over = {c: v for c, v in entry.items() if v > area}
        if over:
            raise DataError(path, f"sizes of '{stem}' ({over}) exceed the image's {area} pixels")
        if sum(entry.values()) > area:  # the regions do not overlap: together, at most the image
            raise DataError(path, f"sizes of '{stem}' sum to {sum(entry.values()):g} pixels, more than the "
                                  f"image's {area}")  # fmt: skip
        present = sorted(c for c, v in entry.items() if v > 0)  # as tags.json: agree with a mask
        _check_present(path, f"sizes of '{stem}' (classes present: {present})", present, record, num_classes)
        out[stem] = entry
    return out


def _stem(f: Path) -> str:
    return nifti_stem(f) if is_nifti(f) else f.stem


def files_by_stem(files: list[Path], noun: str = "files") -> dict[str, Path]:
    """Maps file stem (a NIfTI file's without ``.nii`` / ``.nii.gz``) to file; two ``noun`` with one
    stem (``a.png`` and ``a.jpg``, ``a.nii`` and ``a.nii.gz``) are an error."""
    out: dict[str, Path] = {}
    for f in files:
        stem = _stem(f)
        if stem in out:
            raise DataError(f, f"two {noun} with the same name stem {stem!r} (also {out[stem].name})")
        out[stem] = f
    return out


def _list_files(directory: Path) -> list[Path]:
    """2D images and NIfTI volumes directly in ``directory`` (hidden files skipped), sorted by name."""
    if not directory.is_dir():
        return []
    volumes = [p for p in directory.iterdir() if is_nifti(p) and not p.name.startswith(".")]
    return sorted(list_images(directory) + volumes)


def _read_volume_pair(
    image_path: Path, mask_path: Path | None, num_classes: int, intensity: str, unlabeled: int | None = None
) -> Record:
    """A NIfTI image (and mask) as a volume record ``[1, D, H, W]`` with its spacing (mask voxels of
    value ``unlabeled``: ``IGNORE_INDEX``)."""
    import numpy as np

    image, geometry = read_volume(image_path)
    image = normalize_intensity(image[None], "minmax" if intensity == "auto" else intensity)
    mask = None
    if mask_path is not None:
        mask, mask_geometry = read_volume(mask_path, dtype=np.float64)
        check_same_geometry(image_path, mask_path, geometry, mask_geometry)
        values = set(np.unique(mask).tolist()) - ({unlabeled} if unlabeled is not None else set())
        bad = sorted(values - set(range(num_classes)))
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad[:5])
            raise DataError(
                mask_path, f"mask values {shown} are not classes 0..{num_classes - 1} (data.num_classes)"
            )
        mask = unlabeled_to_ignore(mask, unlabeled)
    stem = nifti_stem(image_path)
    return Record(
        id=stem, image=image, mask=mask, group=stem, source=str(image_path), spacing=geometry.spacing
    )


def _load_split(
    split_root: Path,
    *,
    num_classes: int,
    image_dir: str,
    mask_dir: str,
    mask_threshold: int | None,
    channels: str,
    intensity: str,
    loading: str,
    cache: Path | None = None,
    mask_unlabeled: int | None = None,
) -> list[Record]:
    """Reads one ``images/`` + ``masks/`` pair of folders into records sorted by id."""
    images_path = split_root / image_dir
    if not images_path.is_dir():
        raise DataError(images_path, "image folder not found")
    images = files_by_stem(_list_files(images_path))
    if not images:
        raise DataError(images_path, "no images found (PNG/JPG/TIFF/NPY or NIfTI)")
    masks = files_by_stem(_list_files(split_root / mask_dir))
    for stem, mask_path in sorted(masks.items()):
        if stem not in images:
            raise DataError(mask_path, f"mask has no matching image in {images_path}")
    kinds = {is_nifti(p) for p in [*images.values(), *masks.values()]}
    if len(kinds) > 1:
        first = next(p for p in images.values() if is_nifti(p))
        raise DataError(first, f"{split_root} mixes NIfTI volumes and 2D image files; use one kind")
    if kinds == {True}:
        readers = [functools.partial(_read_volume_pair, images[s], masks.get(s), num_classes, intensity,
                                     mask_unlabeled) for s in sorted(images)]  # fmt: skip
        return load_records(readers, loading, volumes=True, cache=cache)
    options = (num_classes, mask_threshold, channels, intensity, mask_unlabeled)
    readers = [functools.partial(_read_image_pair, images[s], masks.get(s), *options) for s in sorted(images)]
    return load_records(readers, loading, volumes=False, cache=cache)


def _read_image_pair(
    image_path: Path, mask_path: Path | None, num_classes: int, mask_threshold: int | None, channels: str,
    intensity: str, mask_unlabeled: int | None = None
) -> Record:  # fmt: skip
    """A 2D image (and mask) as a record ``[C, H, W]``."""
    image = read_image(image_path, channels, intensity)
    mask = None
    if mask_path is not None:
        mask = read_mask(mask_path, num_classes, mask_threshold, mask_unlabeled)
        check_same_size(image, mask, image_path, mask_path)
    return Record(id=_stem(image_path), image=image, mask=mask, source=str(image_path))


def _check_channels(splits: dict[str, list[Record]]) -> int:
    """Returns the common channel count; raises naming the first image that differs."""
    first: Record | None = None
    for records in splits.values():
        for rec in records:
            if first is None:
                first = rec
            elif rec.shape[0] != first.shape[0]:
                raise DataError(
                    rec.source,
                    f"image has {rec.shape[0]} channel(s) but {first.source} has "
                    f"{first.shape[0]}; mixed gray/colour images need channels='gray' or 'rgb'",
                )
    assert first is not None
    return int(first.shape[0])


def load_folder(
    root: str | os.PathLike,
    *,
    num_classes: int = 2,
    image_dir: str = "images",
    mask_dir: str = "masks",
    mask_threshold: int | None = None,
    channels: str = "auto",
    intensity: str = "auto",
    name: str = "folder",
    loading: str = "auto",
    cache: Path | None = None,
    mask_unlabeled: int | None = None,
) -> DatasetBundle:
    """Loads a folder dataset (see the module docstring for the layouts).

    Args:
        root: Dataset folder.
        num_classes: Number of classes including background; mask values must lie in
            ``[0, num_classes)``.
        image_dir: Name of the image sub-folder.
        mask_dir: Name of the mask sub-folder (may be absent: all images unlabeled).
        mask_threshold: For lossy (JPEG) binary masks: values above it are class 1, others 0.
        mask_unlabeled: Mask value of unlabeled pixels (clicks, scribbles): read as ``IGNORE_INDEX``.
        channels: ``"auto"`` (from the files; all images must agree), ``"gray"`` or ``"rgb"``.
        intensity: Scaling of the image intensities, one of
            :data:`~semiseg.data.io.INTENSITY_MODES` (see :func:`~semiseg.data.io.read_image`):
            ``"auto"`` divides 8-bit images by 255 and min-max scales 16-bit and float images per
            image.
        name: Dataset name stored in the bundle.
        loading: ``data.loading`` ("auto": volumes lazy, 2D images eager; "eager"; "lazy").
        cache: Folder of the lazy records' index manifests (:func:`~semiseg.data.records.load_records`).

    Returns:
        A bundle whose records have ``id`` = file stem and ``source`` = image path, sorted by id.
        ``val``/``test`` are ``None`` unless the root has ``val/``/``test/`` sub-folders.

    Raises:
        DataError: Missing folder, no images, a mask without an image, unreadable files, masks
            of the wrong size or with values outside the classes, mixed channel counts.
        ConfigError: ``num_classes`` below 2 or an unknown ``channels`` or ``intensity`` mode.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2 (background + one class); got {num_classes}")
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"channels must be one of {', '.join(CHANNEL_MODES)}; got {channels!r}")
    if intensity not in INTENSITY_MODES:
        raise ConfigError(f"intensity must be one of {', '.join(INTENSITY_MODES)}; got {intensity!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data folder not found")

    split_dirs = [s for s in SPLIT_NAMES if (root / s / image_dir).is_dir()]
    if split_dirs and (root / image_dir).is_dir():
        raise DataError(root, f"has both {image_dir}/ and {'/, '.join(split_dirs)}/ folders; use one layout")
    if mask_unlabeled is not None and (0 <= mask_unlabeled < num_classes or mask_threshold is not None):
        what = (
            "is a class" if 0 <= mask_unlabeled < num_classes else "cannot be used with data.mask_threshold"
        )
        raise ConfigError(f"data.mask_unlabeled: {mask_unlabeled} {what} (classes 0..{num_classes - 1})")
    if mask_threshold is not None and num_classes != 2:
        raise ConfigError(
            f"data.mask_threshold: gives binary masks (classes 0 and 1), but data.num_classes is {num_classes}"
        )
    options = dict(
        num_classes=num_classes,
        image_dir=image_dir,
        mask_dir=mask_dir,
        mask_threshold=mask_threshold,
        mask_unlabeled=mask_unlabeled,
        channels=channels,
        intensity=intensity,
        loading=loading,
        cache=cache,
    )
    splits: dict[str, list[Record]] = {}
    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(root / "train" / image_dir, "split layout needs a train/ folder (image folder)")
        for split in split_dirs:
            splits[split] = _load_split(root / split, **options)
    else:
        if not (root / image_dir).is_dir():
            raise DataError(root / image_dir, "no images found (PNG/JPG/TIFF/NPY or NIfTI)")
        splits["train"] = _load_split(root, **options)

    masked = [r for records in splits.values() for r in records if r.has_mask]
    if mask_threshold is not None and masked and not any(r.has_foreground for r in masked):
        raise DataError(root, f"data.mask_threshold: {mask_threshold} leaves every mask empty (no pixel above "
                              "it); masks of class indices (0, 1) need no threshold")  # fmt: skip
    if (root / LABELS_FILE).is_file():
        _apply_labels(splits, root / LABELS_FILE)
    tags = _read_tags(splits, root / TAGS_FILE, num_classes) if (root / TAGS_FILE).is_file() else {}
    sizes = _read_sizes(splits, root / SIZES_FILE, num_classes) if (root / SIZES_FILE).is_file() else {}
    in_channels = _check_channels(splits)
    return DatasetBundle(
        name=name,
        num_classes=num_classes,
        in_channels=in_channels,
        train=splits["train"],
        val=splits.get("val"),
        test=splits.get("test"),
        tags=tags,
        sizes=sizes,
    )


@register_dataset("folder")  # no default folder: data.path is required
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    return load_folder(
        path,
        num_classes=cfg.num_classes or 2,
        mask_threshold=cfg.mask_threshold,
        channels=cfg.channels,
        intensity=cfg.intensity,
        loading=cfg.loading,
        cache=cache_dir(cfg.cache_dir),
        mask_unlabeled=cfg.mask_unlabeled,
    )
