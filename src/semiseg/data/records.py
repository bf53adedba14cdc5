"""The in-memory form every loader produces.

A loader reads files, validates them and returns :class:`Record` objects grouped in a
:class:`DatasetBundle`. Records hold numpy arrays at the data's native resolution; resizing,
supervision (dense / sparse / tag / size / none) and augmentation are applied later by
:mod:`semiseg.data.views`, identically for every source.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from semiseg.core import IGNORE_INDEX

__all__ = [
    "ARRAYS",
    "IGNORE_INDEX",
    "ArrayCache",
    "DatasetBundle",
    "ItemMeta",
    "Record",
    "LOADING_MODES",
    "load_records",
    "record_slices",
]


@dataclass(frozen=True)
class ItemMeta:
    """What is known about a record without reading its arrays.

    Attributes:
        shape: The image's shape ``[C, H, W]`` or ``[C, D, H, W]``.
        has_mask: Whether the record has a mask.
        has_foreground: Whether the mask has a pixel of a class above 0 (``None``: not known yet,
            computed on first use).
    """

    shape: tuple[int, ...]
    has_mask: bool
    has_foreground: bool | None = None


class ArrayCache:
    """A least-recently-used cache of lazy records' arrays, bounded in bytes (per process).

    Reading a lazy record's ``image`` and then its ``mask`` decodes its file once. An item larger
    than the bound is kept alone in an overflow slot until the next read of another item, so that
    reading the slices of one large volume in turn decodes it once. The arrays returned are shared:
    do not modify them.
    """

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[object, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._bytes = 0
        self._oversize: tuple[object, tuple[np.ndarray, np.ndarray | None]] | None = None
        self.reads = 0  #: reads that missed the cache (for tests and benchmarks)

    @staticmethod
    def _size(arrays: tuple[np.ndarray, np.ndarray | None]) -> int:
        return sum(a.nbytes for a in arrays if a is not None)

    def get(self, reader: Callable[[], Record]) -> tuple[np.ndarray, np.ndarray | None]:
        hit = self._items.get(reader)
        if hit is not None:
            self._items.move_to_end(reader)
            return hit
        if self._oversize is not None and self._oversize[0] == reader:
            return self._oversize[1]
        self._oversize = None  # dropped before the next read, so at most one large item is held
        record = reader()
        self.reads += 1
        arrays = (record.image, record.mask)
        size = self._size(arrays)
        if size > self.max_bytes:
            self._oversize = (reader, arrays)
        else:
            self._items[reader] = arrays
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)
        return arrays

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
        self._oversize = None

    @property
    def nbytes(self) -> int:
        return self._bytes


#: the process's cache of lazy records' arrays (``data.cache_mib`` sets its bound)
ARRAYS = ArrayCache()


class Record:
    """One image (2D) or volume (3D) with its optional ground truth.

    A record is *eager* (its arrays in memory, ``Record(id, image, mask, ...)``) or *lazy*
    (:meth:`lazy`: a picklable ``reader`` that reads and validates the item again on use, plus the
    :class:`ItemMeta` taken when it was indexed). Both read the same: ``image`` and ``mask`` are
    arrays; a lazy record reads them through :data:`ARRAYS` and keeps nothing itself. ``shape``,
    ``ndim``, ``has_mask`` and ``has_foreground`` never read a lazy record's file.

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

    __slots__ = ("id", "_image", "_mask", "label", "group", "source", "spacing", "reader", "_meta")

    def __init__(
        self,
        id: str,
        image: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        label: int | None = None,
        group: str = "",
        source: str = "",
        spacing: Sequence[float] | None = None,
        *,
        reader: Callable[[], Record] | None = None,
        meta: ItemMeta | None = None,
    ):
        if (image is None) == (reader is None):
            raise ValueError("a Record needs either an image (eager) or a reader (lazy)")
        if reader is not None and meta is None:
            raise ValueError("a lazy Record needs its ItemMeta")
        self.id, self._image, self._mask, self.label = id, image, mask, label
        self.group, self.source, self.reader, self._meta = group or id, source, reader, meta
        self.spacing = None
        if spacing is not None:
            self.spacing = tuple(float(s) for s in spacing)
            if len(self.spacing) != len(self.shape) - 1 or not all(s > 0 for s in self.spacing):
                raise ValueError(
                    f"{self.source or self.id}: spacing {self.spacing} must give one positive size per "
                    f"spatial axis of an image of shape {self.shape}"
                )

    @classmethod
    def lazy(cls, reader: Callable[[], Record]) -> Record:
        """The lazy form of the record ``reader()`` returns: read (and validated) once now for its
        metadata, then again on each use of ``image`` / ``mask`` (through :data:`ARRAYS`)."""
        return reader().detach(reader)

    def detach(self, reader: Callable[[], Record]) -> Record:
        """This record made lazy: its metadata kept, its arrays dropped, ``reader`` reading them again."""
        meta = dataclasses.replace(self.meta, has_foreground=self.has_foreground)  # known now, at no read
        return Record(self.id, label=self.label, group=self.group, source=self.source, spacing=self.spacing,
                      reader=reader, meta=meta)  # fmt: skip

    @property
    def is_lazy(self) -> bool:
        return self.reader is not None

    @property
    def image(self) -> np.ndarray:
        return self._image if self.reader is None else ARRAYS.get(self.reader)[0]

    @property
    def mask(self) -> np.ndarray | None:
        return self._mask if self.reader is None else ARRAYS.get(self.reader)[1]

    @property
    def meta(self) -> ItemMeta:
        if self._meta is None:
            return ItemMeta(tuple(self._image.shape), self._mask is not None)
        return self._meta

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's shape ``[C, H, W]`` or ``[C, D, H, W]`` (without reading a lazy record)."""
        return tuple(self._image.shape) if self.reader is None else self._meta.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def has_mask(self) -> bool:
        return self._mask is not None if self.reader is None else self._meta.has_mask

    @property
    def has_foreground(self) -> bool:
        """Whether the mask has a pixel of a class above 0 (not ``IGNORE_INDEX``)."""
        known = None if self._meta is None else self._meta.has_foreground
        if known is None:
            mask = self.mask
            known = mask is not None and bool(((mask > 0) & (mask != IGNORE_INDEX)).any())
            if self._meta is not None:
                self._meta = dataclasses.replace(self._meta, has_foreground=known)
        return known

    def with_mask(self, fn: Callable[[np.ndarray | None], np.ndarray | None]) -> Record:
        """A copy whose mask is ``fn(mask)`` (a lazy record applies ``fn`` on each read; ``fn`` must
        then be picklable, e.g. a ``functools.partial`` of a module-level function)."""
        if self.reader is None:
            return Record(
                self.id, self._image, fn(self._mask), self.label, self.group, self.source, self.spacing
            )
        meta = dataclasses.replace(self._meta, has_foreground=None)
        return Record(self.id, label=self.label, group=self.group, source=self.source, spacing=self.spacing,
                      reader=MappedMask(self.reader, fn), meta=meta)  # fmt: skip

    def slice(self, k: int) -> Record:
        """Slice ``k`` of a volume as a 2D record ``<id>_slice_<k>`` (in the volume's group, with its
        in-plane spacing); a copy, so the slice does not keep the volume alive."""
        spacing = None if self.spacing is None else self.spacing[1:]
        common = dict(label=self.label, group=self.group, source=self.source, spacing=spacing)
        name = f"{self.id}_slice_{k}"
        if self.reader is None:
            mask = None if self._mask is None else self._mask[k]
            return Record(name, self._image[:, k], mask, **common)
        meta = ItemMeta((self.shape[0], *self.shape[2:]), self.has_mask)
        return Record(name, reader=VolumeSlice(self.reader, k, name), meta=meta, **common)

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "eager"
        return f"Record({self.id!r}, shape={self.shape}, has_mask={self.has_mask}, {kind})"


