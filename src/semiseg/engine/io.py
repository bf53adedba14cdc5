"""Moved to :mod:`semiseg.io` (a low module that data, engine and bench all use); kept as an alias
for code written against the old path. New code imports ``semiseg.io``."""

from semiseg.io import atomic_write, atomic_write_text

__all__ = ["atomic_write", "atomic_write_text"]
