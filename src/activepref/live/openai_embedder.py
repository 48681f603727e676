"""Embedder kind ``openai``: features from an OpenAI-compatible ``/v1/embeddings`` server.

vLLM (an embedding or pooling model: ``vllm serve MODEL --task embed``), Text Embeddings
Inference, llama.cpp's ``llama-server --embeddings``, Ollama and hosted APIs (OpenAI's
``text-embedding-3-*``) all answer it, so the frozen backbone can live on a GPU server while the
loop runs elsewhere. The text sent for a conversation is the one the ``sentence_transformers``
kind encodes: ``"prompt\\n\\nresponse"`` (:func:`~activepref.live.embedders.conversation_text`);
the vectors are used as the server returns them (OpenAI's and most sentence-embedding servers'
are unit-norm already; a pooling server's raw hidden states are not normalised here either).

Requests go through :class:`~activepref.backends.openai_compat.OpenAICompatBackend`'s
machinery: ``batch_size`` texts per request, at most ``max_concurrency`` in flight, a hard
``timeout_s`` per attempt, ``max_retries`` retries with backoff on 408/429/5xx, timeouts, cut
or malformed bodies (a wrong count of vectors, vectors of mixed lengths, a non-number, NaN or
inf), ``Retry-After`` honoured; the key comes from ``api_key_env`` (default ``OPENAI_API_KEY``)
and never reaches a log, an error or the request cache. A request that still fails raises
:class:`~activepref.backends.base.BackendError`: the step stops, everything committed before it
is kept, and ``activepref resume`` asks again.

The kind is registered ``paid``: the run wraps it in
:class:`~activepref.core.cache.CachedEmbedder`, so every vector is stored in the request cache
as it arrives and a resume, a re-run or a killed run's next life never pays for it twice.

Nothing truncates a long text by default (the server decides: OpenAI refuses inputs above 8,192
tokens, a 512-token BERT behind vLLM or TEI may refuse or cut them); ``max_chars`` keeps only
each text's last ``max_chars`` characters (the end, where the response is).

The vectors are cached under the server's base URL and model, so the same model behind another
host or port is asked again; ``cache_id`` names them instead (as a chat model's ``cache_id``
does), and they stay valid when the server moves.

``dimensions`` (optional) is sent as the API's ``dimensions`` field (shortened embeddings of
``text-embedding-3-*``; servers that do not support it answer 400). ``dim`` is known from it, or
else from the first answer; asked for before any answer, it embeds one probe text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from activepref.backends.base import BackendError
from activepref.backends.openai_compat import OpenAICompatBackend, _Failure
from activepref.live.embedders import Conversation, conversation_text

PROBE_TEXT = "dimension probe"
OnChunk = Callable[[list[int], np.ndarray, list[int]], None]  # (rows, vectors [len(rows), dim], input tokens per row)


@dataclass(frozen=True)
class EmbeddingRequest:
    """The texts of one ``/embeddings`` call."""

    texts: tuple[str, ...]


@dataclass(frozen=True)
class EmbeddingAnswer:
    """``vectors``: float32 [len(texts), dim], in the order of the request's texts."""

    vectors: np.ndarray
    prompt_tokens: int