@dataclass(frozen=True)
class MappedMask:
    """A lazy record's reader with its mask replaced by ``fn(mask)`` (:meth:`Record.with_mask`)."""

    reader: Callable[[], Record]
    fn: Callable[[np.ndarray | None], np.ndarray | None]

    def __call__(self) -> Record:
        image, mask = ARRAYS.get(self.reader)
        return Record("", image, self.fn(mask))


@dataclass(frozen=True)
class VolumeSlice:
    """Reads slice ``k`` of a lazy volume (:meth:`Record.slice`), copied out of the volume."""

    reader: Callable[[], Record]
    k: int
    name: str

    def __call__(self) -> Record:
        image, mask = ARRAYS.get(self.reader)
        return Record(self.name, image[:, self.k].copy(), None if mask is None else mask[self.k].copy())


#: ``data.loading`` values: "auto" reads volumes lazily and 2D images eagerly
LOADING_MODES = ("auto", "eager", "lazy")


def load_records(
    readers: Iterable[Callable[[], Record]], loading: str, *, volumes: bool, cache: Path | None = None
) -> list[Record]:
    """Records from their readers (each reads and validates one item): eager (arrays kept), or lazy
    (:meth:`Record.lazy`, one item in memory at a time) when ``loading`` is "lazy", or "auto" and the
    items are ``volumes``.

    Indexing lazy records reads every item once for its metadata. With a ``cache`` folder (the
    store's, ``data.cache_dir``) that metadata is also written to a manifest keyed by every reader's
    description (files by path, size and modification time; the data code; library versions), and a
    later indexing of the same unchanged files takes it from there without reading them.
    """
    if loading not in LOADING_MODES:
        raise ValueError(f"loading must be one of {', '.join(LOADING_MODES)}, got {loading!r}")
    if loading == "lazy" or (loading == "auto" and volumes):
        readers = list(readers)
        return _indexed(readers, cache) if cache is not None else [Record.lazy(r) for r in readers]
    return [r() for r in readers]


