"""The 2018 Left Atrial Segmentation Challenge in the layout of most 3D semi-supervised papers
(UA-MT, SASSNet, MC-Net, BCP: 80 training and 20 test volumes).

Expected layout::

    root/train.list                                       80 case names, one per line
    root/test.list                                        20 case names
    root/2018LA_Seg_Training Set/<case>/mri_norm2.h5      ``image`` float, ``label`` uint8 (0 / 1)

Each ``mri_norm2.h5`` holds the arrays as (x, y, z), z the slice axis; records are ``[1, D, H, W]`` =
(z, y, x) as everywhere in semiseg. The files carry no voxel spacing (the challenge's MRI is 0.625 mm
isotropic, but nothing in the files says so): distances are reported in voxels (``hd95_px``).
``train.list`` becomes the training pool (validation is carved from it, ``data.split.val_fraction``:
the papers select on the test volumes, semiseg never does), ``test.list`` the test split. Two classes:
background, left atrium.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import h5py
import numpy as np

from semiseg.config import DataConfig
from semiseg.data.io import check_mask_values
from semiseg.data.records import DatasetBundle, Record, load_records
from semiseg.data.registry import register_dataset
from semiseg.data.store import cache_dir
from semiseg.errors import DataError

__all__ = ["load_la2018"]

CASES_DIR = "2018LA_Seg_Training Set"
FILE = "mri_norm2.h5"


def _names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "list file not found")
    names = [line.strip().strip("/") for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(path, "list file is empty")
    return names


def _read_case(path: Path) -> Record:
    try:
        with h5py.File(path, "r") as f:
            for key in ("image", "label"):
                if key not in f:
                    raise DataError(path, f"has no '{key}' array")
            image, label = np.asarray(f["image"]), np.asarray(f["label"])
    except OSError as exc:
        raise DataError(path, f"cannot read HDF5 file ({exc})") from None
    if image.ndim != 3:
        raise DataError(path, f"image must be a volume (x, y, z), got shape {image.shape}")
    if image.size == 0:
        raise DataError(path, f"empty image: an axis of length 0 (shape {image.shape})")
    if label.shape != image.shape:
        raise DataError(path, f"label shape {label.shape} differs from the image's {image.shape}")
    if label.dtype.kind not in "iub":
        raise DataError(path, f"label has dtype {label.dtype}, expected integers")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise DataError(path, "image contains NaN or infinite values")
    mask = np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.int64)
    check_mask_values(mask, 2, path)
    return Record(id=path.parent.name, image=np.ascontiguousarray(image.transpose(2, 1, 0))[None], mask=mask,
                  source=str(path))  # fmt: skip


def load_la2018(root: str | os.PathLike, loading: str = "auto", cache: Path | None = None) -> DatasetBundle:
    """The LA2018 volumes listed in ``train.list`` (training pool) and ``test.list`` (test).

    Raises:
        DataError: a missing folder, list or listed case, an unreadable file, arrays that are not
            volumes of one shape, labels other than 0 / 1, non-finite images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "LA2018 folder not found")
    splits = {}
    for split in ("train", "test"):
        paths = [root / CASES_DIR / name / FILE for name in _names(root / f"{split}.list")]
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise DataError(missing, f"listed in {split}.list but not found")
        splits[split] = load_records(
            [functools.partial(_read_case, p) for p in paths], loading, volumes=True, cache=cache
        )
    return DatasetBundle("la2018", num_classes=2, in_channels=1, train=splits["train"], test=splits["test"],
                         class_names=["background", "left atrium"], root=str(root))  # fmt: skip


@register_dataset("la2018", folder="la2018")
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    """``data.dataset: la2018`` (:func:`load_la2018`)."""
    return load_la2018(path, cfg.loading, cache_dir(cfg.cache_dir))
