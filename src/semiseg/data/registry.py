"""Dataset loaders by name: adding a dataset is one module plus its registration.

A loader module of :mod:`semiseg.data` registers a function ``(cfg, path) -> DatasetBundle``::

    @register_dataset("weizmann", folder="weizmann_horse")
    def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
        return load_weizmann(path)

``path`` is the dataset's folder: ``data.path`` (absolute, or relative to the data root) or else
``folder`` under the data root. A generated dataset registers ``needs_root=False`` and gets
``path=None`` unless ``data.path`` is set. Every module of :mod:`semiseg.data` is imported on the
first lookup of :data:`~semiseg.config.DATASETS`; third-party datasets register through the
``semiseg.datasets`` entry-point group (see :class:`~semiseg.registry.Registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from semiseg.config import DATASETS, DataConfig
from semiseg.data.records import DatasetBundle

Loader = Callable[[DataConfig, "Path | None"], DatasetBundle]

__all__ = ["DATASETS", "DatasetSource", "Loader", "register_dataset"]


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: its loader and where its files live.

    Attributes:
        name: The ``data.dataset`` name.
        load: ``(cfg, path) -> DatasetBundle``; reads and validates every file.
        folder: Default folder under the data root (``None``: ``data.path`` is required).
        needs_root: False for generated data (no files; ``path`` is None unless ``data.path`` is set).
    """

    name: str
    load: Loader
    folder: str | None = None
    needs_root: bool = True


def register_dataset(name: str, *, folder: str | None = None, needs_root: bool = True) -> Callable:
    """Decorator registering a loader ``(cfg, path) -> DatasetBundle`` as dataset ``name``."""

    def wrap(load: Loader) -> Loader:
        DATASETS.register(name, DatasetSource(name, load, folder, needs_root))
        return load

    return wrap
