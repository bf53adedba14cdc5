"""The Weizmann horse database (Borenstein & Ullman): 328 side-view horses with figure/ground masks.

Expected layout (see ``SOURCE.txt`` in the data folder)::

    root/gray/horse001.jpg            grayscale image
    root/figure_ground/horse001.jpg   its mask, same size; JPEG, so thresholded: > 127 is horse

The sparse-label TV paper's protocol uses half of the images for training and half for testing. We
sort by horse number and alternate: 0-based even positions (horse001, horse003, …) go to
``train``, odd positions (horse002, horse004, …) to ``test``. There is no fixed validation set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from semiseg.config import DataConfig
from semiseg.data.io import IMAGE_SUFFIXES, check_same_size, list_images, read_image, read_mask
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.registry import register_dataset
from semiseg.errors import DataError

IMAGE_DIR = "gray"
MASK_DIR = "figure_ground"
#: JPEG masks are binarised as ``value > MASK_THRESHOLD`` (horse).
MASK_THRESHOLD = 127
CLASS_NAMES = ["background", "horse"]


def _number_key(path: Path) -> tuple[int, str]:
    """Sort key: the number in the file name (``horse12`` before ``horse101``), then the name."""
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _find_mask(mask_dir: Path, image_path: Path) -> Path:
    """The mask file for an image: same file name, or same stem with another image suffix."""
    same = mask_dir / image_path.name
    if same.is_file():
        return same
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        candidate = mask_dir / (image_path.stem + suffix)
        if candidate.is_file():
            return candidate
    raise DataError(same, f"mask for {image_path.name} not found")


def load_weizmann(root: str | os.PathLike) -> DatasetBundle:
    """Loads the Weizmann horse dataset with the half/half train/test protocol.

    Args:
        root: Folder holding ``gray/`` and ``figure_ground/``.

    Returns:
        Bundle ``weizmann_horse`` with 2 classes (background, horse), 1 input channel; records
        ``[1, H, W]`` images and binary ``[H, W]`` masks, id = file stem; ``val`` is ``None``.

    Raises:
        DataError: A missing folder, no images, an image without a mask, unreadable files, or a
            mask whose size differs from its image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "Weizmann horse folder not found")
    image_dir, mask_dir = root / IMAGE_DIR, root / MASK_DIR
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(folder, f"folder not found (expected {IMAGE_DIR}/ and {MASK_DIR}/ in {root})")
    image_paths = sorted(list_images(image_dir), key=_number_key)
    if not image_paths:
        raise DataError(image_dir, "no images found (PNG/JPG/TIFF)")

    records = []
    for image_path in image_paths:
        mask_path = _find_mask(mask_dir, image_path)
        image = read_image(image_path, channels="gray")
        mask = read_mask(mask_path, num_classes=2, threshold=MASK_THRESHOLD)
        check_same_size(image, mask, image_path, mask_path)
        records.append(Record(id=image_path.stem, image=image, mask=mask, source=str(image_path)))

    return DatasetBundle(
        name="weizmann_horse",
        num_classes=2,
        in_channels=1,
        train=records[0::2],
        val=None,
        test=records[1::2],
        class_names=list(CLASS_NAMES),
    )


@register_dataset("weizmann", folder="weizmann_horse")
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    return load_weizmann(path)
