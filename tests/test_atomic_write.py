"""Atomic writes (semiseg.io): permissions from the umask, fsync before the rename, no partial files."""

from __future__ import annotations

import os
import stat

import pytest

import semiseg.io as sio
from semiseg.io import atomic_write, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_permissions_like_open(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").write(b"\0"))
    with open(tmp_path / "plain.txt", "w") as fh:  # what an ordinary write gives
        fh.write("x")
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.bin") == mode(tmp_path / "plain.txt")
    assert mode(tmp_path / "a.txt") == 0o666 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_replacing_a_file_keeps_umask_permissions(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o644


def test_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    fd_paths: dict[int, str] = {}
    real_open = os.open

    def spy_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        fd_paths[fd] = os.fspath(path)
        return fd

    def spy_fsync(fd):
        events.append(("fsync", fd_paths.get(fd, "?")))
        real_fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(sio.os, "open", spy_open)
    monkeypatch.setattr(sio.os, "fsync", spy_fsync)
    monkeypatch.setattr(sio.os, "replace", spy_replace)
    target = tmp_path / "best.pt"
    atomic_write_text(target, "weights")
    kinds = [e[0] for e in events]
    assert "replace" in kinds
    replace_at = kinds.index("replace")
    before = [p for kind, p in events[:replace_at] if kind == "fsync"]
    assert any(os.path.basename(p).startswith(".best.pt.") for p in before), events  # the temp file
    if os.name == "posix":
        after = [p for kind, p in events[replace_at:] if kind == "fsync"]
        assert after == [str(tmp_path)], events  # then the folder (the rename itself)
    assert target.read_text() == "weights"


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def failing(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_creates_parent_folders_and_writes_utf8(tmp_path):
    target = tmp_path / "a" / "b" / "notes.txt"
    atomic_write_text(target, "α·TV ≥ 0")
    assert target.read_bytes().decode("utf-8") == "α·TV ≥ 0"


def test_a_folder_or_a_file_in_the_way_is_a_one_line_error(tmp_path):
    from semiseg.errors import DataError
    from semiseg.io import atomic_write_text

    (tmp_path / "odir").mkdir()
    with pytest.raises(DataError, match=r"odir: is a folder: give a file name to write"):
        atomic_write_text(tmp_path / "odir", "x")
    (tmp_path / "f").write_text("mine")
    with pytest.raises(DataError, match=r"f: is a file, not a folder to write into"):
        atomic_write_text(tmp_path / "f" / "child.json", "x")
    assert (tmp_path / "f").read_text() == "mine" and not any((tmp_path / "odir").iterdir())


def test_a_folder_that_refuses_writes_is_named_with_the_file_meant(tmp_path, monkeypatch):
    """Not our temporary file's name (the CLI prints filename: strerror in one line)."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(sio.os, "open", refuse)
    with pytest.raises(PermissionError) as info:
        sio.atomic_write_text(tmp_path / "split.json", "{}")
    assert info.value.filename == str(tmp_path)
    assert info.value.strerror == "cannot write split.json into this folder (permission denied)"
