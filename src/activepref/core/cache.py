"""The request cache: every model call keyed by a hash of (endpoint/model, messages,
sampling parameters, seed), stored in SQLite and committed the moment its answer arrives.

Vectors of a paid embedder (``/v1/embeddings``) are kept in the same file, keyed by a hash of
(embedder, conversation): :class:`CachedEmbedder` wraps the embedder as :class:`CachedBackend`
wraps a chat backend.

One cache file can serve many runs (default ``~/.cache/activepref/requests.sqlite``, or
``$ACTIVEPREF_CACHE``, or the config's ``cache_path``), so ``resume`` and re-running the
same config both make zero repeated calls. Failed calls are not cached: they are retried.

Callers see the cache as a backend: :class:`CachedBackend` wraps any ``ChatBackend`` (as an
httpx transport wraps another) and sends only the misses to it, so judges and generation
take one ``ChatBackend`` and never talk to the cache themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from activepref.backends.base import BackendError, ChatBackend, ChatRequest, ChatResult, OnResult
from activepref.errors import RunStateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS request_cache (
    key TEXT PRIMARY KEY, endpoint TEXT NOT NULL, stage TEXT NOT NULL, result TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS embedding_cache (
    key TEXT PRIMARY KEY, embedder TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
    prompt_tokens INTEGER NOT NULL, created REAL NOT NULL);
"""
EMBEDDING_STAGE = "embedding"


