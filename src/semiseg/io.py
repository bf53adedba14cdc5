"""Atomic file writes: write to a temporary file in the same folder, then ``os.replace``.

Used for everything a run writes (checkpoints, logs, metrics, splits, predicted masks). A crash
while writing leaves the previous file (if any) intact and no partial file behind. The file gets
the permissions an ordinary ``open(path, "w")`` would give (``0o666`` minus the process umask), and
its data reaches the disk (``fsync``) before it replaces the old file, so a power loss cannot leave
an empty file under the final name. A low module: imports nothing from semiseg.

Examples:
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out" / "metrics.json"
    >>> atomic_write_text(target, '{"dice": 0.9}')
    >>> target.read_text()
    '{"dice": 0.9}'
"""

from __future__ import annotations

import json
import math
import numbers
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semiseg.errors import DataError


def _create_temp(folder: Path, name: str) -> str:
    """A new empty file next to the target; ``os.open`` with mode 0o666 lets the kernel apply the
    umask (``tempfile.mkstemp`` would always give 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        except PermissionError:  # name the folder and the file meant, not our temporary file
            raise PermissionError(
                13, f"cannot write {name} into this folder (permission denied)", str(folder)
            ) from None
        return str(tmp)
    raise FileExistsError(f"{folder}: could not create a temporary file for {name}")  # pragma: no cover


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort (not every OS or file system supports it)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exists(path: Path) -> bool:
    """``path.exists()``, with a folder on the way that cannot be entered as a one-line error (Python
    3.11's ``exists`` raises ``PermissionError`` there)."""
    try:
        return path.exists()
    except OSError as exc:
        raise DataError(path, f"cannot be reached ({exc.strerror or type(exc).__name__})") from None


def check_folder(path: str | Path) -> Path:
    """``path`` as a folder to create or write into, checked before any work: neither it nor its
    first existing ancestor is a file. Raises a one-line :class:`DataError`. (Permissions are left
    to the write itself: ``os.access`` can disagree with it.)

    Examples:
        >>> import pathlib, tempfile
        >>> base = pathlib.Path(tempfile.mkdtemp())
        >>> check_folder(base / "a" / "b") == base / "a" / "b"
        True
        >>> _ = (base / "f").write_text("x")
        >>> check_folder(base / "f" / "sub")
        Traceback (most recent call last):
        ...
        semiseg.errors.DataError: ...f: is a file, not a folder to write into
    """
    path = Path(path)
    ancestor = path
    while not _exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if _exists(ancestor) and not ancestor.is_dir():
        raise DataError(ancestor, "is a file, not a folder to write into")
    return path


def check_file_target(path: str | Path) -> Path:
    """``path`` as a file to write, checked before any work: not a folder, and its folder can be made
    (:func:`check_folder`). Raises a one-line :class:`DataError`."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder: give a file name to write")
    check_folder(path.parent)
    return path


def make_folder(path: str | Path) -> Path:
    """:func:`check_folder`, then create it (and its parents); an OS refusal is a one-line
    :class:`DataError`."""
    path = check_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(path, f"cannot create the folder ({exc.strerror or type(exc).__name__})") from None
    return path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``.

    The parent folder is created if needed. ``write`` receives the path of an empty temporary file
    in the same folder (any writer that opens a path works: ``torch.save``, ``Image.save``, ...).
    """
    path = check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # an OS refusal stays an OSError (callers may allow it)
    tmp = _create_temp(path.parent, path.name)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def json_values(obj: Any) -> Any:
    """``obj`` (dicts, lists, numbers) as strict JSON holds it: NaN and ±inf as ``None``, numeric
    scalars of other libraries (NumPy, 0-d tensors) as plain numbers.

    Examples:
        >>> json_values({"hd95": float("nan"), "dice": 0.5, "cases": [2]})
        {'hd95': None, 'dice': 0.5, 'cases': [2]}
    """
    if isinstance(obj, dict):
        return {k: json_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_values(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    try:
        value = float(obj)
    except (TypeError, ValueError):
        return obj
    return value if math.isfinite(value) else None


def strict_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_values` of ``obj``: ``null`` for NaN and ±inf (``jq``, JavaScript
    and most JSON libraries refuse Python's bare ``NaN``). For the files users read:
    ``metrics.json``, ``evaluate -o``.

    Examples:
        >>> strict_json({"hd95": float("nan"), "dice": 0.5, "cases": 2})
        '{"hd95": null, "dice": 0.5, "cases": 2}'
    """
    return json.dumps(json_values(obj), allow_nan=False, **kwargs)
