"""Plugins: separately installed packages that add acquisition methods, judges, chat backends
or embedders.

A plugin package names one module per entry point in the group ``activepref.plugins``
(``[project.entry-points."activepref.plugins"] my_name = "my_package.activepref_plugin"`` in
its pyproject.toml). The first time any registry is asked for a name, activepref imports
each such module once; the module registers its entries with the decorators the built-ins
use (``activepref.acquisition.register`` / ``register_design``,
``activepref.judges.register_judge``, ``activepref.backends.register_backend``,
``activepref.live.embedders.register_embedder``), and the registries record the package's name as
each entry's origin (``activepref plugins`` shows it).

A plugin that fails to import, or that registers a name already taken, is logged with its
name and the error, listed by ``activepref plugins`` and named in every "unknown ..." error;
the built-ins and the other plugins keep working.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from activepref.registry import Registry, registering_as

ENTRY_POINT_GROUP = "activepref.plugins"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plugin:
    """One entry point of the group: its name, the module it names and the package that ships it."""

    name: str
    module: str
    package: str


@dataclass(frozen=True)
class PluginFailure:
    plugin: Plugin
    error: str


_lock = threading.RLock()
_loaded = False
_failures: list[PluginFailure] = []


def _package_of(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ep.value.split(".", 1)[0]


def load_plugins() -> list[PluginFailure]:
    """Import every installed plugin module once per process; returns the failures."""
    global _loaded
    with _lock:
        if _loaded:
            return list(_failures)
        _loaded = True  # set first: a plugin's own imports may consult the registries
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (_package_of(e), e.name)):
            plugin = Plugin(ep.name, ep.value, _package_of(ep))
            try:
                with registering_as(plugin.package):
                    ep.load()
            except Exception as exc:  # noqa: BLE001 - any import error of third-party code is reported, not raised
                failure = PluginFailure(plugin, f"{type(exc).__name__}: {exc}")
                _failures.append(failure)
                log.warning("activepref plugin %r (%s, package %s) failed to load: %s", plugin.name, plugin.module, plugin.package, failure.error)
        return list(_failures)


def plugin_failures() -> list[PluginFailure]:
    return load_plugins()


def failure_hint() -> str:
    """Appended to "unknown name" errors: which plugins did not load, so their names are missing."""
    failures = plugin_failures()
    if not failures:
        return ""
    return " (plugins that failed to load: " + "; ".join(f"{f.plugin.name} from {f.plugin.package}: {f.error}" for f in failures) + ")"


def registries() -> dict[str, Registry]:  # type: ignore[type-arg]
    """Every extension point by the kind name ``activepref plugins`` prints."""
    from activepref.acquisition import REGISTRY
    from activepref.apl.acquisitions import ACQUISITIONS
    from activepref.backends import BACKENDS
    from activepref.engines import ENGINES
    from activepref.judges import JUDGES
    from activepref.live.embedders import EMBEDDERS

    return {
        "method": REGISTRY, "judge": JUDGES, "backend": BACKENDS, "embedder": EMBEDDERS, "engine": ENGINES,
        "apl_acquisition": ACQUISITIONS,
    }


@dataclass(frozen=True)
class Registration:
    """One row of ``activepref plugins``."""

    kind: str
    name: str
    origin: str
    description: str


def registrations() -> list[Registration]:
    """Every registered name of every kind, with its origin (``built-in`` or a package)."""
    rows = []
    for kind, registry in registries().items():
        for entry in registry.available():
            rows.append(Registration(kind, entry.name, registry.origin(entry.name), entry.description))
    return rows
