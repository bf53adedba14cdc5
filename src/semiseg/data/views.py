"""Training views: records resized to the training size, given their supervision, augmented.

A batch from :class:`TrainSet` is a dict of tensors, the same keys whatever the supervision, so
labeled, sparse, tagged, size-labeled and unlabeled items can share a batch (the fields of
:class:`semiseg.core.Batch`; ``*S`` = ``H, W``):

- ``image`` ``[B, C, *S]`` float: the weak view (``train.augment``)
- ``mask`` ``[B, *S]`` long: dense or sparse labels, ``IGNORE_INDEX`` where unknown
- ``tags`` ``[B, K]`` float: 1/0 presence of each class, NaN when the item has no tag
- ``sizes`` ``[B, K]`` float: pixel count of each class, NaN when unknown
- ``kind`` ``[B]`` long: :class:`~semiseg.core.Supervision` values
- ``index`` ``[B]`` long: position in the view
- ``key`` ``[B, 3]`` long: (seed, epoch, position in the epoch's global order), the seed of every
  random draw of the item
- with :meth:`TrainSet.set_views`: ``strong`` ``[B, k, C, *S]`` float strong views sharing the weak
  view's geometry, and (``cutmix``) ``cutmix`` ``[B, k, *S]`` bool CutMix boxes
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from semiseg.config import AugmentConfig, StrongAugmentConfig
from semiseg.core import IGNORE_INDEX, Supervision, ViewSpec
from semiseg.data import store
from semiseg.data.records import Record
from semiseg.data.splits import stable_hash
from semiseg.data.transforms import augment, is_identity, sample_rng, strong_views, view_rngs
from semiseg.errors import DataError


def resize_image(image: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Shape: ``[N, C, H, W]`` → ``[N, C, *size]`` (bilinear, antialiased when shrinking); volumes
    ``[N, C, D, H, W]`` with a 3-entry ``size``: slice by slice in-plane (so a volume's slices are
    resized exactly as 2D images), then along depth when D changes (linear, antialiased when
    shrinking): separable, so trilinear where no axis shrinks."""
    size = tuple(size)
    if tuple(image.shape[-len(size) :]) == size:
        return image
    if len(size) == 3:
        n, c, d = image.shape[:3]
        h, w = size[1:]
        flat = image.reshape(n, c * d, *image.shape[3:])
        image = resize_image(flat, (h, w)).reshape(n, c, d, h, w)
        if d == size[0]:
            return image
        columns = image.permute(0, 1, 4, 2, 3).reshape(n, c * w, d, h)  # depth x height planes
        columns = resize_image(columns, (size[0], h))  # height kept: only depth is resampled
        return columns.reshape(n, c, w, size[0], h).permute(0, 1, 3, 4, 2).contiguous()
    shrink = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resize_mask(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Shape: ``[N, H, W]`` long → ``[N, *size]`` (nearest); ``[N, D, H, W]`` with a 3-entry ``size``.

    A partial mask (clicked pixels, scribbles: ``IGNORE_INDEX`` elsewhere) keeps every labeled pixel
    when it shrinks: nearest sampling would drop most isolated clicks, so each labeled pixel is also
    written into the target pixel that contains it, where sampling left none.

    Examples:
        >>> m = torch.full((1, 8, 8), IGNORE_INDEX); m[0, 1, 1] = 1; m[0, 6, 5] = 0
        >>> out = resize_mask(m, (2, 2))
        >>> out[0].tolist()
        [[1, 255], [255, 0]]
    """
    size = tuple(size)
    if tuple(mask.shape[-len(size) :]) == size:
        return mask
    out = F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
    source = mask.shape[-len(size) :]
    labeled = mask != IGNORE_INDEX
    if all(t <= s for t, s in zip(size, source)) and labeled.any() and not labeled.all():
        where = labeled.nonzero()  # [m, 1 + dims]: item, then source coordinates (row-major order)
        cells = [where[:, 0]] + [where[:, 1 + a] * size[a] // source[a] for a in range(len(size))]
        flat = torch.zeros_like(cells[0])
        for c, n in zip(cells, (mask.shape[0], *size)):
            flat = flat * n + c
        position = torch.arange(len(flat), device=flat.device)
        first = torch.full((int(flat.max()) + 1,), len(flat), device=flat.device)
        first = first.scatter_reduce(0, flat, position, reduce="amin")
        keep = (first[flat] == position) & (out[tuple(cells)] == IGNORE_INDEX)  # one source pixel per cell
        out[tuple(c[keep] for c in cells)] = mask[labeled][keep]
    return out


def training_grid(
    native: Sequence[int],
    image_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    target_spacing: Sequence[float] | None = None,
) -> tuple[int, ...]:
    """The training-grid shape of an image or volume of spatial shape ``native``: ``image_size``, with
    each ``-1`` entry keeping the native size on that axis; with ``target_spacing`` (mm per axis, -1 =
    keep), an axis with a target gets ``round(n · spacing / target)`` voxels (at least 1).

    Examples:
        >>> training_grid((9, 216, 256), (-1, 128, 128))
        (9, 128, 128)
        >>> training_grid((9, 216, 256), (-1, -1, -1), spacing=(10.0, 1.5, 1.5), target_spacing=(5.0, -1, 3.0))
        (18, 216, 128)
    """
    out = []
    for axis, (n, s) in enumerate(zip(native, image_size)):
        target = -1 if target_spacing is None else float(target_spacing[axis])
        if target > 0:
            if spacing is None:
                raise ValueError("a target spacing needs the volume's spacing")
            out.append(max(1, round(int(n) * float(spacing[axis]) / target)))
        else:
            out.append(int(n) if int(s) == -1 else int(s))
    return tuple(out)


def record_grid(
    record: Record, image_size: Sequence[int], target_spacing: Sequence[float] | None = None
) -> tuple[int, ...]:
    """:func:`training_grid` of a record; a record without a spacing under a target spacing is a
    one-line DataError naming its file."""
    if target_spacing is not None and record.spacing is None:
        raise DataError(
            record.source or record.id,
            "data.target_spacing needs volumes with a voxel spacing; this one has none",
        )
    return training_grid(record.spatial_shape, image_size, record.spacing, target_spacing)


def stack_resized(records: list[Record], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """2D records → images ``[N, C, *size]`` and masks ``[N, *size]`` (IGNORE_INDEX where no mask)."""
    images, masks = [], []
    for r in records:
        if r.image.ndim != 3:
            raise ValueError(
                f"{r.source or r.id}: training needs 2D images [C, H, W], got shape {r.image.shape}"
            )
        img = resize_image(torch.from_numpy(r.image)[None], size)[0]
        if r.mask is None:
            m = torch.full(size, IGNORE_INDEX, dtype=torch.long)
        else:
            m = resize_mask(torch.from_numpy(r.mask)[None], size)[0]
        images.append(img)
        masks.append(m)
    return torch.stack(images), torch.stack(masks)


def mask_points(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The labeled pixels of a (sparse) mask: their indices ``[m, ndim]`` and classes ``[m]``."""
    array = mask.numpy()
    kept = np.argwhere(array != IGNORE_INDEX)
    return kept, array[tuple(kept.T)]


def points_mask(
    points: tuple[np.ndarray, np.ndarray], size: Sequence[int], start: Sequence[int] | None = None
) -> torch.Tensor:
    """The long mask of ``size`` showing the :func:`mask_points` that fall in the box at ``start``
    (default: the origin); other pixels are ``IGNORE_INDEX``."""
    kept, values = points
    out = torch.full(tuple(size), IGNORE_INDEX, dtype=torch.long)
    local = kept - np.asarray(start if start is not None else [0] * len(size))
    inside = ((local >= 0) & (local < np.asarray(size))).all(1)
    out[tuple(torch.from_numpy(local[inside]).long().T)] = torch.from_numpy(values[inside]).long()
    return out


def sparse_mask(mask: torch.Tensor, n_pixels: int, seed: int, draw: int, record_id: str) -> torch.Tensor:
    """Keep ``n_pixels`` labeled pixels drawn uniformly at random; the rest become IGNORE_INDEX."""
    valid = torch.nonzero((mask != IGNORE_INDEX).flatten()).flatten().numpy()
    rng = np.random.default_rng([seed, draw, stable_hash(record_id)])
    keep = rng.choice(valid, size=min(n_pixels, len(valid)), replace=False)
    out = torch.full_like(mask, IGNORE_INDEX).flatten()
    out[keep] = mask.flatten()[keep]
    return out.view_as(mask)


class KeyedItems(Dataset):
    """What :class:`TrainSet` (images) and :class:`~semiseg.data.patches.PatchSet` (volume patches)
    share: an epoch, the views a phase asks for, a clean copy, and the item layout (see the module
    docstring); every random draw of an item is keyed by ``(seed, epoch, position)``."""

    ids: list[str]
    kind: Supervision
    labels: torch.Tensor

    def _init_views(
        self, augment_cfg: AugmentConfig | None, strong_cfg: StrongAugmentConfig | None, seed: int
    ) -> None:
        self.augment_cfg = augment_cfg if augment_cfg is not None and not is_identity(augment_cfg) else None
        self.strong_cfg = strong_cfg if strong_cfg is not None else StrongAugmentConfig()
        self.views: ViewSpec | None = None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_views(self, spec: ViewSpec | None) -> None:
        """Ask for ``spec.strong`` strong views per item (and CutMix boxes); ``None`` = weak view only."""
        self.views = spec

    def clean(self):
        """The same items without augmentation or views (a shallow copy sharing the tensors)."""
        out = copy.copy(self)
        out.augment_cfg, out.views = None, None
        return out

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def _key(key: int | tuple[int, int]) -> tuple[int, int]:
        """``(index, position)`` of a key: an index, or ``(index, position)``."""
        if isinstance(key, tuple | list):
            return int(key[0]), int(key[1])
        return int(key), int(key)

    def _item(self, index: int, position: int, image: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor,
              sizes: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """The item dict of a (weak-view) sample, with the strong views and boxes the phase asks for."""
        item = {
            "image": image,
            "mask": mask,
            "tags": tags,
            "sizes": sizes,
            "kind": torch.tensor(int(self.kind)),
            "index": torch.tensor(index),
            "key": torch.tensor([self.seed, self.epoch, position]),
            "label": self.labels[index],
        }
        if self.views is not None and self.views.strong > 0:
            rngs = view_rngs(self.seed, self.epoch, position, self.views.strong)
            strong, boxes = strong_views(image, self.strong_cfg, rngs, self.views.cutmix)
            item["strong"] = strong
            if boxes is not None:
                item["cutmix"] = boxes
        return item


class TrainSet(KeyedItems):
    """Resized, supervised and augmented training items (see module docstring for the batch)."""

    def __init__(
        self,
        records: list[Record],
        *,
        supervision: str,
        num_classes: int,
        image_size: tuple[int, int],
        augment_cfg: AugmentConfig | None = None,
        strong_cfg: StrongAugmentConfig | None = None,
        seed: int = 0,
        sparse_pixels: int = 10,
        draw: int = 0,
        split_seed: int = 0,
        cache_dir: str | Path | None = None,
        pool: list[Record] | None = None,
        file_tags: dict[str, list[int]] | None = None,
        file_sizes: dict[str, dict[int, float]] | None = None,
    ):
        kind = Supervision.parse(supervision)
        self.ids = [r.id for r in records]
        self.supervision = supervision
        self.num_classes = num_classes
        k = num_classes
        n = len(records)
        self.tags = torch.full((n, k), float("nan"))
        self.sizes = torch.full((n, k), float("nan"))
        #: lazy records: the resized images and dense masks in the on-disk store (rows ``self.row_of``),
        #: read per item; the rows hold ``pool`` (default: ``records``), e.g. the whole training pool, so
        #: that every draw of labeled items reads one entry
        self.rows: Path | None = None
        self.row_of: list[int] = []
        self.points: list[tuple[np.ndarray, np.ndarray]] = []  #: disk rows, sparse: kept pixels, classes
        if records and all(r.is_lazy for r in records):
            pool = pool if pool is not None else records
            self.rows = _resized_rows(pool, tuple(image_size), cache_dir)
            index = {r.id: i for i, r in enumerate(pool)}
            self.row_of = [index[r.id] for r in records]
            self.images = self.masks = None
            dense = (torch.from_numpy(store.read_row(self.rows / "dense.npy", i)).long() for i in self.row_of)
        else:
            self.images, dense = stack_resized(records, tuple(image_size))
            self.masks = dense if kind == Supervision.DENSE else torch.full_like(dense, IGNORE_INDEX)
        sparse, counts = [], []
        if kind in (Supervision.SPARSE, Supervision.TAG, Supervision.SIZE):
            for m, name in zip(dense, self.ids):
                if kind == Supervision.SPARSE:
                    kept = sparse_mask(m, sparse_pixels, split_seed, draw, name)
                    if self.rows is not None:  # on disk: keep the points, not a full mask
                        self.points.append(mask_points(kept))
                    else:
                        sparse.append(kept)
                else:
                    counts.append(torch.bincount(m[m != IGNORE_INDEX], minlength=k)[:k])
        if kind == Supervision.SPARSE and self.rows is None:
            self.masks = torch.stack(sparse)
        if counts:
            counts = torch.stack(counts).float()
            if kind == Supervision.TAG:
                self.tags = (counts > 0).float()
                for i, r in enumerate(records):  # listed in the tags file: its tag (background present)
                    if r.id in (file_tags or {}):
                        self.tags[i] = 0.0
                        self.tags[i, [0, *file_tags[r.id]]] = 1.0
            else:
                self.sizes = counts
                for i, r in enumerate(records):  # listed in the sizes file: its sizes, on the training grid
                    if r.id in (file_sizes or {}):
                        scale = math.prod(image_size) / math.prod(r.shape[1:])
                        self.sizes[i, 0] = float("nan")  # background: not given
                        self.sizes[i, 1:] = 0.0  # a foreground class not listed is absent
                        for c, pixels in file_sizes[r.id].items():
                            self.sizes[i, c] = pixels * scale
        self.labels = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
        if kind == Supervision.CLASS:
            missing = [r.id for r in records if r.label is None]
            if missing:
                raise DataError(missing[0], "has no class label but the split gives it 'class' supervision")
            self.labels = torch.tensor([int(r.label) for r in records], dtype=torch.long)
        self.kind = kind
        self._init_views(augment_cfg, strong_cfg, seed)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """``key`` is an index, or ``(index, position)`` with ``position`` the item's place in the
        epoch's global sample order: every random draw is seeded by ``(seed, epoch, position)``
        (``position = index`` for a plain index)."""
        index, position = self._key(key)
        image, mask, sizes = *self._row(index), self.sizes[index]
        if self.augment_cfg is not None:
            rng = sample_rng(self.seed, self.epoch, position)
            image, mask, sizes = augment(image, mask, sizes, self.augment_cfg, rng)
        return self._item(index, position, image, mask, self.tags[index], sizes)

    def _row(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index``'s resized image and what the loss sees of its mask (long)."""
        if self.rows is None:
            return self.images[index], self.masks[index]
        row = self.row_of[index]
        image = torch.from_numpy(store.read_row(self.rows / "images.npy", row))
        if self.kind == Supervision.DENSE:
            return image, torch.from_numpy(store.read_row(self.rows / "dense.npy", row)).long()
        if self.kind == Supervision.SPARSE:
            return image, points_mask(self.points[index], image.shape[1:])
        return image, torch.full(image.shape[1:], IGNORE_INDEX, dtype=torch.long)


def _resized_rows(records: list[Record], size: tuple[int, int], cache_dir: str | Path | None) -> Path:
    """The on-disk store's entry of lazy 2D ``records`` resized to ``size``: ``images.npy`` ``[N, C, *size]``
    float32 and ``dense.npy`` ``[N, *size]`` uint8 (``IGNORE_INDEX`` where no mask), written one record at
    a time (:class:`~semiseg.data.store.RowWriter`)."""
    n, channels = len(records), records[0].shape[0]

    def write(folder: Path) -> None:
        with (
            store.RowWriter(folder / "images.npy", n, (channels, *size), np.float32) as images,
            store.RowWriter(folder / "dense.npy", n, size, np.uint8) as masks,
        ):
            for r in records:
                image, mask = stack_resized([r], size)
                images.write(image[0].numpy())
                masks.write(mask[0].to(torch.uint8).numpy())

    key = store.entry_key("grid2d", [r.reader for r in records], size=list(size))
    return store.entry(store.cache_dir(cache_dir), "grid2d", key, ["images", "dense"], write)


class TrainSubset(Dataset):
    """Items ``indices`` of a :class:`TrainSet` as a stream of their own: its own positions, views
    and random draws (keyed by ``seed``), sharing the base set's tensors. ``index`` in an item is
    the base set's index.
    """

    def __init__(self, base: TrainSet, indices: Sequence[int], seed: int):
        self.base = copy.copy(base)  # own epoch, views and seed; the same tensors
        self.base.seed = seed
        self.indices = [int(i) for i in indices]

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def set_views(self, spec: ViewSpec | None) -> None:
        self.base.set_views(spec)

    def clean(self) -> TrainSubset:
        """The same items without augmentation or views (sharing the tensors)."""
        out = copy.copy(self)
        out.base = self.base.clean()
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, position = (
            (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), int(key))
        )
        return self.base[(self.indices[index], position)]
