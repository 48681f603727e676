"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_calls(fn: Callable[[np.random.Generator], object], repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn(rng)``, each with its own seeded generator,
    after one warm-up call that is not counted."""
    fn(np.random.default_rng(10_000))
    out = []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        t0 = time.perf_counter()
        fn(rng)
        out.append((time.perf_counter() - t0) * 1e3)
    return out
