"""Named catalogues of plugins: methods, models, regularizers, datasets, benchmark tables.

One small helper for every catalogue, in the spirit of timm's ``@register_model`` and USB's
``@ALGORITHMS.register``. A plugin registers itself where it is defined; the module that owns a
registry never imports its plugins by name::

    METHODS = Registry("method", package="semiseg.methods")

    @METHODS.register("supervised")
    class Supervised(Method): ...

    METHODS.get("supervised", where="method.name")  # the class; unknown name → one-line ConfigError
    METHODS.names()                                 # ['size', 'supervised', 'tv']
    "tv" in METHODS                                 # True

Discovery is lazy: the first lookup (``get``, ``names``, ``in``, ``len``, iteration, ``[name]``)
fills the registry, so creating one costs nothing and ``semiseg --help`` stays fast.

1. Built-in plugins: every module of ``package`` is imported (:func:`pkgutil.iter_modules`: direct
   children only, names starting with ``_`` skipped); their ``@register`` decorators run on import.
2. Third-party plugins: the entry points of group ``group`` (default ``semiseg.<kind>s``, e.g.
   ``semiseg.methods``, ``semiseg.models``, ``semiseg.regularizers``, ``semiseg.datasets``,
   ``semiseg.tables``). A package declares them in its ``pyproject.toml``::

       [project.entry-points."semiseg.methods"]
       my_method = "my_package.my_method"             # a module whose import registers it, or
       my_method = "my_package.my_method:MyMethod"    # an object, registered under "my_method"

   A plugin that fails to load is skipped with a warning (a broken add-on must not break the
   built-ins); a failing built-in module raises.

Registering never triggers discovery, so plugin modules may register at import time freely.

Examples:
    >>> reg = Registry("colour", package=None, group=None)
    >>> @reg.register("red")
    ... def red():
    ...     return (255, 0, 0)
    >>> reg.get("red")()
    (255, 0, 0)
    >>> reg.names()
    ['red']
    >>> reg.get("rde", where="style.colour")
    Traceback (most recent call last):
    ...
    semiseg.errors.ConfigError: style.colour: unknown colour 'rde' (did you mean 'red'? known: red)
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from semiseg.errors import ConfigError

T = TypeVar("T")

_DEFAULT = object()  # group not given: semiseg.<kind>s


class Registry(Generic[T]):
    """A catalogue of named objects (classes, functions, specs) of one kind.

    Args:
        kind: What the entries are, singular ("method"); used in error messages.
        package: Package whose modules are imported on first lookup (built-in plugins), e.g.
            ``"semiseg.methods"``; a plain module (``"semiseg.bench.tables"``) is just imported;
            ``None`` = none.
        group: Entry-point group of third-party plugins; default ``f"semiseg.{kind}s"``; ``None`` =
            no entry points.
        name_attr: If set, :meth:`register` also stores the name on the registered object under this
            attribute (e.g. ``method_name`` on method classes).
    """

    def __init__(
        self,
        kind: str,
        *,
        package: str | None = None,
        group: str | None | Any = _DEFAULT,
        name_attr: str | None = None,
    ):
        self.kind = kind
        self.package = package
        self.group = f"semiseg.{kind}s" if group is _DEFAULT else group
        self.name_attr = name_attr
        self._entries: dict[str, T] = {}
        self._discovered = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, package={self.package!r}, group={self.group!r})"

    # ------------------------------------------------------------------------------ registering
    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` under ``name``: as a decorator (``@reg.register("x")``) or a call.

        Registering the same name twice raises ``ValueError``, except for the same object defined
        again (a module imported twice or reloaded), which replaces the old entry.
        """
        if obj is None:
            return lambda o: self.register(name, o)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        with self._lock:
            old = self._entries.get(name)
            if (
                old is not None
                and old is not obj
                and (_qualified(old) is None or _qualified(old) != _qualified(obj))
            ):
                raise ValueError(
                    f"{self.kind} '{name}' is already registered ({_qualified(old) or old!r}); "
                    f"cannot register {_qualified(obj) or obj!r} under the same name"
                )
            self._entries[name] = obj
        if self.name_attr:
            setattr(obj, self.name_attr, name)
        return obj

    def pop(self, name: str, default: Any = None) -> T | Any:
        """Remove ``name`` and return its object (``default`` if absent), like ``dict.pop``; for tests
        that register a temporary entry."""
        with self._lock:
            return self._entries.pop(name, default)

    # ------------------------------------------------------------------------------ looking up
    def get(self, name: str, where: str | None = None) -> T:
        """The object registered as ``name``.

        Raises:
            ConfigError: ``"<where>: unknown <kind> '<name>' (did you mean ...? known: ...)"``,
                ``where`` being the config key that named it (default: the kind).
        """
        self._discover()
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        known = self.names()
        listing = ", ".join(known) if known else "none registered"
        close = difflib.get_close_matches(name, known, n=1) if isinstance(name, str) else []
        hint = f"did you mean '{close[0]}'? known: {listing}" if close else f"known: {listing}"
        shown = f"'{name}'" if isinstance(name, str) else repr(name)
        raise ConfigError(f"{where or self.kind}: unknown {self.kind} {shown} ({hint})")

    def names(self) -> list[str]:
        """Sorted names of every entry, built-in and third-party."""
        self._discover()
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)

    # ------------------------------------------------------------------------------ discovery
    def _discover(self) -> None:
        if self._discovered:
            return
        with self._lock:
            if self._discovered:
                return
            self._discovered = True  # set first: plugin modules may look the registry up on import
            try:
                self._import_package()
            except BaseException:
                self._discovered = False
                raise
            self._load_entry_points()

    def _import_package(self) -> None:
        if self.package is None:
            return
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def _load_entry_points(self) -> None:
        if not self.group:
            return
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken add-on must not break the built-ins
                warnings.warn(
                    f"semiseg: skipping {self.kind} plugin '{ep.name}' ({ep.value}): "
                    f"{type(exc).__name__}: {exc}",
                    stacklevel=3,
                )
                continue
            if not isinstance(obj, types.ModuleType) and ep.name not in self._entries:
                self.register(ep.name, obj)


def _qualified(obj: Any) -> str | None:
    """``module.QualName`` of a class or function (the same after a reload); None for other objects."""
    qualname = getattr(obj, "__qualname__", None)
    return f"{getattr(obj, '__module__', '?')}.{qualname}" if isinstance(qualname, str) else None
