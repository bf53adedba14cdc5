"""Reading single image and mask files into the arrays a :class:`~semiseg.data.records.Record` holds.

Images become ``float32`` arrays of shape ``[C, H, W]`` (intensities scaled as
:func:`normalize_intensity` describes, by default to ``[0, 1]``); masks become ``int64`` class maps
of shape ``[H, W]``. Every problem with a file (missing, unreadable, NaN pixels, class
values the dataset does not have, a mask of the wrong size) raises :class:`~semiseg.errors.DataError`
naming the file, so a bad dataset fails at load time instead of half-way through training.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.core import IGNORE_INDEX
from semiseg.errors import ConfigError, DataError

#: File suffixes (lower case) recognised as images or masks.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")

#: Channel modes accepted by :func:`read_image`.
CHANNEL_MODES = ("auto", "gray", "rgb")

#: Intensity modes accepted by :func:`read_image` and :func:`normalize_intensity` (``data.intensity``).
INTENSITY_MODES = ("auto", "minmax", "percentile", "zscore", "none")

#: Percentiles that ``"percentile"`` maps to 0 and 1 (values beyond are clipped).
PERCENTILES = (0.5, 99.5)

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _open(path: str | os.PathLike, decode: bool = True) -> Image.Image | None:
    """Opens and decodes an image file, turning every failure into a :class:`DataError`
    (``decode=False``: reads the header only and returns None)."""
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as im:
            if not decode:
                return None
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"cannot read image: {exc}") from exc


def probe_image(path: str | os.PathLike) -> None:
    """Checks that an image file can be opened, from its header alone (no pixel is decoded; ``.npy``:
    memory-mapped), so a folder can be checked before any image is loaded. Raises a DataError."""
    if str(path).lower().endswith(".npy"):
        _load_npy(path, mmap_mode="r")
        return
    _open(path, decode=False)


def _load_npy(path: str | os.PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """A ``.npy`` array (never pickled objects; ``mmap_mode="r"``: mapped, not read), every failure a
    :class:`DataError`."""
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read array: {exc}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(path, "not a numeric array")
    if arr.size == 0:
        raise DataError(path, f"empty array (shape {arr.shape})")
    return arr


def _npy_image(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """A ``.npy`` image ``[H, W]`` or ``[C, H, W]`` (channels first, any number) as float32 ``[C, H, W]``,
    and its full scale (255 for uint8; None: min-max scaled with ``intensity: auto``)."""
    arr = _load_npy(path)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(
            path, f"a .npy image must be [H, W] or [C, H, W] (channels first), got shape {arr.shape}"
        )
    return arr.astype(np.float32), (255.0 if arr.dtype == np.uint8 else None)


def _gray_array(im: Image.Image) -> tuple[np.ndarray, float | None]:
    """A single-channel image's stored values as a float32 ``[H, W]`` array, and the full scale of
    its format (255 for 8-bit, 1 for bilevel; ``None`` for 16-bit, 32-bit integer and float images,
    whose content rarely fills the format's range)."""
    if im.mode == "LA":
        im = im.convert("L")
    arr = np.asarray(im)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32), 1.0
    if arr.dtype == np.uint8:
        return arr.astype(np.float32), 255.0
    return arr.astype(np.float32), None


