"""Execution engines: where a run's model calls and a bench's runs execute.

An engine builds the chat backends and the embedder a run calls (the loop sees only the
``ChatBackend`` / ``Embedder`` interfaces, so an engine may put them in other processes or on
other machines) and runs a bench's independent (method, seed) jobs. ``local`` (the default)
does everything in this machine's processes; ``ray`` (:mod:`activepref.engines.ray_cluster`)
puts model replicas in Ray actors and bench runs in Ray tasks. Add an engine (in-tree or in a plugin) with::

    @register_engine("my_engine", "one line on what it does")
    def make_my_engine(config: EngineConfig) -> Engine: ...

``config`` is the run's ``engine:`` section (``kind`` and free-form ``options``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from activepref.registry import Registry

if TYPE_CHECKING:
    from activepref.backends.base import ChatBackend
    from activepref.config import EmbeddingConfig, EngineConfig, ModelConfig
    from activepref.live.embedders import Embedder

J = TypeVar("J")


class Engine(Protocol):
    """What a run and a bench ask of an execution engine."""

    name: str
    prefetch: bool  # may the loop generate and embed iteration t+1 while the ensemble trains on t?

    def chat_backend(self, model: ModelConfig) -> ChatBackend:
        """A backend for one model config (generation models and model judges)."""
        ...

    def embedder(self, config: EmbeddingConfig) -> Embedder:
        """The embedder of a live run."""
        ...

    def run_jobs(
        self, fn: Callable[[J], Any], jobs: Sequence[J], workers: int, initializer: Callable[[], None] | None = None
    ) -> Iterator[tuple[J, Any]]:
        """Run ``fn(job)`` for every job, ``workers`` at a time, each worker set up by
        ``initializer``; yield (job, result) as each finishes. ``fn`` must be importable
        (a module-level function) and catch its own errors."""
        ...


EngineFactory = Callable[["EngineConfig"], Engine]


@dataclass(frozen=True)
class EngineEntry:
    name: str
    description: str
    factory: EngineFactory


ENGINES: Registry[EngineEntry] = Registry("engine")


def register_engine(name: str, description: str) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator registering ``factory(config: EngineConfig) -> Engine``."""

    def wrap(factory: EngineFactory) -> EngineFactory:
        ENGINES.add(EngineEntry(name, description, factory))
        return factory

    return wrap


def make_engine(config: EngineConfig | None = None) -> Engine:
    """The engine ``config.kind`` names (``local`` without a config)."""
    if config is None:
        from activepref.config import EngineConfig

        config = EngineConfig()
    return ENGINES.get(config.kind).factory(config)


from activepref.engines import local, ray_cluster  # noqa: E402,F401

__all__ = ["ENGINES", "Engine", "EngineEntry", "make_engine", "register_engine"]