#: bump when the manifest's row layout changes
MANIFEST_FORMAT = 1


def _indexed(readers: list[Callable[[], Record]], cache: Path) -> list[Record]:
    """Lazy records of ``readers``, their metadata from the manifest in ``cache`` when it matches."""
    import hashlib
    import json

    from semiseg.data import store
    from semiseg.io import atomic_write_text

    try:
        keys = [store.entry_key("meta", r) for r in readers]
    except store.UndescribedReader:
        return [Record.lazy(r) for r in readers]
    key = hashlib.sha256(json.dumps([MANIFEST_FORMAT, keys]).encode()).hexdigest()[:32]
    path = Path(cache) / "manifest" / key[:2] / f"{key}.json"
    try:
        rows = json.loads(path.read_text())
        if len(rows) == len(readers):
            return [_from_row(row, r) for row, r in zip(rows, readers)]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or unreadable: index again
    records = [Record.lazy(r) for r in readers]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps([_to_row(rec) for rec in records]))
    except OSError:
        pass  # a read-only cache only costs the next start its indexing
    return records


def _to_row(rec: Record) -> dict:
    meta = rec.meta
    return {"id": rec.id, "label": None if rec.label is None else int(rec.label), "group": rec.group,
            "source": rec.source, "spacing": None if rec.spacing is None else list(rec.spacing),
            "shape": list(meta.shape), "has_mask": meta.has_mask, "has_foreground": meta.has_foreground}  # fmt: skip


def _from_row(row: dict, reader: Callable[[], Record]) -> Record:
    meta = ItemMeta(tuple(int(s) for s in row["shape"]), bool(row["has_mask"]), row["has_foreground"])
    return Record(row["id"], label=row["label"], group=row["group"], source=row["source"], spacing=row["spacing"],
                  reader=reader, meta=meta)  # fmt: skip


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
    #: image-level tags given in a file (the ``folder`` dataset's ``tags.json``): record id → the
    #: foreground classes present (every other foreground class absent), used for the images it lists
    tags: dict[str, list[int]] = field(default_factory=dict)
    #: region sizes given in a file (the ``folder`` dataset's ``sizes.json``): record id → {foreground
    #: class: pixel count at the image's own resolution}, used for the images it lists
    sizes: dict[str, dict[int, float]] = field(default_factory=dict)

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
