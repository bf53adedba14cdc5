"""User-facing error types.

Every mistake a user can make (bad config, bad data, missing files) raises a subclass of
:class:`SemisegError`. The CLI prints it as one line and exits with its ``exit_code``; no traceback.
"""

from __future__ import annotations

import os


class SemisegError(Exception):
    """A user-facing error: printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(SemisegError):
    """A config file or ``--set`` option is wrong (unknown key, wrong type, bad value)."""


class DataError(SemisegError):
    """Input data is missing or malformed. The message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message (at most ``limit`` characters), or its type name.

    For one-line user errors that wrap an exception from a library (torch, the ONNX exporter).
    """
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class TrainingDiverged(SemisegError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""

    exit_code = 3
