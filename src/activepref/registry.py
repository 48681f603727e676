"""One registry type for every extension point: acquisition methods, judges, chat backends and
embedders (``activepref plugins`` lists them all).

A :class:`Registry` maps a name to an entry: a small frozen record with at least ``name`` and
a one-line ``description`` (each kind adds its own fields, e.g. an acquisition method's
``kind`` and ``inputs``, a judge's factory). It refuses a name registered twice, knows which
modules to import on first use (``lazy``: name -> module, so that a heavy backend's module is
only imported when a run asks for it), records who registered each entry (``built-in`` or the
plugin package's name, see ``activepref.plugins``) and turns an unknown name into a
:class:`~activepref.errors.ConfigError` that lists the known ones.

It is also a read-only ``Mapping`` (``name in REGISTRY``, ``REGISTRY[name]``,
``REGISTRY.items()``), which is how the older per-kind dicts were used.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, Protocol, TypeVar

from activepref.errors import ConfigError

BUILTIN = "built-in"

# Who is registering right now: "built-in" unless a plugin module is being imported.
_ORIGIN: ContextVar[str] = ContextVar("activepref_registry_origin", default=BUILTIN)


class Registered(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...


E = TypeVar("E", bound=Registered)


@contextmanager
def registering_as(origin: str) -> Iterator[None]:
    """Entries added inside this block are recorded as coming from ``origin``."""
    token = _ORIGIN.set(origin)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


class Registry(Mapping[str, E], Generic[E]):
    """name -> entry for one kind of extension.

    kind: what the entries are, for messages ("acquisition method", "judge", ...).
    lazy: name -> module that registers that name when imported; looked up on first use.
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}
        self._origins: dict[str, str] = {}
        self._lazy = dict(lazy or {})

    # -- registration -------------------------------------------------------------------
    def add(self, entry: E) -> E:
        """Register ``entry`` under ``entry.name``; a second entry of the same name is refused."""
        name = entry.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind}: a name must be a non-empty string (got {name!r})")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} registered twice (first by {self._origins[name]}, again by {_ORIGIN.get()})"
            )
        if not isinstance(entry.description, str) or not entry.description.strip():
            raise ValueError(f"{self.kind} {name!r}: give a one-line description")
        self._entries[name] = entry
        self._origins[name] = _ORIGIN.get()
        return entry

    @staticmethod
    def _prepare() -> None:
        """Installed plugins register before the first lookup of any name (once per process)."""
        from activepref.plugins import load_plugins

        load_plugins()

    # -- lookup -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every known name, registered or importable: the lazy ones in their declared order,
        then the others in registration order (the same list whatever has been imported)."""
        self._prepare()
        return list(self._lazy) + [n for n in self._entries if n not in self._lazy]

    def get(self, name: str) -> E:
        """The entry for ``name`` (importing its module if it is lazy), or ConfigError."""
        self._prepare()
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        from activepref.plugins import failure_hint

        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{failure_hint()}"

    def check_name(self, name: str) -> str:
        """For pydantic validators: ``name`` if known (nothing imported), else ValueError."""
        if name not in self.names():
            raise ValueError(self.unknown_message(name))
        return name

    def origin(self, name: str) -> str:
        """``built-in`` or the name of the plugin package that registered ``name``."""
        self.get(name)
        return self._origins[name]

    def available(self) -> list[E]:
        """Every entry, importing the lazy modules (their heavy dependencies load on use)."""
        for name in self.names():
            self.get(name)
        return list(self._entries.values())

    # -- Mapping ------------------------------------------------------------------------
    def __getitem__(self, name: str) -> E:
        if name not in self.names():
            raise KeyError(name)
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
