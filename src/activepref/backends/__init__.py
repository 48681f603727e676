"""Backend registry: kind -> factory(ModelConfig) -> ChatBackend (see ``base``).

Each backend module registers itself with ``@register_backend("kind", "description")`` and
imports its heavy dependencies lazily, so a missing extra gives a one-line hint. The
built-in modules are imported on first use (``BACKEND_MODULES``); a plugin's module is
imported when the plugin loads (``activepref.plugins``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from activepref.backends.base import BackendError, ChatBackend, ChatRequest, ChatResult, OnResult, SamplingParams
from activepref.registry import Registry

if TYPE_CHECKING:
    from activepref.config import ModelConfig

BackendFactory = Callable[["ModelConfig"], ChatBackend]


@dataclass(frozen=True)
class BackendEntry:
    name: str
    description: str
    factory: BackendFactory

    @property
    def kind(self) -> str:
        return self.name


# kind -> module that registers it; imported on first use so heavy libraries load lazily.
BACKEND_MODULES = {
    "openai": "activepref.backends.openai_compat",
    "transformers": "activepref.backends.transformers_local",
    "vllm": "activepref.backends.vllm_offline",
}
BACKENDS: Registry[BackendEntry] = Registry("backend", lazy=BACKEND_MODULES)


def register_backend(kind: str, description: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering ``factory(config: ModelConfig) -> ChatBackend`` under ``kind``."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        BACKENDS.add(BackendEntry(kind, description, factory))
        return factory

    return wrap


class NamedBackend:
    """A backend under another name: ``endpoint`` -- the request-cache identity of its calls and
    part of a judge's name -- is ``name``; the calls go to ``inner`` (whose errors still name
    its own endpoint)."""

    def __init__(self, inner: ChatBackend, name: str) -> None:
        self.inner = inner
        self.endpoint = name

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        self.inner.complete(requests, on_result)


def make_backend(config: ModelConfig) -> ChatBackend:
    """The backend ``config.backend`` names, built from the model's config (under
    ``config.cache_id`` when given)."""
    backend = BACKENDS.get(config.backend).factory(config)
    return NamedBackend(backend, config.cache_id) if config.cache_id else backend


__all__ = [
    "BACKENDS",
    "BackendEntry",
    "BackendError",
    "ChatBackend",
    "ChatRequest",
    "ChatResult",
    "NamedBackend",
    "SamplingParams",
    "make_backend",
    "register_backend",
]
