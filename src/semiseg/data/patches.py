"""Training patches of volumes for 3D models (nnU-Net style sampling).

:class:`PatchSet` has the interface of :class:`~semiseg.data.views.TrainSet` (``set_epoch``,
``set_views``, ``clean``, keyed ``__getitem__``) for volume records ``[C, D, H, W]``:

- **Training grid.** Each volume is resized once to ``data.image_size`` ``[D, H, W]`` (``-1`` keeps the
  volume's own size on that axis; in-plane per slice when the depth is kept, so the voxels of
  ``[-1, 128, 128]`` are exactly the slices a 2D model trains on, stacked).
- **Patches.** Every item of an epoch is one patch of ``data.patch_size`` from its volume. A share
  ``data.foreground_ratio`` of the positions is *forced*: position ``i`` is forced when
  ``floor((i + 1)·p) > floor(i·p)``, so any run of n consecutive positions holds ⌊np⌋ or ⌈np⌉ forced
  patches, the same in one process or under DDP. A forced patch picks a foreground class present in
  the item's labeled voxels uniformly, then one of its voxels (at most
  :data:`MAX_FOREGROUND_VOXELS` per class, subsampled once per record id), and centres the patch on
  it (the start clipped so the patch stays in the volume when it can); items without labeled
  foreground (unlabeled, tag or size supervision) are never forced. Other patches start uniformly
  in ``[0, size − patch]`` per axis; an axis shorter than the patch gets a uniform offset of the
  volume inside the patch. Padding is 0 in the image and ``IGNORE_INDEX`` in the mask (outside the
  volume nothing is known).
- **Augmentation** is :func:`~semiseg.data.transforms.augment` (flips on every axis, 90° and free
  rotations and scaling in the H-W plane, intensity), applied to the patch; strong views as in 2D.
- **Randomness.** The patch draw, then the augmentation, come from one generator seeded by
  ``(seed, epoch, position)`` (:func:`~semiseg.data.transforms.sample_rng`), so an item does not
  depend on workers, ranks or resumption.
- **Weak labels.** Tags and sizes are counted on each patch's dense mask (what the patch shows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from semiseg.config import AugmentConfig, StrongAugmentConfig
from semiseg.core import IGNORE_INDEX, Supervision
from semiseg.data import store
from semiseg.data.records import Record
from semiseg.data.splits import stable_hash
from semiseg.data.transforms import augment, sample_rng
from semiseg.data.views import (
    KeyedItems,
    mask_points,
    points_mask,
    record_grid,
    resize_image,
    resize_mask,
    sparse_mask,
)
from semiseg.errors import DataError

__all__ = ["MAX_FOREGROUND_VOXELS", "PatchSet", "crop", "forced"]

#: foreground voxels kept per class and record for forced patches (a seeded subsample)
MAX_FOREGROUND_VOXELS = 10_000


def forced(position: int, ratio: float) -> bool:
    """Whether the patch at epoch position ``position`` is centred on foreground.

    Examples:
        >>> [forced(i, 0.33) for i in range(7)]
        [False, False, False, True, False, False, True]
        >>> sum(forced(i, 0.33) for i in range(1000))
        330
    """
    return math.floor((position + 1) * ratio) > math.floor(position * ratio)


def crop(
    x: torch.Tensor | np.ndarray, start: Sequence[int], size: Sequence[int], fill: float
) -> torch.Tensor:
    """The box ``[start, start + size)`` of the last ``len(size)`` axes of ``x`` (a tensor, or an array
    such as a memory map, of which only the box is read); parts outside ``x`` are ``fill``.

    Examples:
        >>> crop(torch.arange(4.0), [-1], [3], fill=9.0).tolist()
        [9.0, 0.0, 1.0]
    """
    n = len(size)
    lead = x.shape[: x.ndim - n]
    dtype = x.dtype if torch.is_tensor(x) else torch.from_numpy(np.empty(0, x.dtype)).dtype
    out = torch.full((*lead, *size), fill, dtype=dtype)
    src, dst = [], []
    for s, k, dim in zip(start, size, x.shape[x.ndim - n :]):
        a, b = max(0, s), min(dim, s + k)
        if a >= b:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    box = x[(..., *src)]
    out[(..., *dst)] = box if torch.is_tensor(box) else torch.from_numpy(np.array(box))
    return out


#: the value :func:`inside_mask` gives the padding
PADDING = 1
#: the value the padding takes in a patch's mask through the augmentation (no class, not IGNORE_INDEX)
PADDED = IGNORE_INDEX - 1


def inside_mask(shape: Sequence[int], start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``[*size]`` long: 0 on the voxels of the box ``[start, start + size)`` that lie inside a volume
    of ``shape``, :data:`PADDING` on the padding outside it.

    Examples:
        >>> inside_mask([3], [-1], [5]).tolist()
        [1, 0, 0, 0, 1]
    """
    out = torch.full(tuple(size), PADDING, dtype=torch.long)
    box = tuple(slice(max(0, -s), max(0, min(k, n - s))) for s, k, n in zip(start, size, shape))
    out[box] = 0
    return out


