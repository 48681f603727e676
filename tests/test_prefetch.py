"""The prefetch of the next iteration (core.prefetch): hand-checked bookkeeping."""

from __future__ import annotations

import logging

import numpy as np

from activepref.core.prefetch import Prefetched, Prefetcher, conversations_digest, merge_generation_stats


def _stats(calls: int, hits: int, failures: int, tokens: int, hit_tokens: int = 0) -> dict[str, dict[str, int]]:
    return {"generation": {"calls": calls, "cache_hits": hits, "failures": failures, "prompt_tokens": tokens,
                           "completion_tokens": 2 * tokens, "cached_prompt_tokens": 0,
                           "hit_prompt_tokens": hit_tokens, "hit_completion_tokens": 2 * hit_tokens}}


def test_a_prefetchs_calls_are_the_iterations_calls_not_cache_hits() -> None:
    # prefetch: 10 requests, 2 already cached (20 tokens), 7 answered (70), 1 failed; the step
    # then finds the 2 + 7 in the cache (90 tokens) and sends the failed one again (10).
    merged = merge_generation_stats(_stats(7, 2, 1, 70, 20), _stats(1, 9, 0, 10, 90))
    assert merged == _stats(8, 2, 0, 80, 20)
    assert merge_generation_stats(None, _stats(3, 1, 0, 5)) == _stats(3, 1, 0, 5)


def test_take_hands_over_only_the_iteration_asked_for(caplog) -> None:
    p = Prefetcher()
    p.start(3, lambda: Prefetched(3, {}, "d", np.zeros((1, 2), np.float32), 0.5))
    assert p.take(4) is None  # waited for, then dropped: it was for another iteration
    assert p.take(3) is None  # handed over at most once
    p.start(5, lambda: Prefetched(5, {}, None, None, 0.25))
    got = p.take(5)
    assert got is not None and got.iteration == 5 and p.worked_s == 0.75

    def boom() -> Prefetched:
        raise RuntimeError("server gone")

    with caplog.at_level(logging.WARNING):
        p.start(6, boom)
        assert p.take(6) is None  # a failed prefetch leaves the work to the loop
    assert "prefetch of iteration 7 failed" in caplog.text


def test_the_digest_follows_content_and_order() -> None:
    a = [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]
    b = [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "z"}]]
    assert conversations_digest(a) == conversations_digest([list(a[0])])
    assert conversations_digest(a + b) != conversations_digest(b + a)