def normalize_intensity(image: np.ndarray, mode: str) -> np.ndarray:
    """Scales one image's intensities, all channels together (colour balance is kept).

    Modes: ``"minmax"`` maps the image's minimum and maximum to 0 and 1; ``"percentile"`` maps its
    :data:`PERCENTILES` (0.5th and 99.5th) to 0 and 1 and clips beyond; ``"zscore"`` subtracts the
    mean and divides by the standard deviation; ``"none"`` keeps the values. A constant image
    becomes 0 (``"minmax"``, ``"percentile"``, ``"zscore"``). (``"auto"`` depends on the file format
    and is resolved by :func:`read_image`.)

    Shape:
        image: any shape, e.g. ``[C, H, W]`` or ``[C, D, H, W]``. Returns the same shape, float32.

    Examples:
        >>> normalize_intensity(np.array([[[100.0, 300.0, 500.0]]]), "minmax")
        array([[[0. , 0.5, 1. ]]], dtype=float32)
    """
    image = np.asarray(image, dtype=np.float32)
    if mode == "none":
        return image
    if mode in ("minmax", "percentile"):
        if mode == "minmax":
            lo, hi = float(image.min()), float(image.max())
        else:
            lo, hi = (float(v) for v in np.percentile(image, PERCENTILES))
        if hi <= lo:
            return np.zeros_like(image)
        return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if mode == "zscore":
        std = float(image.std())
        centred = image - image.mean(dtype=np.float64)
        return (centred / std if std > 0 else centred * 0.0).astype(np.float32)
    raise ConfigError(f"intensity must be one of {', '.join(INTENSITY_MODES)}; got {mode!r}")


def read_image(path: str | os.PathLike, channels: str = "auto", intensity: str = "auto") -> np.ndarray:
    """Reads a PNG, JPEG or TIFF image, or a ``.npy`` array ``[H, W]`` / ``[C, H, W]`` (channels
    first, any number of channels; read without unpickling).

    With ``intensity="auto"`` 8-bit images (and colour images, which Pillow reads as 8-bit) are
    divided by 255, and 16-bit, 32-bit integer and float images are min-max scaled to ``[0, 1]``
    per image (12-bit content in a 16-bit file fills ``[0, 1]``). Other modes apply
    :func:`normalize_intensity` to the stored values, after the channel conversion. Alpha channels
    are dropped; palette and other colour modes are converted to RGB.

    Args:
        path: Image file.
        channels: ``"gray"`` (one channel; colour images are converted with ITU-R 601 luma
            weights), ``"rgb"`` (three channels; grayscale is repeated) or ``"auto"`` (one channel if
            the file is grayscale, else three; a ``.npy`` array keeps its channels).
        intensity: One of :data:`INTENSITY_MODES` (``data.intensity``).

    Returns:
        ``float32`` array.

    Shape:
        Output: ``[C, H, W]`` with ``C`` 1 or 3 (any ``C`` for ``.npy``).

    Raises:
        DataError: The file is missing, cannot be decoded, or contains NaN or infinite values.
        ConfigError: ``channels`` or ``intensity`` is not a known mode.
    """
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"channels must be one of {', '.join(CHANNEL_MODES)}; got {channels!r}")
    if intensity not in INTENSITY_MODES:
        raise ConfigError(f"intensity must be one of {', '.join(INTENSITY_MODES)}; got {intensity!r}")
    if Path(path).suffix.lower() == ".npy":
        arr, full_scale = _npy_image(path)
    else:
        im = _open(path)
        if im.mode in _GRAY_MODES:
            arr, full_scale = _gray_array(im)
            arr = arr[None]
        else:
            arr, full_scale = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1), 255.0
    if not np.isfinite(arr).all():
        raise DataError(path, "image contains NaN or infinite values")
    if channels != "auto" and arr.shape[0] not in (1, 3):
        raise DataError(path, f"image has {arr.shape[0]} channels: data.channels '{channels}' converts 1- or "
                              "3-channel images only (use 'auto')")  # fmt: skip
    if intensity == "auto" and full_scale is not None:
        if full_scale != 1.0:
            arr = arr / full_scale  # before the channel conversion, as always (bit-for-bit)
    if channels == "gray" and arr.shape[0] == 3:
        arr = np.tensordot(_LUMA_WEIGHTS, arr, axes=1)[None]
    elif channels == "rgb" and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return _scaled(arr, full_scale, intensity)


def _scaled(arr: np.ndarray, full_scale: float | None, intensity: str) -> np.ndarray:
    """The last scaling step of :func:`read_image` (after any division by the full scale)."""
    if intensity != "auto":
        arr = normalize_intensity(arr, intensity)
    elif full_scale is None:
        arr = normalize_intensity(arr, "minmax")
    return np.ascontiguousarray(arr, dtype=np.float32)