class MemoryVolume:
    """A volume on its training grid in memory: image ``[C, *grid]`` float32, mask ``[*grid]`` uint8
    (255 = no label) or None."""

    def __init__(self, image: torch.Tensor, dense: torch.Tensor | None):
        self._image, self._dense = image, dense
        self.shape = tuple(image.shape[1:])
        self.has_mask = dense is not None

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._image, self._dense

    def dense(self) -> torch.Tensor | None:
        return self._dense

    def crop(self, which: str, start: Sequence[int], size: Sequence[int], fill: float) -> torch.Tensor:
        return crop(self._image if which == "image" else self._dense, start, size, fill)


class DiskVolume:
    """The same as :class:`MemoryVolume`, in an entry of the on-disk store (:mod:`semiseg.data.store`):
    a crop maps the file, copies the box and unmaps it, so nothing stays resident."""

    def __init__(self, folder: Path, has_mask: bool):
        self.folder, self.has_mask = folder, has_mask
        self.shape = tuple(self._load("image").shape[1:])

    def _load(self, which: str) -> np.ndarray:
        return np.load(self.folder / f"{which}.npy", mmap_mode="r")

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.from_numpy(np.array(self._load("image"))), self.dense()

    def dense(self) -> torch.Tensor | None:
        return torch.from_numpy(np.array(self._load("dense"))) if self.has_mask else None

    def crop(self, which: str, start: Sequence[int], size: Sequence[int], fill: float) -> torch.Tensor:
        data = self._load(which)
        try:
            return crop(data, start, size, fill)
        finally:
            del data