def default_cache_path() -> Path:
    env = os.environ.get("ACTIVEPREF_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "activepref" / "requests.sqlite"


def connect_cache_file(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to the request-cache file shared by threads and processes (autocommit,
    WAL, fsync on commit, 30 s busy wait), with ``schema`` created if missing. The request
    cache and the batch journal (activepref.core.batch_journal) both live in this file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError):
            raise  # locked, read-only, disk full: the CLI names those faults
        raise RunStateError(
            f"{path}: the request cache is damaged ({exc}); delete it (or move it away) and run again: its answers "
            f"are then asked (and paid) again, the runs that used it are unaffected"
        ) from None
    return conn


@dataclass
class StageStats:
    """Calls of one stage (generation, judge, ...) in this process."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    hit_prompt_tokens: int = 0  # tokens of the answers the cache served (what they cost whoever paid)
    hit_completion_tokens: int = 0

    def add(self, other: StageStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class CallStats:
    by_stage: dict[str, StageStats] = field(default_factory=dict)

    def stage(self, name: str) -> StageStats:
        return self.by_stage.setdefault(name, StageStats())

    def snapshot(self) -> dict[str, StageStats]:
        return {k: StageStats(**asdict(v)) for k, v in self.by_stage.items()}

    def since(self, before: dict[str, StageStats], stage: str) -> dict[str, dict[str, int]]:
        """What ``stage`` did since ``before``, as {stage: counters} (JSON-able)."""
        now = asdict(self.stage(stage))
        then = asdict(before.get(stage, StageStats()))
        return {stage: {k: now[k] - then[k] for k in now}}


class RequestCache:
    """Thread-safe SQLite request cache (WAL; one short transaction per stored answer)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_cache_path()
        self._conn = connect_cache_file(self.path, SCHEMA)
        self._lock = threading.Lock()
        self.stats = CallStats()

    def close(self) -> None:
        self._conn.close()

    def get(self, key: str) -> ChatResult | None:
        with self._lock:
            row = self._conn.execute("SELECT result FROM request_cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else ChatResult.from_json(row[0])

    def put(self, key: str, endpoint: str, stage: str, result: ChatResult) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO request_cache VALUES (?,?,?,?,?,?,?)",
                (key, endpoint, stage, result.to_json(), result.prompt_tokens, result.completion_tokens, time.time()),
            )

    def _embedding_rows(self, columns: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """``SELECT key, <columns>`` of the embedding rows among ``keys`` (each asked once)."""
        unique = list(dict.fromkeys(keys))
        rows: list[tuple[Any, ...]] = []
        with self._lock:
            for start in range(0, len(unique), 500):  # SQLite's bound on host parameters
                part = unique[start:start + 500]
                rows += self._conn.execute(
                    f"SELECT key, {columns} FROM embedding_cache WHERE key IN ({','.join('?' * len(part))})", part).fetchall()
        return rows

    def get_vectors(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors among ``keys`` (float32 [dim] each)."""
        return {key: np.frombuffer(blob, dtype="<f4", count=int(dim)).astype(np.float32)
                for key, dim, blob in self._embedding_rows("dim, vector", keys)}

    def vector_tokens(self, keys: Sequence[str]) -> dict[str, int]:
        """The input tokens stored with each of ``keys`` that has a vector."""
        return {key: int(tokens) for key, tokens in self._embedding_rows("prompt_tokens", keys)}

    def put_vectors(self, embedder: str, vectors: dict[str, np.ndarray], tokens: dict[str, int] | None = None) -> None:
        """Store ``vectors`` (key -> float32 [dim]) and the input tokens each cost, in one transaction."""
        now = time.time()
        rows = [(k, embedder, int(v.shape[0]), np.ascontiguousarray(v, dtype="<f4").tobytes(), int((tokens or {}).get(k, 0)), now)
                for k, v in vectors.items()]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR IGNORE INTO embedding_cache VALUES (?,?,?,?,?,?)", rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def complete(self, backend: ChatBackend, requests: Sequence[ChatRequest], stage: str, on_result: OnResult) -> None:
        """Answer from the cache where possible; send the rest (deduplicated) to the backend,
        storing each answer before it is passed on."""
        stats = self.stats.stage(stage)
        keys = [r.cache_key(backend.endpoint) for r in requests]
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            cached = self.get(key)
            if cached is not None:
                stats.cache_hits += 1
                stats.hit_prompt_tokens += cached.prompt_tokens
                stats.hit_completion_tokens += cached.completion_tokens
                on_result(i, cached)
            else:
                pending.setdefault(key, []).append(i)
        if not pending:
            return
        order = list(pending)
        to_send = [requests[pending[k][0]] for k in order]

        def arrived(j: int, result: ChatResult | BackendError) -> None:
            key = order[j]
            if isinstance(result, ChatResult):
                self.put(key, backend.endpoint, stage, result)
                stats.calls += 1
                stats.prompt_tokens += result.prompt_tokens
                stats.completion_tokens += result.completion_tokens
                stats.cached_prompt_tokens += result.cached_prompt_tokens
            else:
                stats.failures += 1
            for i in pending[key]:
                on_result(i, result)

        backend.complete(to_send, arrived)

    def totals(self, stage: str | None = None) -> tuple[int, int, int]:
        """(stored answers, prompt tokens, completion tokens) in the whole cache file, optionally per stage."""
        sql = "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM request_cache"
        args: tuple[str, ...] = ()
        if stage:
            sql += " WHERE stage = ?"
            args = (stage,)
        with self._lock:
            n, p, c = self._conn.execute(sql, args).fetchone()
        return int(n), int(p), int(c)


class CachedBackend:
    """A ``ChatBackend`` that answers from ``cache`` and sends only the misses (deduplicated)
    to ``inner``; every answer is stored before it is passed on. ``stage`` labels the calls
    (generation, judge, ...) in the cache's statistics and file. ``endpoint`` is the inner
    backend's, so the cache keys are the same with or without the wrapper."""

    def __init__(self, inner: ChatBackend, cache: RequestCache, stage: str) -> None:
        self.inner = inner
        self.cache = cache
        self.stage = stage

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        self.cache.complete(self.inner, requests, self.stage, on_result)


def conversation_key(embedder: str, conversation: Sequence[dict[str, str]]) -> str:
    """Cache key of one conversation's vector under ``embedder`` (its ``name``)."""
    text = json.dumps([embedder, [[m.get("role"), m.get("content")] for m in conversation]], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class CachedEmbedder:
    """An embedder that answers from ``cache`` and sends only the missing conversations
    (deduplicated) to ``inner``, a wave at a time (``wave`` conversations: the inner
    embedder's whole concurrency). Each answer is stored (vector and the input tokens it cost)
    as it arrives when ``inner`` streams (``embed_streaming``), else each wave before the next
    is sent: a kill, or a request that fails for good, loses no answer that came back. For
    embedders that call a paid service (``paid`` in the registry); ``name`` and ``dim`` are the
    inner embedder's. :meth:`usage` says what a step's vectors cost, for the bill."""

    def __init__(self, inner: Any, cache: RequestCache, wave: int | None = None) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.wave = wave or max(1, int(getattr(inner, "batch_size", 32)) * int(getattr(inner, "max_concurrency", 1)))
        self._paid: set[str] = set()  # keys this process paid for and no step has reported yet
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    def expect_dim(self, width: int) -> None:
        """Tell the inner embedder the run's feature length, so that it refuses (and never stores)
        vectors of another length; a no-op for one that cannot check."""
        expect = getattr(self.inner, "expect_dim", None)
        if expect is not None:
            expect(width)

    def _fetch(self, conversations: list[Sequence[dict[str, str]]], store: Any) -> None:
        """Embed ``conversations``, calling ``store(rows, vectors, tokens)`` per answer (or once)."""
        stream = getattr(self.inner, "embed_streaming", None)
        if stream is not None:
            stream(conversations, store)
            return
        with_tokens = getattr(self.inner, "embed_with_tokens", None)
        if with_tokens is not None:
            vectors, tokens = with_tokens(conversations)
        else:
            vectors, tokens = self.inner.embed(conversations), [0] * len(conversations)
        store(list(range(len(conversations))), np.asarray(vectors, dtype=np.float32), [int(t) for t in tokens])

    def embed(self, conversations: Sequence[Sequence[dict[str, str]]]) -> np.ndarray:
        stats = self.cache.stats.stage(EMBEDDING_STAGE)
        keys = [conversation_key(self.name, c) for c in conversations]
        if not keys:
            return np.zeros((0, getattr(self.inner, "known_dim", None) or 0), dtype=np.float32)
        found = self.cache.get_vectors(keys)
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        stats.cache_hits += sum(1 for k in keys if k in found)
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        for start in range(0, len(missing), self.wave):
            wave = missing[start:start + self.wave]

            def store(rows: list[int], vectors: np.ndarray, tokens: list[int], wave: list[str] = wave) -> None:
                got = {wave[r]: np.asarray(v, dtype=np.float32) for r, v in zip(rows, vectors, strict=True)}
                self.cache.put_vectors(self.name, got, {wave[r]: int(t) for r, t in zip(rows, tokens, strict=True)})
                with self._lock:
                    self._paid.update(got)
                found.update(got)
                stats.calls += len(got)
                stats.prompt_tokens += sum(int(t) for t in tokens)

            self._fetch([conversations[first[k]] for k in wave], store)
        widths = {int(found[k].shape[0]) for k in keys}
        if len(widths) != 1:
            raise BackendError(f"{self.name}: the request cache holds vectors of {sorted(widths)} dimensions for this embedder "
                               "(a different model behind the same server?); serve the model the cache was filled from, "
                               "or use another cache_path")
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def usage(self, conversations: Sequence[Sequence[dict[str, str]]]) -> dict[str, int]:
        """What the vectors of ``conversations`` (all embedded already) cost, as call-stats
        counters: ``calls``/``prompt_tokens`` for those this process paid for since the last
        report (a prefetch included), ``cache_hits``/``hit_prompt_tokens`` for those another
        run or an earlier life of this one paid for. Each vector counts once (a repeat is no call)."""
        keys = list(dict.fromkeys(conversation_key(self.name, c) for c in conversations))
        tokens = self.cache.vector_tokens(keys)
        with self._lock:
            paid = [k for k in keys if k in self._paid]
            self._paid.difference_update(paid)
        paid_set = set(paid)
        hits = [k for k in keys if k not in paid_set]
        return {"calls": len(paid), "prompt_tokens": sum(tokens.get(k, 0) for k in paid),
                "cache_hits": len(hits), "hit_prompt_tokens": sum(tokens.get(k, 0) for k in hits)}

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
