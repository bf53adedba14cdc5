"""ACDC cardiac MRI (Bernard et al. 2018) in the SSL4MIS HDF5 layout.

Expected layout::

    root/train_slices.list   one 2D slice name per line (patient003_frame01_slice_2)
    root/val.list            one volume name per line (patient028_frame01)
    root/test.list
    root/data/slices/patientXXX_frameYY_slice_N.h5   (SSL4MIS) — or flat in root/data/
    root/data/patientXXX_frameYY.h5

Each ``.h5`` file holds ``image`` (``float32`` in ``[0, 1]``, ``[H, W]`` for a slice or
``[D, H, W]`` for a volume) and ``label`` (``uint8``: 0 background, 1 RV, 2 MYO, 3 LV).
``bundle.train`` gets one 2D record per training slice; ``val``/``test`` one volume record per
listed frame, evaluated slice by slice. Every record's ``group`` is its patient, so splits "by
patient" keep a patient's slices together.

``acdc_3d`` (3D models): the same files, with the training slices of each frame stacked back into
its volume ``[1, D, H, W]`` in slice order (``_slice_1``, ``_slice_2``, …; the SSL4MIS layout keeps
no training volumes). The files are normalised per volume (each training frame's slices share one
maximum of 1, as do the validation and test volumes), so the stacked volumes need no renormalising.
No file carries a voxel spacing: distances are in voxels (``hd95_px``), a slice step counting as one.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import h5py
import numpy as np

from semiseg.config import DataConfig
from semiseg.data.io import check_mask_values, check_same_size
from semiseg.data.records import DatasetBundle, Record, load_records
from semiseg.data.registry import register_dataset
from semiseg.data.store import cache_dir
from semiseg.errors import DataError

CLASS_NAMES = ["background", "RV", "MYO", "LV"]
LV_CLASS = 3
TRAIN_LIST = "train_slices.list"
VAL_LIST = "val.list"
TEST_LIST = "test.list"

_PATIENT = re.compile(r"^(patient\d+)")
_SLICE = re.compile(r"^(.*)_slice_(\d+)$")


def read_list(list_path: Path) -> list[str]:
    """Names listed one per line (blank lines skipped, a trailing ``.h5`` removed)."""
    if not list_path.is_file():
        raise DataError(list_path, "list file not found")
    names = []
    for line in list_path.read_text().splitlines():
        name = line.strip()
        if name:
            names.append(name[:-3] if name.endswith(".h5") else name)
    if not names:
        raise DataError(list_path, "list file is empty")
    return names


def _resolve(root: Path, name: str, list_path: Path, slices: bool) -> Path:
    """Finds ``name.h5``: slices in ``data/slices/`` first, then ``data/``; volumes in ``data/``."""
    data = root / "data"
    folders = [data / "slices", data] if slices else [data]
    for folder in folders:
        path = folder / f"{name}.h5"
        if path.is_file():
            return path
    expected = folders[0] if folders[0].is_dir() else data
    raise DataError(expected / f"{name}.h5", f"listed in {list_path.name} but not found")


def _read_dataset(fid: h5py.h5f.FileID, key: str, path: Path) -> np.ndarray:
    """Reads a whole dataset through h5py's low-level API (about 30% faster than ``f[key][()]``
    on many small files, where per-call overhead dominates)."""
    try:
        dataset = h5py.h5d.open(fid, key.encode())
    except KeyError as exc:
        raise DataError(path, f"no dataset {key!r} in HDF5 file") from exc
    out = np.empty(dataset.shape, dataset.dtype)
    dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _read_h5(path: Path, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates ``image`` (finite, ``ndim`` dims) and ``label`` (same shape, 0..3)."""
    try:
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY)
    except OSError as exc:
        raise DataError(path, f"cannot read HDF5 file: {exc}") from exc
    try:
        image = _read_dataset(fid, "image", path)
        label = _read_dataset(fid, "label", path)
    except (OSError, TypeError, ValueError) as exc:
        raise DataError(path, f"cannot read HDF5 file: {exc}") from exc
    finally:
        fid.close()
    if image.dtype.kind != "f":
        raise DataError(path, f"image has dtype {image.dtype}, expected floats in [0, 1]")
    image = image.astype(np.float32, copy=False)
    kind = "slice" if ndim == 2 else "volume"
    if image.ndim != ndim:
        raise DataError(path, f"image has shape {image.shape}, expected a {ndim}D {kind}")
    if not np.isfinite(image).all():
        raise DataError(path, "image contains NaN or infinite values")
    if label.dtype.kind not in "iub":
        raise DataError(path, f"label has dtype {label.dtype}, expected integers")
    label = label.astype(np.int64)
    image = image[None]
    check_same_size(image, label, path, path)
    check_mask_values(label, len(CLASS_NAMES), path)
    return image, label


def _group(name: str) -> str:
    match = _PATIENT.match(name)
    return match.group(1) if match else name


def _read_item(name: str, path: Path, ndim: int, target: str | None) -> Record:
    """One listed slice (``ndim`` 2) or volume (3) as a record."""
    image, label = _read_h5(path, ndim=ndim)
    if target is not None:
        label = (label == CLASS_NAMES.index(target)).astype(np.int64)
    return Record(id=name, image=image, mask=label, group=_group(name), source=str(path))