def scale_array(arr: np.ndarray, intensity: str = "auto") -> np.ndarray:
    """An image array ``[C, H, W]`` scaled as :func:`read_image` scales a ``.npy`` file holding it:
    its dtype decides ``"auto"`` (uint8 ÷ 255, other dtypes, bool included, min-max per image).

    Examples:
        >>> scale_array(np.array([[[0, 1000, 4000]]], dtype=np.uint16))
        array([[[0.  , 0.25, 1.  ]]], dtype=float32)
    """
    if intensity not in INTENSITY_MODES:
        raise ConfigError(f"intensity must be one of {', '.join(INTENSITY_MODES)}; got {intensity!r}")
    full_scale = 255.0 if arr.dtype == np.uint8 else None  # as _npy_image
    out = np.asarray(arr, dtype=np.float32)
    if intensity == "auto" and full_scale is not None:
        out = out / full_scale
    return _scaled(out, full_scale, intensity)


def read_model_image(
    path: str | os.PathLike, in_channels: int, intensity: str = "auto", channels: str = "auto"
) -> np.ndarray:
    """An image for a model of ``in_channels`` channels: gray or RGB files converted as training
    converted them (``channels`` gray / rgb), other channel counts kept and checked. A ``.npy``
    array's channels need not be colours (e.g. three scan types): converted only when training
    converted them too (``channels``, the run's ``data.channels``, gray or rgb).

    Raises:
        DataError: The file is unreadable or has another number of channels than the model.
    """
    image = read_image(path, "auto", intensity)
    if image.shape[0] != in_channels:
        npy = Path(path).suffix.lower() == ".npy"
        if image.shape[0] not in (1, 3) or in_channels not in (1, 3) or (npy and channels == "auto"):
            why = " (a .npy array's channels are not converted as colours are)" if npy else ""
            raise DataError(
                path, f"image has {image.shape[0]} channel(s), the model reads {in_channels}{why}"
            )
        image = read_image(path, "gray" if in_channels == 1 else "rgb", intensity)
    return image


def check_mask_values(mask: np.ndarray, num_classes: int, path: str | os.PathLike, hint: str = "") -> None:
    """Raises :class:`DataError` if ``mask`` has values outside ``[0, num_classes)``.

    The message lists up to five of the offending values, e.g.
    ``mask values [3, 7] outside classes 0..1``.

    Args:
        mask: Integer class map of any shape.
        num_classes: Number of classes of the dataset.
        path: File the mask came from (for the message).
        hint: Optional text appended to the message (e.g. how to fix it).
    """
    if mask.size == 0:
        return
    if int(mask.min()) >= 0 and int(mask.max()) < num_classes:
        return
    bad = np.unique(mask[(mask < 0) | (mask >= num_classes)])
    shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
    raise DataError(path, f"mask values [{shown}] outside classes 0..{num_classes - 1}{hint}")


