"""The in-memory form every loader produces.

A loader reads files, validates them and returns :class:`Record` objects grouped in a
:class:`DatasetBundle`. Records hold numpy arrays at the data's native resolution; resizing,
supervision (dense / sparse / tag / size / none) and augmentation are applied later by
:mod:`semiseg.data.views`, identically for every source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from semiseg.core import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "DatasetBundle", "Record", "record_slices"]


@dataclass
class Record:
    """One image (2D) or volume (3D) with its optional ground truth.

    Attributes:
        id: Unique, stable name (file stem, e.g. ``horse001`` or ``patient003_frame01_slice_2``).
        image: ``float32`` array, shape ``[C, H, W]`` (2D) or ``[C, D, H, W]`` (volume); finite values,
            intensities scaled to roughly ``[0, 1]``.
        mask: ``int64`` class map, shape ``[H, W]`` or ``[D, H, W]`` matching the image's spatial shape,
            values in ``[0, num_classes)``; ``None`` if the source has no mask for this item.
        label: Image-level class (e.g. the MNIST digit), or ``None``.
        group: Grouping key for splits "by patient" (ACDC: ``patient003``); defaults to ``id``.
        source: File the record came from (for error messages).
        spacing: Physical size of a pixel / voxel along each spatial axis, in millimetres, in the
            order of the array axes (``(H, W)`` or ``(D, H, W)``); ``None`` when unknown. HD95 is
            reported in millimetres (``hd95_mm``) for records with a spacing, else in pixels.
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    label: int | None = None
    group: str = ""
    source: str = ""
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.id
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
            if len(self.spacing) != self.image.ndim - 1 or not all(s > 0 for s in self.spacing):
                raise ValueError(
                    f"{self.source or self.id}: spacing {self.spacing} must give one positive size per "
                    f"spatial axis of an image of shape {tuple(self.image.shape)}"
                )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


@dataclass
class DatasetBundle:
    """A dataset's records, divided as its own protocol prescribes.

    ``train`` is what split specs draw labeled / unlabeled items from. ``val`` and ``test`` are
    evaluation sets (``None`` when the source has no fixed split; the split spec then carves a
    validation set out of ``train``). Volumes (``[C, D, H, W]`` records) in ``val``/``test`` are
    evaluated per volume, slice by slice.
    """

    name: str
    num_classes: int
    in_channels: int
    train: list[Record]
    val: list[Record] | None = None
    test: list[Record] | None = None
    class_names: list[str] = field(default_factory=list)
    root: str = ""  #: folder the dataset was read from (for error messages)
    #: "segment" (masks; Dice & co.) or "classify" (one class per image in ``Record.label``; accuracy)
    task: str = "segment"

    def __post_init__(self) -> None:
        if self.task not in ("segment", "classify"):
            raise ValueError(f"task must be 'segment' or 'classify', got {self.task!r}")
        if not self.class_names:
            self.class_names = ["background"] + [f"class{i}" for i in range(1, self.num_classes)]


def record_slices(record: Record) -> list[torch.Tensor]:
    """A record's 2D images: the image itself, or a volume's slices along depth.

    Shape:
        image ``[C, H, W]`` → ``[[C, H, W]]``; volume ``[C, D, H, W]`` → ``D`` tensors ``[C, H, W]``
        (views of the record's array, no copy).
    """
    image = torch.from_numpy(record.image)
    if image.ndim == 3:
        return [image]
    return [image[:, d] for d in range(image.shape[1])]
