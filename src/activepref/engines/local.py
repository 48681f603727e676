"""The local engine: backends and embedders in this process, bench jobs in a pool of
spawned worker processes on this machine (``concurrent.futures``)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, TypeVar

from activepref.engines import register_engine
from activepref.errors import ConfigError

if TYPE_CHECKING:
    from activepref.backends.base import ChatBackend
    from activepref.config import EmbeddingConfig, EngineConfig, ModelConfig
    from activepref.live.embedders import Embedder

J = TypeVar("J")


class LocalEngine:
    name = "local"
    prefetch = False  # the embedder would compete with the ensemble's training for this machine's cores

    def chat_backend(self, model: ModelConfig) -> ChatBackend:
        from activepref.backends import make_backend

        return make_backend(model)

    def embedder(self, config: EmbeddingConfig) -> Embedder:
        from activepref.live.embedders import embedder_from_config

        return embedder_from_config(config)

    def run_jobs(
        self, fn: Callable[[J], Any], jobs: Sequence[J], workers: int, initializer: Callable[[], None] | None = None
    ) -> Iterator[tuple[J, Any]]:
        processes = max(1, min(workers, len(jobs)))
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch threads
        with ProcessPoolExecutor(max_workers=processes, mp_context=ctx, initializer=initializer) as pool:
            futures = {pool.submit(fn, job): job for job in jobs}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


@register_engine("local", "This machine: model calls in this process, bench runs in spawned worker processes.")
def make_local_engine(config: EngineConfig) -> LocalEngine:
    if config.options:
        raise ConfigError(f"engine.options: the local engine takes no options (got {', '.join(sorted(config.options))})")
    return LocalEngine()