def _read_frame(frame: str, paths: tuple[Path, ...], target: str | None) -> Record:
    """A training frame's volume from its slice files (in slice order)."""
    items = [_read_item(p.stem, p, 2, target) for p in paths]
    shapes = {r.image.shape for r in items}
    if len(shapes) > 1:
        raise DataError(items[0].source, f"the slices of {frame} differ in size: {sorted(shapes)}")
    image = np.stack([r.image[0] for r in items])[None]
    mask = np.stack([r.mask for r in items])
    return Record(id=frame, image=image, mask=mask, group=_group(frame), source=str(paths[0].parent))


def _readers(root: Path, list_name: str, slices: bool, target: str | None, frames: bool = False) -> list:
    """A reader (a ``functools.partial`` returning the record) per listed item; ``frames``: per
    training frame, its slices ``<frame>_slice_<k>`` stacked by k (frames in the order they first
    appear)."""
    list_path = root / list_name
    names = read_list(list_path)
    paths = [_resolve(root, name, list_path, slices) for name in names]  # all missing files first
    if not frames:
        return [functools.partial(_read_item, n, p, 2 if slices else 3, target) for n, p in zip(names, paths)]
    by_frame: dict[str, list[tuple[int, Path]]] = {}
    for name, path in zip(names, paths):
        match = _SLICE.match(name)
        if match is None:
            raise DataError(path, f"slice name {name!r} does not end in _slice_<number>")
        by_frame.setdefault(match.group(1), []).append((int(match.group(2)), path))
    return [functools.partial(_read_frame, frame, tuple(p for _, p in sorted(items)), target)
            for frame, items in by_frame.items()]  # fmt: skip


def load_acdc(
    root: str | os.PathLike,
    *,
    binary_lv: bool = False,
    target: str | None = None,
    volumes: bool = False,
    loading: str = "eager",
    cache: Path | None = None,
) -> DatasetBundle:
    """Loads ACDC: training slices, validation and test volumes.

    Args:
        root: Folder with the ``.list`` files and ``data/``.
        binary_lv: Keep only the left ventricle (class 3) as foreground: 2 classes, name
            ``acdc_lv`` (the same as ``target="LV"``).
        target: "RV", "MYO" or "LV": that structure against the rest, 2 classes, name
            ``acdc_<target in lower case>``.
        volumes: Training frames as volumes stacked from their slices (``acdc_3d``), for 3D models.
        loading: ``data.loading``: "eager" (every array in memory), "lazy" (records read their files
            on use) or "auto" (lazy volumes, eager slices).

    Returns:
        Bundle ``acdc`` (4 classes: background, RV, MYO, LV) or a binary one, 1 input channel.
        ``train``: ``[1, H, W]`` slices; ``val``/``test``: ``[1, D, H, W]`` volumes with
        ``[D, H, W]`` masks; ``group`` = patient (``patient003``).

    Raises:
        DataError: A missing folder or list file, a listed file not found, unreadable HDF5,
            non-finite images, label shape or values that do not fit.
    """
    if binary_lv:
        target = "LV"
    if target is not None and target not in CLASS_NAMES[1:]:
        raise ValueError(f"target must be one of {', '.join(CLASS_NAMES[1:])}, got {target!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "ACDC folder not found")
    train = load_records(
        _readers(root, TRAIN_LIST, True, target, frames=volumes), loading, volumes=volumes, cache=cache
    )
    val = load_records(_readers(root, VAL_LIST, False, target), loading, volumes=True, cache=cache)
    test = load_records(_readers(root, TEST_LIST, False, target), loading, volumes=True, cache=cache)
    return DatasetBundle(
        name=(f"acdc_{target.lower()}" if target else "acdc") + ("_3d" if volumes else ""),
        num_classes=2 if target else len(CLASS_NAMES),
        in_channels=1,
        train=train,
        val=val,
        test=test,
        class_names=["background", target] if target else list(CLASS_NAMES),
    )


@register_dataset("acdc", folder="acdc")
def _load_acdc(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: acdc``: 4 classes (background, RV, MYO, LV)."""
    return load_acdc(path, loading=cfg.loading, cache=cache_dir(cfg.cache_dir))


@register_dataset("acdc_3d", folder="acdc")
def _load_acdc_3d(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: acdc_3d``: 4 classes, training frames as volumes (3D models)."""
    return load_acdc(path, volumes=True, loading=cfg.loading, cache=cache_dir(cfg.cache_dir))


@register_dataset("acdc_lv", folder="acdc")
def _load_acdc_lv(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: acdc_lv``: LV vs rest."""
    return load_acdc(path, binary_lv=True, loading=cfg.loading, cache=cache_dir(cfg.cache_dir))


@register_dataset("acdc_rv", folder="acdc")
def _load_acdc_rv(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: acdc_rv``: RV vs rest (e.g. presence/absence translation: about a fifth of the
    training slices have no RV)."""
    return load_acdc(path, target="RV", loading=cfg.loading, cache=cache_dir(cfg.cache_dir))
