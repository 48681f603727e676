"""Backend registry: kind -> factory(ModelConfig) -> ChatBackend (see ``base``).

Each backend module registers itself with ``@register_backend("kind", "description")``
and imports its heavy dependencies lazily, so a missing extra gives a one-line hint.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from activepref.backends.base import BackendError, ChatBackend, ChatRequest, ChatResult, SamplingParams
from activepref.errors import ConfigError

if TYPE_CHECKING:
    from activepref.config import ModelConfig

BackendFactory = Callable[["ModelConfig"], ChatBackend]


@dataclass(frozen=True)
class BackendEntry:
    kind: str
    description: str
    factory: BackendFactory


BACKENDS: dict[str, BackendEntry] = {}
# kind -> module that registers it; imported on first use so heavy libraries load lazily.
BACKEND_MODULES = {
    "openai": "activepref.backends.openai_compat",
    "transformers": "activepref.backends.transformers_local",
    "vllm": "activepref.backends.vllm_offline",
}


def register_backend(kind: str, description: str) -> Callable[[BackendFactory], BackendFactory]:
    def wrap(factory: BackendFactory) -> BackendFactory:
        BACKENDS[kind] = BackendEntry(kind, description, factory)
        return factory

    return wrap


def make_backend(config: ModelConfig) -> ChatBackend:
    if config.backend not in BACKENDS:
        module = BACKEND_MODULES.get(config.backend)
        if module is None:
            raise ConfigError(f"backend {config.backend!r} unknown; choose one of: {', '.join(BACKEND_MODULES)}")
        importlib.import_module(module)
    return BACKENDS[config.backend].factory(config)


__all__ = [
    "BACKENDS",
    "BackendError",
    "ChatBackend",
    "ChatRequest",
    "ChatResult",
    "SamplingParams",
    "make_backend",
    "register_backend",
]