def read_mask(
    path: str | os.PathLike, num_classes: int, threshold: int | None = None, unlabeled: int | None = None
) -> np.ndarray:
    """Reads a class-index mask.

    Without ``threshold`` pixel values are class indices: palette (``"P"``) images give their raw
    palette indices, grayscale images their raw values. RGB masks are accepted only when all three
    channels are equal (colour-coded masks need a colour map this function does not guess).
    With ``threshold`` (lossy JPEG masks) the image is converted to grayscale and pixels above the
    threshold become class 1, the others class 0.

    Args:
        path: Mask file (PNG, JPEG, TIFF or a ``.npy`` integer array ``[H, W]``).
        num_classes: Number of classes; every value must lie in ``[0, num_classes)``.
        threshold: Binarisation threshold on raw gray values, or ``None``.
        unlabeled: Raw value of unlabeled pixels (read as ``IGNORE_INDEX``), or ``None``.

    Returns:
        ``int64`` class map.

    Shape:
        Output: ``[H, W]``.

    Raises:
        DataError: The file is missing or unreadable, has non-integer or colour values, or values
            outside the classes.
    """
    if Path(path).suffix.lower() == ".npy":
        raw = _load_npy(path)
        if raw.ndim != 2:
            raise DataError(path, f"a .npy mask must be [H, W], got shape {raw.shape}")
        if raw.dtype.kind == "f" and (not np.isfinite(raw).all() or not (raw == np.round(raw)).all()):
            raise DataError(path, "mask has non-integer values")
        mask = ((raw > threshold) if threshold is not None else raw).astype(np.int64)
        return _checked(mask, num_classes, path, unlabeled if threshold is None else None, "")
    im = _open(path)
    if threshold is not None:
        if im.mode not in _GRAY_MODES or im.mode in ("1", "LA"):
            im = im.convert("L")  # "1" becomes 0/255 so the threshold means the same as for "L"
        mask = (np.asarray(im) > threshold).astype(np.int64)
    else:
        if im.mode in ("LA", "PA"):
            im = im.getchannel(0)
        elif im.mode not in _GRAY_MODES and im.mode != "P":
            rgb = np.asarray(im.convert("RGB"))
            if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
                raise DataError(
                    path, "colour mask; save masks as grayscale or palette images holding class indices"
                )
            im = Image.fromarray(rgb[..., 0])
        raw = np.asarray(im)
        if raw.dtype.kind == "f":
            if not np.isfinite(raw).all() or not (raw == np.round(raw)).all():
                raise DataError(path, "mask has non-integer values")
        mask = raw.astype(np.int64)
    if threshold is not None:
        return _checked(mask, num_classes, path, None, "")
    hint = "; JPEG masks are lossy, set data.mask_threshold (e.g. 127)" if Path(path).suffix.lower() in (
        ".jpg", ".jpeg") else ""  # fmt: skip
    return _checked(mask, num_classes, path, unlabeled, hint)


def unlabeled_to_ignore(mask: np.ndarray, unlabeled: float | None) -> np.ndarray:
    """``mask`` as ``int64`` with its pixels of raw value ``unlabeled`` (if not ``None``) set to
    ``IGNORE_INDEX``. Check the other values first: this only relabels."""
    if unlabeled is not None:
        mask = np.where(mask == unlabeled, IGNORE_INDEX, mask)
    return mask.astype(np.int64, copy=False)


def _checked(mask: np.ndarray, num_classes: int, path, unlabeled: int | None, hint: str) -> np.ndarray:
    """``mask`` after :func:`check_mask_values` (values: classes, or ``unlabeled``), its ``unlabeled``
    pixels then set to ``IGNORE_INDEX``; a mask holding 255 without ``unlabeled`` gets a hint."""
    if unlabeled is not None:
        check_mask_values(mask[mask != unlabeled], num_classes, path, hint)
        return unlabeled_to_ignore(mask, unlabeled)
    if not hint and mask.size and int(mask.max()) == 255:
        hint = "; if 255 marks unlabeled pixels (clicks, scribbles), set data.mask_unlabeled: 255"
        if np.isin(mask, (0, 255)).all():
            hint += ", or if it is a 0/255 binary mask, data.mask_threshold (e.g. 127)"
    check_mask_values(mask, num_classes, path, hint)
    return mask


def check_same_size(
    image: np.ndarray, mask: np.ndarray, image_path: str | os.PathLike, mask_path: str | os.PathLike
) -> None:
    """Raises :class:`DataError` (naming the mask) if the mask's size differs from the image's.

    Shape:
        image: ``[C, H, W]`` or ``[C, D, H, W]``.
        mask: ``[H, W]`` or ``[D, H, W]``.
    """
    if tuple(image.shape[1:]) != tuple(mask.shape):
        got = "x".join(str(s) for s in mask.shape)
        want = "x".join(str(s) for s in image.shape[1:])
        raise DataError(mask_path, f"mask size {got} does not match image size {want} ({image_path})")


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files (by :data:`IMAGE_SUFFIXES`, any case) directly in ``directory``, sorted by name.

    Hidden files (``.DS_Store``, ``._x.png``) and other suffixes are skipped. A missing directory
    gives an empty list.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
