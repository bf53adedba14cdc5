"""An on-disk cache of arrays derived from lazy records (e.g. volumes resized to their training grid).

3D training reads a patch of each volume per item. With lazy records (``data.loading``), the volumes
on their training grid are written once to ``data.cache_dir`` (default ``$SEMISEG_CACHE``, else
``~/.cache/semiseg``) as ``.npy`` files, and each patch is read from them through a short-lived memory
map, so a run holds one volume at a time however large the dataset.

An entry's key hashes what it is made from: the reader of the record (its function and arguments,
with every file argument's absolute path, size and modification time), what was derived (e.g. the
grid), and the source code of semiseg's data modules. A changed file, option or data code gives a new
key; entries are never updated in place, so concurrent runs (several workers, DDP ranks, table runs)
share them safely: each writes a private temporary folder and renames it, and the first rename wins.
Under DDP, rank 0 prepares the data first and the other ranks then read its entries
(:func:`semiseg.engine.distributed.main_first`), so a first run builds each entry once on one node
or with a cache folder that all nodes share (with a folder per node, each other node's ranks then
build its entries at once, correctly).
Old entries are not removed automatically: delete the folder at any time to reclaim the space.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "STORE_FORMAT",
    "RowWriter",
    "cache_dir",
    "code_hash",
    "describe",
    "entry",
    "entry_key",
    "read_row",
    "save_arrays",
]

STORE_FORMAT = 1  #: bump when the layout of entries changes


def cache_dir(option: str | None = None) -> Path:
    """``data.cache_dir``, else ``$SEMISEG_CACHE``, else ``~/.cache/semiseg``.

    Raises:
        ConfigError: the chosen path exists and is not a folder (named with the option it came from).
    """
    env = os.environ.get("SEMISEG_CACHE")
    where, value = (
        ("data.cache_dir", option) if option else ("$SEMISEG_CACHE", env) if env
        else ("the default cache folder", "~/.cache/semiseg")
    )  # fmt: skip
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        from semiseg.errors import ConfigError

        raise ConfigError(f"{where}: {path} is a file, not a folder")
    return path


class UndescribedReader(ValueError):
    """A reader whose description would not identify its data (a lambda, closure, bound method or an
    object without a stable ``repr``): it cannot key a store entry."""


def describe(obj: object) -> object:
    """A JSON-able description of a reader: module-level functions by qualified name and the hash of
    their module's source, ``functools.partial`` and dataclasses by their parts, paths by (absolute
    path, size, mtime), arrays by a hash of their bytes, plain values by ``repr``.

    Raises:
        UndescribedReader: a lambda, closure or bound method (their captured state is not described),
            or a value whose ``repr`` is the default ``<... at 0x...>``.
    """
    import numpy as np

    if isinstance(obj, functools.partial):
        return ["partial", describe(obj.func), [describe(a) for a in obj.args],
                {k: describe(v) for k, v in sorted(obj.keywords.items())}]  # fmt: skip
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [
            type(obj).__qualname__,
            {f.name: describe(getattr(obj, f.name)) for f in dataclasses.fields(obj)},
        ]
    if isinstance(obj, os.PathLike):
        path = Path(obj).resolve()
        try:
            st = path.stat()
        except OSError:
            return [str(path), None]
        return [str(path), st.st_size, st.st_mtime_ns]
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [
            "array",
            str(obj.dtype),
            list(obj.shape),
            hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest(),
        ]
    if callable(obj) and hasattr(obj, "__qualname__"):
        name = obj.__qualname__
        if (
            "<lambda>" in name
            or "<locals>" in name
            or getattr(obj, "__closure__", None)
            or hasattr(obj, "__self__")
        ):
            raise UndescribedReader(f"reader {name!r}: use a functools.partial of a module-level function")
        return [f"{getattr(obj, '__module__', '')}.{name}", _source_hash(getattr(obj, "__module__", None))]
    text = repr(obj)
    if " at 0x" in text:
        raise UndescribedReader(f"reader argument {text}: its repr does not describe it")
    return text


@functools.cache
def _source_hash(module: str | None) -> str | None:
    """A hash of a module's source file (a reader defined outside semiseg's data package changes its
    entries' keys when its code changes)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if not origin or not os.path.isfile(origin):
        return None
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]


@functools.cache
def _versions() -> dict[str, str]:
    """Versions of the libraries that decode and resize (a new one may change the arrays)."""
    from importlib import metadata

    out = {}
    for name in ("torch", "numpy", "pillow", "nibabel", "h5py", "tifffile"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def code_hash() -> str:
    """A hash of the source of semiseg's data package (a change invalidates every entry)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def entry_key(kind: str, reader: object, **derived: object) -> str:
    """The key of the entry ``kind`` (e.g. "grid3d") made from ``reader``'s record with ``derived``
    options (JSON-able)."""
    text = json.dumps(
        [STORE_FORMAT, code_hash(), _versions(), kind, describe(reader), derived], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def entry(root: Path, kind: str, key: str, names: Sequence[str], write: Callable[[Path], None]) -> Path:
    """The folder ``root/kind/key`` holding ``<name>.npy`` for every name, written by ``write(folder)``
    when missing. Writes go to a temporary folder renamed into place (the first writer wins)."""
    final = root / kind / key[:2] / key
    if all((final / f"{n}.npy").is_file() for n in names):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:8]}-", dir=final.parent))
    try:
        write(tmp)
        for _ in range(5):
            try:
                os.rename(tmp, final)
                break
            except OSError:  # another process wrote it first, or a stale partial folder is in the way
                if all((final / f"{n}.npy").is_file() for n in names):
                    break  # theirs is complete (entries are equal): keep it
                try:  # move the partial folder aside atomically, so no other process deletes a good one
                    stale = Path(tempfile.mkdtemp(prefix=f".stale-{key[:8]}-", dir=final.parent))
                    os.rename(final, stale / "old")
                    shutil.rmtree(stale, ignore_errors=True)
                except OSError:
                    pass  # someone else moved it: try again
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not all((final / f"{n}.npy").is_file() for n in names):
        raise OSError(f"{final}: could not write the store entry")
    return final


def save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """``<folder>/<name>.npy`` for every array (what an :func:`entry` writer of small entries does)."""
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)


class RowWriter:
    """Writes ``count`` arrays of ``row_shape`` as one ``.npy`` array ``[count, *row_shape]``, one row
    at a time (no memory map, whose dirty pages would count as resident memory)::

        with RowWriter(path, n, (3, 64, 64), np.float32) as w:
            for row in rows:
                w.write(row)
    """

    def __init__(self, path: Path, count: int, row_shape: Sequence[int], dtype):
        self.path, self.count, self.row_shape = path, int(count), tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.written = 0

    def __enter__(self) -> RowWriter:
        self._f = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *self.row_shape)}  # fmt: skip
        np.lib.format.write_array_header_1_0(self._f, header)
        return self

    def write(self, row: np.ndarray) -> None:
        row = np.ascontiguousarray(row, dtype=self.dtype)
        if row.shape != self.row_shape:
            raise ValueError(f"{self.path}: row of shape {row.shape}, expected {self.row_shape}")
        self._f.write(row.tobytes())
        self.written += 1

    def __exit__(self, *exc) -> None:
        self._f.close()
        if exc[0] is None and self.written != self.count:
            raise ValueError(f"{self.path}: {self.written} rows written, expected {self.count}")


def read_row(path: Path, index: int) -> np.ndarray:
    """Row ``index`` of an ``.npy`` array (a copy, read through a memory map dropped at once)."""
    data = np.load(path, mmap_mode="r")
    try:
        return np.array(data[index])
    finally:
        del data
