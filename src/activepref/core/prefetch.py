"""Overlap of iterations: iteration t+1's generation and embedding run in a background thread
while the ensemble trains on iteration t (engines whose model calls run elsewhere, e.g. Ray).

Nothing prefetched is committed to the run store: generation answers go to the request cache
(each committed as it returns, as always), embeddings stay in memory. When the loop reaches
iteration t+1 its ordinary steps run unchanged: generation finds every answer in the cache,
and embedding takes the prefetched vectors only if the conversations to embed are exactly the
prefetched ones, in the same order (an embedder's output may depend on the batch it sees). So
the run's choices, its dataset and its crash safety are those of a run without prefetch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def conversations_digest(conversations: Sequence[Any]) -> str:
    """sha256 of the conversations, in order (what the embedder would see)."""
    return hashlib.sha256(json.dumps(list(conversations), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Prefetched:
    """What a background prefetch of one iteration left: the generation calls it made (the
    cache's counters, {stage: counters}), the embedded conversations' digest and vectors
    ``[n, dim]`` (None when nothing was embedded) and its wall seconds."""

    iteration: int
    generation_stats: dict[str, dict[str, int]]
    digest: str | None
    vectors: np.ndarray | None
    seconds: float


class Prefetcher:
    """At most one prefetch in flight; ``take`` waits for it and hands it over once."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._iteration: int | None = None
        self._result: Prefetched | None = None
        self.waited_s = 0.0  # time the loop spent waiting for a prefetch to finish
        self.worked_s = 0.0  # wall time of finished prefetches

    def start(self, iteration: int, work: Callable[[], Prefetched]) -> None:
        if self._thread is not None:  # an earlier prefetch nobody took: wait for it, drop it
            self.take(-1)

        def run() -> None:
            try:
                self._result = work()
            except Exception:  # the ordinary step redoes the work; a prefetch never fails a run
                log.warning("prefetch of iteration %d failed; the loop will do it in turn", iteration + 1, exc_info=True)
                self._result = None

        self._iteration, self._result = iteration, None
        self._thread = threading.Thread(target=run, name=f"activepref-prefetch-{iteration}", daemon=True)
        self._thread.start()

    def take(self, iteration: int) -> Prefetched | None:
        """The prefetch of ``iteration`` (after waiting for it), or None."""
        if self._thread is None:
            return None
        start = time.perf_counter()
        self._thread.join()
        self.waited_s += time.perf_counter() - start
        result, prefetched_it = self._result, self._iteration
        self._thread, self._iteration, self._result = None, None, None
        if result is not None:
            self.worked_s += result.seconds
        return result if prefetched_it == iteration else None


def merge_generation_stats(prefetch: dict[str, dict[str, int]] | None, step: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """One iteration's generation counters when a prefetch made its calls and the step then
    read them from the cache: calls and tokens add up, the step's cache hits on the prefetch's
    answers are not hits, failures are the step's (what the prefetch failed was retried)."""
    if not prefetch:
        return step
    merged: dict[str, dict[str, int]] = {}
    for stage, counters in step.items():
        pre = prefetch.get(stage, {})
        out = dict(counters)
        for key in ("calls", "prompt_tokens", "completion_tokens", "cached_prompt_tokens"):
            out[key] = counters.get(key, 0) + pre.get(key, 0)
        out["cache_hits"] = max(0, counters.get("cache_hits", 0) - pre.get("calls", 0))
        for hit, paid in (("hit_prompt_tokens", "prompt_tokens"), ("hit_completion_tokens", "completion_tokens")):
            out[hit] = max(0, counters.get(hit, 0) - pre.get(paid, 0))
        merged[stage] = out
    return merged