class PatchSet(KeyedItems):
    """Patches of volumes on their training grid, supervised and augmented (see the module docstring).

    Args:
        records: Volume records ``[C, D, H, W]``.
        supervision: "dense", "sparse", "tag", "size" or "none".
        image_size: The training grid ``[D, H, W]`` (``-1`` = keep).
        patch_size: ``[d, h, w]``.
        foreground_ratio: Share of patches centred on labeled foreground.
        target_spacing: Resample each volume to this voxel size (mm per axis, -1 = keep) first.
        cache_dir: Where the training grids of lazy records are stored (:mod:`semiseg.data.store`);
            eager records keep theirs in memory.
        Others as :class:`~semiseg.data.views.TrainSet`.
    """

    def __init__(
        self,
        records: list[Record],
        *,
        supervision: str,
        num_classes: int,
        image_size: Sequence[int],
        patch_size: Sequence[int],
        foreground_ratio: float = 0.33,
        target_spacing: Sequence[float] | None = None,
        augment_cfg: AugmentConfig | None = None,
        strong_cfg: StrongAugmentConfig | None = None,
        seed: int = 0,
        sparse_pixels: int = 10,
        draw: int = 0,
        split_seed: int = 0,
        cache_dir: str | Path | None = None,
    ):
        kind = Supervision.parse(supervision)
        if kind == Supervision.CLASS:
            raise DataError(records[0].source or records[0].id if records else None,
                            "class labels are for image-level methods; 3D models train on masks")  # fmt: skip
        self.ids = [r.id for r in records]
        self.supervision, self.kind, self.num_classes = supervision, kind, num_classes
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_ratio = float(foreground_ratio)
        k, n = num_classes, len(records)
        self.volumes: list[MemoryVolume | DiskVolume] = []
        #: sparse supervision: per item, the kept voxels' indices [m, 3] and classes [m]
        self.points: list[tuple[np.ndarray, np.ndarray]] = []
        self.tags = torch.full((n, k), float("nan"))  #: per volume (tag-filtered streams)
        self.sizes = torch.full((n, k), float("nan"))
        self.labels = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
        self.foreground: list[list[np.ndarray]] = []  #: per item, per class 1..K-1: voxel indices [m, 3]
        counts = []
        for r in records:
            if r.ndim != 4:
                raise DataError(
                    r.source or r.id, f"a 3D model trains on volumes [C, D, H, W], got shape {r.shape}"
                )
            grid = record_grid(r, image_size, target_spacing)
            volume = self._volume(r, grid, cache_dir)
            self.volumes.append(volume)
            dense = volume.dense()
            dense = torch.full(grid, IGNORE_INDEX, dtype=torch.long) if dense is None else dense.long()
            mask = torch.full_like(dense, IGNORE_INDEX)
            if kind == Supervision.DENSE:
                mask = dense
            elif kind == Supervision.SPARSE:
                mask = sparse_mask(dense, sparse_pixels, split_seed, draw, r.id)
                self.points.append(mask_points(mask))
            self.foreground.append(self._foreground(mask, r.id))
            if kind in (Supervision.TAG, Supervision.SIZE):
                counts.append(self._counts(dense))
        if kind in (Supervision.TAG, Supervision.SIZE):
            counts = torch.stack(counts)
            if kind == Supervision.TAG:
                self.tags = (counts > 0).float()
            else:
                self.sizes = counts
        self._init_views(augment_cfg, strong_cfg, seed)

    @staticmethod
    def _volume(r: Record, grid: tuple[int, ...], cache_dir: str | Path | None) -> MemoryVolume | DiskVolume:
        """``r`` on its training grid: in memory (eager records) or in the on-disk store (lazy ones)."""

        def arrays() -> dict[str, np.ndarray]:
            image = resize_image(torch.from_numpy(np.asarray(r.image))[None].float(), grid)[0].contiguous()
            out = {"image": image.numpy()}
            if r.has_mask:
                out["dense"] = resize_mask(torch.from_numpy(np.asarray(r.mask))[None].long(), grid)[0]
                out["dense"] = out["dense"].to(torch.uint8).numpy()
            return out

        if not r.is_lazy:
            made = arrays()
            dense = made.get("dense")
            return MemoryVolume(
                torch.from_numpy(made["image"]), None if dense is None else torch.from_numpy(dense)
            )
        names = ["image", "dense"] if r.has_mask else ["image"]
        key = store.entry_key("grid3d", r.reader, grid=list(grid))
        folder = store.entry(
            store.cache_dir(cache_dir),
            "grid3d",
            key,
            names,
            lambda folder: store.save_arrays(folder, arrays()),
        )
        return DiskVolume(folder, r.has_mask)

    def _counts(self, dense: torch.Tensor) -> torch.Tensor:
        return torch.bincount(dense[dense != IGNORE_INDEX], minlength=self.num_classes)[
            : self.num_classes
        ].float()

    def _foreground(self, mask: torch.Tensor, record_id: str) -> list[np.ndarray]:
        rng = np.random.default_rng([stable_hash(record_id), 17])
        out = []
        flat = mask.numpy()
        for c in range(1, self.num_classes):
            idx = np.argwhere(flat == c)
            if len(idx) > MAX_FOREGROUND_VOXELS:
                idx = idx[np.sort(rng.choice(len(idx), MAX_FOREGROUND_VOXELS, replace=False))]
            out.append(idx)
        return out

    def _loss_mask(self, index: int, start: Sequence[int]) -> torch.Tensor:
        """What the loss sees in the patch at ``start`` (long): the dense mask, the kept sparse voxels,
        or nothing (tag, size, none)."""
        if self.kind == Supervision.DENSE and self.volumes[index].has_mask:
            return self.volumes[index].crop("dense", start, self.patch_size, IGNORE_INDEX).long()
        if self.kind == Supervision.SPARSE:
            return points_mask(self.points[index], self.patch_size, start)
        return torch.full(self.patch_size, IGNORE_INDEX, dtype=torch.long)

    def patch_start(self, index: int, position: int, rng: np.random.Generator) -> tuple[int, ...]:
        """The patch's start on the training grid (the first draws of ``rng``)."""
        size = self.volumes[index].shape
        patch = self.patch_size
        present = [c for c, idx in enumerate(self.foreground[index]) if len(idx)]
        if present and forced(position, self.foreground_ratio):
            voxels = self.foreground[index][present[int(rng.integers(len(present)))]]
            centre = voxels[int(rng.integers(len(voxels)))]
            return tuple(
                int(np.clip(v - p // 2, min(0, n - p), max(0, n - p))) for v, p, n in zip(centre, patch, size)
            )
        return tuple(int(rng.integers(min(0, n - p), max(0, n - p) + 1)) for p, n in zip(patch, size))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, position = self._key(key)
        rng = sample_rng(self.seed, self.epoch, position)
        start = self.patch_start(index, position, rng)
        volume = self.volumes[index]
        image = volume.crop("image", start, self.patch_size, 0.0)
        mask = self._loss_mask(index, start)
        tags = sizes = torch.full((self.num_classes,), float("nan"))
        if self.kind in (Supervision.TAG, Supervision.SIZE):
            counts = self._counts(volume.crop("dense", start, self.patch_size, IGNORE_INDEX).long())
            tags, sizes = ((counts > 0).float(), sizes) if self.kind == Supervision.TAG else (tags, counts)
        # the padding past the volume's end rides on the mask through the augmentation (PADDED), so
        # that `valid` moves with the image; the geometric fill (rotation corners, shifted-in voxels:
        # IGNORE_INDEX) stays valid, as in 2D; the mask ignores the padding, as before
        mask = mask.masked_fill(inside_mask(volume.shape, start, self.patch_size) == PADDING, PADDED)
        if self.augment_cfg is not None:
            image, mask, sizes = augment(image, mask, sizes, self.augment_cfg, rng)
        valid = mask != PADDED
        mask = mask.masked_fill(~valid, IGNORE_INDEX)
        item = self._item(index, position, image, mask, tags, sizes)
        item["valid"] = valid
        return item
