"""activepref: build LLM preference datasets with active learning.

The public surface is small:

- records: ``Prompt``, ``Response`` (``activepref.pools.records``), ``PreferenceRecord`` (``activepref.core.store``);
- the run config: ``RunConfig``, ``load_config`` (``activepref.config``);
- the loop's entry points: ``run``, ``resume``, ``status`` (``activepref.core.runs``) and
  ``export_run`` (``activepref.core.export``);
- the extension points, one ``Registry`` each: ``register`` / ``register_design`` /
  ``get_method`` / ``available`` (acquisition methods), ``register_judge``,
  ``register_backend``, ``register_embedder``, ``register_engine`` (see the README,
  "Extending activepref");
- the errors (``activepref.errors``).

Everything else lives in modules named after what they hold. Names load on first use, so
``import activepref`` imports neither torch nor a model library.
"""

from __future__ import annotations

import importlib
from typing import Any

from activepref.errors import ActivePrefError, ConfigError, JudgeError, PoolFormatError, RunLockedError

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Prompt": "activepref.pools.records",
    "Response": "activepref.pools.records",
    "PreferenceRecord": "activepref.core.store",
    "RunConfig": "activepref.config",
    "load_config": "activepref.config",
    "run": "activepref.core.runs",
    "resume": "activepref.core.runs",
    "status": "activepref.core.runs",
    "export_run": "activepref.core.export",
    "Registry": "activepref.registry",
    "register": "activepref.acquisition",
    "register_design": "activepref.acquisition",
    "get_method": "activepref.acquisition",
    "available": "activepref.acquisition",
    "register_judge": "activepref.judges",
    "register_backend": "activepref.backends",
    "register_embedder": "activepref.live.embedders",
    "register_engine": "activepref.engines",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'activepref' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ActivePrefError",
    "ConfigError",
    "JudgeError",
    "PoolFormatError",
    "RunLockedError",
    "__version__",
    *_LAZY,
]