def parse_embeddings(data: Any, expected: int) -> EmbeddingAnswer:
    """The decoded JSON body of an embeddings answer -> its vectors in input order; raises a
    retryable ``_Failure`` unless it holds exactly ``expected`` finite vectors of one length
    (``data[i].index`` orders them when present, else the list order does)."""
    if not isinstance(data, dict):
        raise _Failure(f"malformed response: a JSON object was expected, got {type(data).__name__}", retryable=True)
    items = data.get("data")
    if not isinstance(items, list) or not items:
        raise _Failure("malformed response: no data", retryable=True)
    if len(items) != expected:
        raise _Failure(f"malformed response: {len(items)} embeddings for {expected} inputs", retryable=True)
    rows: list[list[float] | None] = [None] * expected
    for pos, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
            raise _Failure("malformed response: an item without an 'embedding' list", retryable=True)
        index = item.get("index", pos)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected or rows[index] is not None:
            raise _Failure(f"malformed response: bad or repeated index {index!r}", retryable=True)
        rows[index] = item["embedding"]
    lengths = {len(r) for r in rows if r is not None}
    if len(lengths) != 1 or 0 in lengths:
        raise _Failure(f"malformed response: embeddings of lengths {sorted(lengths)}", retryable=True)
    try:
        vectors = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise _Failure("malformed response: an embedding holds a non-number", retryable=True) from None
    if vectors.ndim != 2 or not np.isfinite(vectors).all():
        raise _Failure("malformed response: an embedding holds a non-number, NaN or inf", retryable=True)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens")
    return EmbeddingAnswer(vectors.astype(np.float32), int(tokens) if isinstance(tokens, int) and tokens >= 0 else 0)


