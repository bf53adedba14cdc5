"""Claims on cached runs, so that several ``semiseg bench`` processes can share one table's work.

Before a run is trained (fresh or resumed), the process takes its lock file
(``<run dir>/bench-run.lock``): created atomically (``O_CREAT | O_EXCL``), it holds the owner's pid,
host name and start time. Another process that finds the lock held by a live process gets
:class:`RunBusy` and goes on with other runs; a lock whose process is gone (a crash, a ``kill -9``,
a reboot) is stale and is taken over. The lock is removed when the work ends, however it ends.

A process is "alive" if its pid exists on this host and, where ``/proc`` tells, it is the same
process (boot id and process start time match), so a pid reused after a reboot does not keep a
lock alive. A lock taken on another host cannot be checked from here: it counts as held.

Examples:
    >>> import pathlib, tempfile
    >>> lock = pathlib.Path(tempfile.mkdtemp()) / "bench-run.lock"
    >>> with claim(lock):
    ...     lock_owner(lock)["pid"] == os.getpid()
    True
    >>> lock.exists()
    False
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegError

#: the exit code of ``semiseg bench`` when runs are held by another process (sysexits' EX_TEMPFAIL:
#: "try again later"; 3 is TrainingDiverged's)
EXIT_BUSY = 75


class RunBusy(SemisegError):
    """The run (or derived result) at ``path`` is being computed by another live process."""

    exit_code = EXIT_BUSY

    def __init__(self, path: str | os.PathLike, owner: dict[str, Any]):
        self.path, self.owner = Path(path), owner
        super().__init__(f"{self.path.parent} is being computed by {describe(owner)}")


def describe(owner: dict[str, Any]) -> str:
    """``pid 123 on host since 2024-05-01 12:00:00`` for a lock's owner record.

    Examples:
        >>> describe({"pid": 7, "host": "node1", "started": "2024-05-01 12:00:00"})
        'pid 7 on node1 since 2024-05-01 12:00:00'
    """
    since = f" since {owner['started']}" if owner.get("started") else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{since}"


def _read_proc(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read_proc("/proc/sys/kernel/random/boot_id")


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` (clock ticks after boot, ``/proc/<pid>/stat`` field 22), or None."""
    stat = _read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after its last ")"
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def current_owner() -> dict[str, Any]:
    """The owner record of this process: pid, host, start time, and (on Linux) boot id and process
    start, which tell a live owner from a reused pid."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "boot_id": _boot_id(),
        "process_start": _process_start(os.getpid()),
        "token": os.urandom(8).hex(),  #: tells this claim from a later one of the same process
    }


def is_alive(owner: dict[str, Any]) -> bool:
    """Whether the owner of a lock may still be running: True for another host (cannot be checked)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    boot = owner.get("boot_id")
    if boot is not None and _boot_id() not in (None, boot):
        return False  # the machine rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return False
    start = owner.get("process_start")
    return start is None or _process_start(pid) in (None, start)  # None: pid reused by another process


def lock_owner(lock: str | os.PathLike) -> dict[str, Any] | None:
    """The owner record in ``lock``; ``{}`` if the file exists but is unreadable; None if there is none."""
    try:
        text = Path(lock).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return owner if isinstance(owner, dict) else {}


@contextlib.contextmanager
def _serialised(folder: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``folder`` for the check-and-take of a lock, so that two
    processes do not both take over the same stale lock, and no one reads a lock being written.
    Best effort: without ``fcntl`` (or on a file system that refuses it) the ``O_EXCL`` create alone
    decides."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


def _create(lock: Path, owner: dict[str, Any]) -> bool:
    """Create ``lock`` holding ``owner``; False if it exists."""
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    return True


def acquire(lock: str | os.PathLike) -> dict[str, Any]:
    """Take ``lock`` (its folder must exist) and return the owner record written to it.

    Raises:
        RunBusy: The lock is held by a live process (or by one on another host).
    """
    lock = Path(lock)
    owner = current_owner()
    with _serialised(lock.parent):
        for _ in range(3):  # a stale lock is removed, then the create is tried again
            if _create(lock, owner):
                return owner
            held = lock_owner(lock)
            if held is None:  # released in the meantime
                continue
            if held and is_alive(held):
                raise RunBusy(lock, held)
            why = f"{describe(held)}, gone" if held else "unreadable"
            print(f"bench: taking over the stale lock {lock} ({why})", flush=True)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    raise RunBusy(lock, lock_owner(lock) or {})  # pragma: no cover  (another host keeps taking it)


def release(lock: str | os.PathLike, owner: dict[str, Any]) -> None:
    """Remove ``lock`` if it is still the claim ``owner`` (a lock taken over by another process is kept)."""
    lock = Path(lock)
    held = lock_owner(lock)
    if held is not None and held.get("token") == owner["token"]:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def claim(lock: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """``with claim(path):`` holds the lock at ``path`` for the block (see :func:`acquire`)."""
    owner = acquire(lock)
    try:
        yield owner
    finally:
        release(lock, owner)
