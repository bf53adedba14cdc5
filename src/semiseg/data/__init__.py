"""Datasets, supervision, splits and transforms.

:func:`load_bundle` reads a dataset named in the config (loaders register themselves by name,
:mod:`semiseg.data.registry`); :func:`prepare_data` turns it into the labeled / unlabeled training
views and the validation / test records a run needs.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semiseg.config import DataConfig, RunConfig
from semiseg.data.records import IGNORE_INDEX, DatasetBundle, Record
from semiseg.data.registry import DATASETS, DatasetSource, register_dataset
from semiseg.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "DatasetBundle",
    "Record",
    "check_scored_masks",
    "dataset_folder",
    "load_bundle",
    "prepare_data",
    "register_dataset",
    "resolve_data_root",
    "run_split",
]


def resolve_data_root(option: str | None) -> Path:
    """The data root from ``--data-root`` or ``$SEMISEG_DATA``; a clear error when neither is usable."""
    value = option or os.environ.get("SEMISEG_DATA")
    if not value:
        raise ConfigError("no data root: pass --data-root DIR or set SEMISEG_DATA")
    root = Path(value).expanduser()
    if not root.is_dir():
        source = "--data-root" if option else "SEMISEG_DATA"
        raise DataError(root, f"data root not found (from {source})")
    return root


def _dataset_path(cfg: DataConfig, data_root: str | None, source: DatasetSource) -> Path | None:
    """``data.path`` (absolute, or under the data root), else the source's folder under the data root;
    None for generated data without ``data.path``."""
    if cfg.path is not None and Path(cfg.path).expanduser().is_absolute():
        return Path(cfg.path).expanduser()
    if cfg.path is None and not source.needs_root:
        return None
    if cfg.path is not None and not (data_root or os.environ.get("SEMISEG_DATA")):
        raise ConfigError(
            f"data.path: '{cfg.path}' is relative, so it is read under the data root: give an absolute "
            "path, or pass --data-root DIR or set SEMISEG_DATA"
        )
    root = resolve_data_root(data_root)
    sub = cfg.path or source.folder
    if sub is None:
        raise ConfigError(f"data.path: required for dataset '{cfg.dataset}'")
    return root / sub


def dataset_folder(cfg: DataConfig, data_root: str | None = None) -> Path | None:
    """The folder ``cfg.dataset`` is read from (see :func:`load_bundle`); None for built-in data."""
    return _dataset_path(cfg, data_root, DATASETS.get(cfg.dataset, where="data.dataset"))


def load_bundle(cfg: DataConfig, data_root: str | None = None) -> DatasetBundle:
    """Read the dataset ``cfg.dataset`` (validating every file) into a :class:`DatasetBundle`."""
    from semiseg.data.records import ARRAYS

    source = DATASETS.get(cfg.dataset, where="data.dataset")
    path = _dataset_path(cfg, data_root, source)
    ARRAYS.max_bytes = cfg.cache_mib * 2**20
    bundle = source.load(cfg, path)
    if path is not None:
        bundle.root = str(path)
    return bundle


@dataclass
class PreparedData:
    bundle: DatasetBundle
    split: object  # semiseg.data.splits.Split
    labeled: object  # TrainSet
    unlabeled: object | None  # TrainSet or None
    val: list[Record]
    test: list[Record]


def check_scored_masks(bundle: DatasetBundle, split) -> None:
    """A DataError naming the first validation or test image of a segmentation dataset that has no mask
    (they are scored against their masks; e.g. a folder's ``val/`` or ``test/`` image without one)."""
    if bundle.task != "segment":
        return
    for name, records in (("validation", split.val), ("test", split.test)):
        bare = next((r for r in records if not r.has_mask), None)
        if bare is not None:
            raise DataError(
                bare.source or bare.id,
                f"a {name} image needs a mask, and this one has none (images without masks belong to the "
                "training pool)",
            )


def run_split(bundle: DatasetBundle, cfg: RunConfig):
    """The split a run of ``cfg`` trains on (what ``split.json`` and ``semiseg data split`` record): the
    split spec applied to ``bundle``, validation and test checked for masks, and for a 2D model the
    volumes of the training pool as their slices."""
    from semiseg.data.splits import make_split

    split = make_split(bundle, cfg.data.split)  # an empty validation set is refused by the trainer
    check_scored_masks(bundle, split)
    if cfg.model.spatial_dims != 3:  # a 2D model: volumes become their slices
        split.labeled, split.unlabeled = volume_slices(split.labeled), volume_slices(split.unlabeled)
    return split


def prepare_data(
    cfg: RunConfig, data_root: str | None = None, bundle: DatasetBundle | None = None
) -> PreparedData:
    """Load, split and wrap the data of a run. Fails before training on any data problem."""
    from semiseg.data.views import TrainSet

    bundle = bundle or load_bundle(cfg.data, data_root)
    split = run_split(bundle, cfg)
    spec = cfg.data.split
    if spec.val_supervision == "same" and spec.supervision == "sparse":
        split.val = sparsify_records(split.val, spec.sparse_pixels, spec.seed, spec.draw)
    common = dict(
        num_classes=bundle.num_classes,
        image_size=tuple(cfg.data.image_size),
        augment_cfg=cfg.train.augment,
        strong_cfg=cfg.train.strong_augment,
        cache_dir=cfg.data.cache_dir,
    )
    items: type = TrainSet
    if cfg.model.spatial_dims == 3:  # a 3D model: patches of whole volumes
        from semiseg.data.patches import PatchSet

        items = PatchSet
        common.update(patch_size=tuple(cfg.data.patch_size), foreground_ratio=cfg.data.foreground_ratio,
                      target_spacing=cfg.data.target_spacing)  # fmt: skip
    else:  # a 2D model (on the slices of volumes: run_split)
        # lazy images: one store entry for the training pool, whichever items a draw labels
        common["pool"] = sorted(split.labeled + split.unlabeled, key=lambda r: r.id)
    for r in split.labeled + split.unlabeled:
        if r.shape[0] != bundle.in_channels:
            raise DataError(r.source or r.id, f"expected {bundle.in_channels} channels, got {r.shape[0]}")
    labeled = items(
        split.labeled,
        supervision=spec.supervision,
        seed=cfg.train.seed,
        sparse_pixels=spec.sparse_pixels,
        draw=spec.draw,
        split_seed=spec.seed,
        **common,
    )
    unlabeled = None
    if split.unlabeled:
        weak = spec.unlabeled_supervision
        if weak != "none":
            # a tag / size comes from the dataset's tags / sizes file, else is counted from the item's
            # mask, which must then be whole (a mask of clicks shows neither every class nor its size)
            given = bundle.tags if weak == "tag" else bundle.sizes
            where = f" (a folder dataset: or an entry in its {weak}s.json)"
            for r in split.unlabeled:
                if r.id in given:
                    continue
                if not r.has_mask:
                    raise DataError(r.source or r.id, f"data.split.unlabeled_supervision: {weak} needs a mask to "
                                                      f"count from{where}, and this item has none")  # fmt: skip
                if (np.asarray(r.mask) == IGNORE_INDEX).any():
                    raise DataError(r.source or r.id, f"data.split.unlabeled_supervision: {weak} cannot be counted "
                                                      f"from a mask with unlabeled pixels{where}")  # fmt: skip
        if items is TrainSet:  # tags.json / sizes.json name 2D images only
            if weak == "tag" and bundle.tags:
                common["file_tags"] = bundle.tags
            if weak == "size" and bundle.sizes:
                common["file_sizes"] = bundle.sizes
        unlabeled = items(split.unlabeled, supervision=weak, seed=cfg.train.seed + 1_000_003, **common)
    return PreparedData(bundle, split, labeled, unlabeled, split.val, split.test)


def volume_slices(records: list[Record]) -> list[Record]:
    """Training records for a 2D model: each volume ``[C, D, H, W]`` becomes its D slices
    (``<id>_slice_<k>``, k from 0, in the volume's group, with its in-plane spacing); 2D records as
    they are. Validation and test volumes stay whole (scored per volume)."""
    out: list[Record] = []
    for r in records:
        out.extend([r] if r.ndim == 3 else [r.slice(k) for k in range(r.shape[1])])
    return out


def sparsify_records(records: list[Record], n_pixels: int, seed: int, draw: int) -> list[Record]:
    """Copies of ``records`` whose masks keep ``n_pixels`` random pixels (per 2D image or volume)."""
    return [r.with_mask(functools.partial(_sparse_val_mask, n_pixels, seed, draw, r.id)) for r in records]


def _sparse_val_mask(n_pixels: int, seed: int, draw: int, record_id: str, mask: np.ndarray) -> np.ndarray:
    import torch

    from semiseg.data.views import sparse_mask

    return sparse_mask(torch.from_numpy(np.asarray(mask)), n_pixels, seed, draw, "val:" + record_id).numpy()