class EmbeddingsClient(OpenAICompatBackend):
    """The chat backend's HTTP policy (concurrency, deadlines, retries, key handling) on the
    ``/embeddings`` endpoint: ``complete([EmbeddingRequest], on_result)`` reports an
    :class:`EmbeddingAnswer` or a ``BackendError`` per request."""

    path = "/embeddings"

    def __init__(self, model: str, base_url: str | None = None, *, dimensions: int | None = None, **options: Any) -> None:
        super().__init__(model, base_url, **options)
        self.dimensions = dimensions
        self.expected_dim = dimensions  # set by the embedder from its first answer when not asked for

    def _request_kwargs(self, request: EmbeddingRequest) -> dict[str, Any]:  # type: ignore[override]
        body: dict[str, Any] = {"model": self.model, "input": list(request.texts), "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    def _parse(self, data: Any, request: EmbeddingRequest) -> EmbeddingAnswer:
        answer = parse_embeddings(data, len(request.texts))
        width, expected = answer.vectors.shape[1], self.expected_dim
        if expected is not None and width != expected:  # well-formed, but not the vectors asked for: retried
            raise _Failure(f"malformed response: {width}-dimensional vectors, {expected} expected (another model "
                           "behind the same server?)", retryable=True)
        return answer


class OpenAIEmbedder:
    """See the module docstring."""

    paid = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        batch_size: int = 32,
        max_concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        dimensions: int | None = None,
        max_chars: int | None = None,
        cache_id: str | None = None,
        **_local_only: Any,  # device, max_length, ...: options of the local kinds, meaningless here
    ) -> None:
        self.client = EmbeddingsClient(model, base_url, dimensions=dimensions, api_key_env=api_key_env,
                                       max_concurrency=max_concurrency, timeout_s=timeout_s, max_retries=max_retries)
        self.batch_size = max(1, int(batch_size))
        self.max_concurrency = max_concurrency
        self.max_chars = max_chars
        # the cache key's embedder part: the endpoint (base URL and model), or the user's cache_id
        self.name = (f"openai|{cache_id or self.client.endpoint}" + (f"|{dimensions}d" if dimensions else "")
                     + (f"|last{max_chars}c" if max_chars else ""))
        self._dim = dimensions
        self.prompt_tokens = 0  # what the server reported for this embedder's calls so far

    def __repr__(self) -> str:
        return f"OpenAIEmbedder({self.client!r}, batch_size={self.batch_size})"

    @property
    def known_dim(self) -> int | None:
        """The vector length if known without a call (``dimensions``, or an earlier answer)."""
        return self._dim

    def expect_dim(self, width: int) -> None:
        """Vectors must be ``width`` long (the run's features already are): an answer of another
        length is then malformed, retried and never stored."""
        if self._dim is None:
            self._dim = self.client.expected_dim = int(width)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed_texts([PROBE_TEXT])
        assert self._dim is not None
        return self._dim

    def close(self) -> None:
        self.client.close()

    def text(self, conversation: Conversation) -> str:
        """What is sent for ``conversation``: its text, cut to its last ``max_chars`` characters."""
        text = conversation_text(conversation)
        return text[-self.max_chars:] if self.max_chars and len(text) > self.max_chars else text

    def embed(self, conversations: Sequence[Conversation]) -> np.ndarray:
        return self.embed_texts([self.text(c) for c in conversations])

    def embed_with_tokens(self, conversations: Sequence[Conversation]) -> tuple[np.ndarray, list[int]]:
        """The vectors and the input tokens each text cost (see :meth:`embed_streaming`)."""
        tokens: list[int] = []
        vectors = self.embed_texts([self.text(c) for c in conversations], tokens)
        return vectors, tokens

    def embed_streaming(self, conversations: Sequence[Conversation], on_chunk: OnChunk) -> None:
        """Embed ``conversations``; each request's answer goes to ``on_chunk(rows, vectors,
        tokens)`` in the calling thread as it arrives (``rows``: positions in
        ``conversations``), so a caller can store it before anything else can go wrong. If a
        request fails for good, ``BackendError`` is raised once every other answer has been
        passed on."""
        self._stream([self.text(c) for c in conversations], on_chunk)

    def embed_texts(self, texts: Sequence[str], tokens: list[int] | None = None) -> np.ndarray:
        """float32 [len(texts), dim]; raises ``BackendError`` if a request fails for good.
        ``tokens`` (optional) receives each text's share of its request's ``usage.prompt_tokens``
        (the API reports one total per request: it is split in proportion to the texts'
        lengths, and the shares add up to the total)."""
        if tokens is not None:
            tokens.clear()
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        rows_out: list[np.ndarray | None] = [None] * len(texts)
        shares = [0] * len(texts)

        def keep(rows: list[int], vectors: np.ndarray, chunk_tokens: list[int]) -> None:
            for r, v, t in zip(rows, vectors, chunk_tokens, strict=True):
                rows_out[r], shares[r] = v, t

        self._stream(list(texts), keep)
        if tokens is not None:
            tokens.extend(shares)
        return np.stack([v for v in rows_out if v is not None]).astype(np.float32, copy=False)

    def _stream(self, texts: list[str], on_chunk: OnChunk) -> None:
        if not texts:
            return
        chunks = [EmbeddingRequest(tuple(texts[i:i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        failures: list[BackendError] = []

        def arrived(i: int, result: EmbeddingAnswer | BackendError) -> None:
            if isinstance(result, BackendError):
                failures.append(result)
                return
            width = int(result.vectors.shape[1])
            if self._dim is None:
                self._dim = self.client.expected_dim = width
            elif width != self._dim:  # (two first answers raced past the client's check)  # a plausible answer of the wrong length: never stored
                failures.append(BackendError(f"{self.client.endpoint}: {width}-dimensional vectors where {self._dim} were "
                                             "expected (a different model behind the same server?)"))
                return
            self.prompt_tokens += result.prompt_tokens
            texts_i = chunks[i].texts
            start = i * self.batch_size
            on_chunk(list(range(start, start + len(texts_i))), result.vectors,
                     split_tokens(result.prompt_tokens, [len(t) for t in texts_i]))

        self.client.complete(chunks, arrived)  # type: ignore[arg-type]
        if failures:
            first = failures[0]
            hint = ""
            if getattr(first, "status", None) in (400, 413, 422):
                hint = "; if an input is longer than the model takes, set embedding.max_chars (its end is kept)"
            raise BackendError(f"embedding failed: {first}{hint}")


def split_tokens(total: int, lengths: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``lengths`` (each at least 1 long), whole numbers that
    add up to ``total``: floors, then one more to the largest remainders (ties: first)."""
    weights = [max(1, n) for n in lengths]
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    out = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out

