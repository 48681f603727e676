"""CachedBackend: the request cache seen as a ChatBackend wrapping another."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from activepref.backends.base import BackendError, ChatBackend, ChatRequest, ChatResult, OnResult, SamplingParams
from activepref.core.cache import CachedBackend, RequestCache


class Counting:
    """Answers "echo: <last message>"; fails the requests whose text contains "fail"."""

    endpoint = "fake|m"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        for i, r in reversed(list(enumerate(requests))):  # any order
            text = r.messages[-1][1]
            self.sent.append(text)
            if "fail" in text:
                on_result(i, BackendError("server said no"))
            else:
                on_result(i, ChatResult(f"echo: {text}", prompt_tokens=3, completion_tokens=2))


def request(text: str) -> ChatRequest:
    return ChatRequest((("user", text),), SamplingParams(seed=1))


def ask(backend: ChatBackend, texts: list[str]) -> list[ChatResult | BackendError]:
    out: dict[int, ChatResult | BackendError] = {}
    backend.complete([request(t) for t in texts], out.__setitem__)
    assert sorted(out) == list(range(len(texts)))
    return [out[i] for i in range(len(texts))]


def test_misses_go_to_the_inner_backend_once_and_hits_never(tmp_path: Path) -> None:
    inner = Counting()
    cache = RequestCache(tmp_path / "c.sqlite")
    cached = CachedBackend(inner, cache, "judge")
    assert cached.endpoint == "fake|m"
    first = ask(cached, ["a", "b", "a"])
    assert [r.text for r in first] == ["echo: a", "echo: b", "echo: a"]  # type: ignore[union-attr]
    assert sorted(inner.sent) == ["a", "b"]  # the duplicate went out once
    again = ask(CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"), "judge"), ["b", "a"])
    assert [r.text for r in again] == ["echo: b", "echo: a"]  # type: ignore[union-attr]
    assert sorted(inner.sent) == ["a", "b"]  # a fresh process asks nothing again
    stats = cache.stats.stage("judge")
    assert (stats.calls, stats.cache_hits, stats.prompt_tokens) == (2, 0, 6)
    assert cache.totals("judge") == (2, 6, 4)


def test_failures_are_passed_on_and_not_cached(tmp_path: Path) -> None:
    inner = Counting()
    cached = CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"), "generation")
    [res] = ask(cached, ["fail once"])
    assert isinstance(res, BackendError)
    ask(cached, ["fail once"])
    assert inner.sent == ["fail once", "fail once"]  # asked again: a failure is not an answer
    assert cached.cache.stats.stage("generation").failures == 2


def test_keys_do_not_depend_on_the_wrapper(tmp_path: Path) -> None:
    """A run that stored answers before the wrapper existed finds them through it."""
    inner = Counting()
    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put(request("old").cache_key(inner.endpoint), inner.endpoint, "judge", ChatResult("stored"))
    [res] = ask(CachedBackend(inner, cache, "judge"), ["old"])
    assert res.text == "stored" and inner.sent == []  # type: ignore[union-attr]
