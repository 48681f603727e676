"""A local OpenAI-compatible HTTP server for tests and benchmarks (stdlib only).

    with FakeOpenAIServer(script={0: Action.error(500)}) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="x")   # srv.base_url ends in /v1
        ...
        assert len(srv.chat_requests) == 2 and srv.max_in_flight <= 8

A real ``ThreadingHTTPServer`` (HTTP/1.1, keep-alive) on 127.0.0.1 with an ephemeral port,
serving from a background thread. Endpoints:

- ``POST /v1/chat/completions``: JSON, or server-sent events with ``stream: true`` (and a usage
  chunk with ``stream_options.include_usage``); ``logprobs``/``top_logprobs`` (``top_logprobs``
  without ``logprobs: true``, or above 20, is a 400 as on OpenAI); ``usage`` with
  ``prompt_tokens_details.cached_tokens``.
- ``POST /v1/embeddings``: ``input`` a string or a list of strings, optional ``dimensions``
  (default ``embedding_dim``, 32); each vector is a deterministic function of its text
  (:func:`embedding_vector`: sha256-derived, unit norm); ``usage.prompt_tokens`` counts
  whitespace words. ``embedding_script(body)`` (an Action or None), then rules whose substring
  is in any input text, choose a fault (kinds ``error``,
  ``hang``, ``malformed``, ``html``, ``wrong_shape``, ``empty``, ``truncated``, and
  ``short_vectors``: valid vectors of half the length); recorded with
  ``n = -1`` (``srv.embedding_requests``).
- ``GET /v1/models``.
- The Files and Batch API: ``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}`` and
  ``/v1/files/{id}/content``; ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches``
  (newest first, ``limit``/``after``), ``POST /v1/batches/{id}/cancel``. A batch is
  ``in_progress`` for ``batch_delay_s`` seconds after its creation, then its lines are answered
  one by one exactly as chat requests (the same script, rules, answers and arrival numbers;
  recorded with method ``BATCH``) and it is ``completed``; answers go to the output file,
  failed lines (HTTP errors, and ``Action.expired()`` lines, which make the batch ``expired``)
  to the error file, in OpenAI's line format. ``srv.batch_submissions`` lists the batch ids in
  creation order; an input file with a bad line fails the batch (``failed``, with ``errors``).
  Anything else: 404 with an OpenAI-style error body.

Deterministic answers. The completion text is, in order of precedence: the text of a scripted
``Action.reply``; the value of the first ``answers`` entry whose key is a substring of the last
user message; for a request with ``top_logprobs`` > 0, the top token of the first-token
distribution; otherwise ``"Fake answer <sha256[:8] of the last user message>."``. Tokens are
whitespace-led words (``re.findall(r"\\s*\\S+")``); ``max_tokens`` cuts the text (finish_reason
``length``). With logprobs, the FIRST token's ``top_logprobs`` are the scripted distribution
(default :data:`LIKERT_LOGPROBS`: "The" on top, then the digits "1".."5" and a few other tokens;
the first ``top_logprobs`` of them, best first); later tokens get a flat filler list. Usage:
a prompt costs 4 tokens per message plus its whitespace words; ``cached_tokens`` is the prompt
length of the longest message prefix (all but the last message at most) that an earlier request
already sent, as a prefix cache would report it.

Scripted failures (:class:`Action`), chosen per request by, in order: ``script[n]`` (``n`` =
0-based arrival number among chat requests) or ``script(n, body)`` when ``script`` is callable;
the first matching :class:`Rule` (substring of the last user message, optionally only its first
``times`` matches); else the normal answer. Kinds: HTTP error with any status, ``Retry-After``
and message (``error``, ``rate_limited``, ``unavailable``, ``bad_request``), ``hang`` (no
answer for N seconds, then a normal one), ``malformed`` (200 with a cut JSON body),
``empty`` (200, no choices), ``no_digit`` (valid answer without any digit, digits absent from
the logprobs too), ``truncated`` (the connection closes half-way through the body or the SSE
stream), ``echo_auth`` (an error whose body repeats the Authorization header, as a careless
proxy would).

Load model: ``latency_s`` (fixed sleep per chat request) and ``slots`` (at most that many chat
requests are processed at once; the others wait, like a server with N slots). The server records
every request (:class:`Recorded`, ``srv.requests`` / ``srv.chat_requests``) and the largest
number of chat requests in flight at once (``srv.max_in_flight``; requests waiting for a slot
count as in flight, the client cannot tell them apart).

As a process (for benchmarks, so that the server does not share the client's GIL):
``python tests/servers/fake_openai.py --latency 0.05 --slots 8`` prints one JSON line
``{"base_url": ...}`` and serves until its stdin closes or it gets SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import json
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# First-token distribution of a Likert judge answer (what a small model gives: a non-digit on
# top, all five digits inside the top 20). Best first.
LIKERT_LOGPROBS: tuple[tuple[str, float], ...] = (
    ("The", -0.6),
    ("4", -1.5),
    ("3", -2.0),
    ("5", -2.4),
    ("I", -3.1),
    ("2", -3.6),
    (" ", -4.2),
    ("1", -4.9),
    ("Score", -5.3),
    ("**", -5.8),
    ("Rating", -6.2),
    ("\n", -6.6),
    ("This", -7.0),
    ("Based", -7.3),
    ("A", -7.7),
    ("6", -8.1),
    ("0", -8.4),
    ("Four", -8.8),
    ("Three", -9.1),
    ("Yes", -9.5),
    ("No", -9.9),
    ("Okay", -10.2),
)
NO_DIGIT_LOGPROBS: tuple[tuple[str, float], ...] = (
    ("I", -0.2),
    ("The", -2.0),
    ("Sorry", -3.0),
    ("As", -3.5),
    ("This", -4.0),
)
NO_DIGIT_TEXT = "I cannot rate this answer."
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Action:
    """What the server does with one chat request. Build with the class methods."""

    kind: str = "reply"  # reply | error | hang | malformed | empty | truncated | html | wrong_shape | expired (batch lines)
    status: int = 200
    message: str = ""
    retry_after: str | None = None
    seconds: float = 0.0
    text: str | None = None
    top_logprobs: tuple[tuple[str, float], ...] | None = None
    echo_header: bool = False

    @classmethod
    def reply(cls, text: str | None = None, top_logprobs: Sequence[tuple[str, float]] | None = None) -> Action:
        return cls("reply", text=text, top_logprobs=None if top_logprobs is None else tuple(top_logprobs))

    @classmethod
    def error(cls, status: int = 500, message: str = "", retry_after: str | float | None = None) -> Action:
        ra = None if retry_after is None else str(retry_after)
        return cls("error", status=status, message=message or f"fake server error {status}", retry_after=ra)

    @classmethod
    def rate_limited(cls, retry_after: str | float | None = "1") -> Action:
        return cls.error(429, "Rate limit reached, slow down", retry_after)

    @classmethod
    def unavailable(cls, retry_after: str | float | None = None) -> Action:
        return cls.error(503, "Service temporarily unavailable", retry_after)

    @classmethod
    def bad_request(cls, message: str = "Invalid request: unsupported parameter") -> Action:
        return cls.error(400, message)

    @classmethod
    def echo_auth(cls, status: int = 401) -> Action:
        return cls("error", status=status, message="Incorrect API key provided", echo_header=True)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Action:
        return cls("hang", seconds=seconds)

    @classmethod
    def malformed(cls) -> Action:
        return cls("malformed")

    @classmethod
    def empty(cls) -> Action:
        return cls("empty")

    @classmethod
    def no_digit(cls) -> Action:
        return cls.reply(NO_DIGIT_TEXT, NO_DIGIT_LOGPROBS)

    @classmethod
    def truncated(cls) -> Action:
        return cls("truncated")

    @classmethod
    def html(cls, status: int = 502) -> Action:
        """A proxy's HTML error page instead of JSON (a gateway in front of the model server)."""
        return cls("html", status=status)

    @classmethod
    def wrong_shape(cls) -> Action:
        """Valid JSON of the wrong shape: a choice without its message."""
        return cls("wrong_shape")

    @classmethod
    def out_of_range_digit(cls) -> Action:
        """A judge answer whose only digit is outside 1-5."""
        return cls.reply("9", [("9", -0.05), ("0", -3.0)])

    @classmethod
    def short_vectors(cls) -> Action:
        """Embeddings only: a well-formed answer whose vectors have half the asked length."""
        return cls("short_vectors")

    @classmethod
    def expired(cls) -> Action:
        """A batch line the batch's window ran out on (online: a normal answer)."""
        return cls("expired")


@dataclass
class Rule:
    """Apply ``action`` to requests whose last user message contains ``contains`` (all of
    them, or only the first ``times``)."""

    contains: str
    action: Action
    times: int | None = None
    used: int = 0


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it. ``n``: arrival number among chat requests
    (-1 for other paths); ``headers``: lower-cased names; ``body``: parsed JSON (None if absent
    or invalid); ``received_at``: ``time.monotonic()``; ``action``: what the server did."""

    n: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float
    action: str = ""


Script = Mapping[int, Action] | Callable[[int, dict], "Action | None"]


def embedding_vector(text: str, dim: int) -> list[float]:
    """The fake server's embedding of ``text``: ``dim`` values from sha256(text, block), scaled
    to unit norm."""
    raw: list[float] = []
    block = 0
    while len(raw) < dim:
        digest = hashlib.sha256(f"{block}|{text}".encode()).digest()
        raw.extend((b - 127.5) / 127.5 for b in digest)
        block += 1
    raw = raw[:dim]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) or ([text] if text else [])


def _words(text: str) -> int:
    return len(text.split())


def _last_user(messages: Sequence[dict]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


def _error_body(status: int, message: str, kind: str | None = None) -> dict:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
    return {"error": {"message": message, "type": kind or kinds.get(status, "server_error"), "param": None, "code": None}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return  # the client went away (timeout, cancelled request): normal here
        super().handle_error(request, client_address)


class FakeOpenAIServer:
    """See the module docstring. Thread-safe; a context manager (start/stop)."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        rules: Sequence[Rule] = (),
        answers: Mapping[str, str] | None = None,
        likert_logprobs: Sequence[tuple[str, float]] = LIKERT_LOGPROBS,
        latency_s: float = 0.0,
        slots: int | None = None,
        model: str = "fake-model",
        require_api_key: str | None = None,
        record: bool = True,
        batch_delay_s: float = 0.0,
        embedding_dim: int = 32,
        embedding_script: Callable[[dict], Action | None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.script = script
        self.rules = list(rules)
        self.answers = dict(answers or {})
        self.likert_logprobs = tuple(likert_logprobs)
        self.latency_s = latency_s
        self.model = model
        self.require_api_key = require_api_key
        self.record = record
        self._slots = threading.BoundedSemaphore(slots) if slots else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen_prefixes: set[str] = set()
        self._chat_count = 0
        self._in_flight = 0
        self.max_in_flight = 0
        self.requests: list[Recorded] = []
        self.batch_delay_s = batch_delay_s
        self.embedding_dim = embedding_dim
        self.embedding_script = embedding_script
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_submissions: list[str] = []
        self._ids = 0
        self._httpd = _Server((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> FakeOpenAIServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes hanging and sleeping handlers
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- stats
    @property
    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.n >= 0]

    @property
    def embedding_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.rstrip("/") == "/v1/embeddings"]

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = self._in_flight

    # ----------------------------------------------------------------- logic
    def _choose(self, n: int, body: dict) -> Action:
        script = self.script
        if callable(script):
            act = script(n, body)
            if act is not None:
                return act
        elif script is not None and n in script:
            return script[n]
        last = _last_user(body.get("messages") or [])
        with self._lock:
            for rule in self.rules:
                if rule.contains in last and (rule.times is None or rule.used < rule.times):
                    rule.used += 1
                    return rule.action
        return Action.reply()

    def _cached_tokens(self, messages: list) -> tuple[int, int]:
        """(prompt_tokens, cached_tokens) with a message-level prefix cache."""
        costs = [4 + _words(m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content")))
                 for m in messages]
        keys = []
        h = hashlib.sha256()
        for m in messages:
            h.update(json.dumps(m, sort_keys=True).encode())
            keys.append(h.hexdigest())
        cached = 0
        with self._lock:
            for k in range(len(messages) - 1, 0, -1):
                if keys[k - 1] in self._seen_prefixes:
                    cached = sum(costs[:k])
                    break
            self._seen_prefixes.update(keys)
        return sum(costs), cached

    def _completion(self, n: int, body: dict, action: Action) -> tuple[dict, list[dict]]:
        """The full completion object and the list of its stream chunks (without usage)."""
        messages = body.get("messages") or []
        last = _last_user(messages)
        k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        dist = action.top_logprobs if action.top_logprobs is not None else self.likert_logprobs
        text = action.text
        if text is None:
            text = next((v for key, v in self.answers.items() if key in last), None)
        if text is None:
            text = dist[0][0] if k > 0 and dist else f"Fake answer {hashlib.sha256(last.encode()).hexdigest()[:8]}."
        toks = _tokens(text)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if max_tokens is not None and len(toks) > int(max_tokens):
            toks, finish = toks[: int(max_tokens)], "length"
        text = "".join(toks)
        content = None
        if body.get("logprobs"):
            content = []
            dmap = dict(dist)
            for i, t in enumerate(toks):
                if i == 0:
                    top = sorted(dist, key=lambda x: -x[1])[:k]
                    lp = dmap.get(t, min((v for _, v in dist), default=-1.0) - 1.0)
                else:
                    lp = -0.05
                    top = [(t, lp)] + [(f"<alt{j}>", -3.0 - j) for j in range(1, k)]
                    top = top[:k]
                content.append({
                    "token": t,
                    "logprob": lp,
                    "bytes": list(t.encode()),
                    "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in top],
                })
        prompt_tokens, cached = self._cached_tokens([m for m in messages if isinstance(m, dict)])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(toks),
            "total_tokens": prompt_tokens + len(toks),
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        base = {"id": f"chatcmpl-fake-{n}", "created": int(time.time()), "model": body.get("model", self.model),
                "system_fingerprint": "fake"}
        full = dict(base, object="chat.completion", usage=usage, choices=[{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None if content is None else {"content": content},
            "finish_reason": finish,
        }])
        chunks = [dict(base, object="chat.completion.chunk", choices=[{
            "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])]
        for i, t in enumerate(toks):
            chunks.append(dict(base, object="chat.completion.chunk", choices=[{
                "index": 0, "delta": {"content": t},
                "logprobs": None if content is None else {"content": [content[i]]}, "finish_reason": None}]))
        chunks.append(dict(base, object="chat.completion.chunk", choices=[{
            "index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(dict(base, object="chat.completion.chunk", choices=[], usage=usage))
        return full, chunks


    def _embedding_action(self, body: dict, texts: list[str]) -> Action:
        if self.embedding_script is not None:
            act = self.embedding_script(body)
            if act is not None:
                return act
        with self._lock:
            for rule in self.rules:
                if any(rule.contains in t for t in texts) and (rule.times is None or rule.used < rule.times):
                    rule.used += 1
                    return rule.action
        return Action.reply()

    def _embeddings(self, body: dict, texts: list[str], short: bool = False) -> dict:
        dim = int(body.get("dimensions") or self.embedding_dim)
        dim = max(1, dim // 2) if short else dim
        tokens = sum(_words(t) for t in texts)
        return {"object": "list", "model": body.get("model", self.model),
                "data": [{"object": "embedding", "index": i, "embedding": embedding_vector(t, dim)} for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # ----------------------------------------------------------------- files and batches
    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}-fake{self._ids:05d}"

    def _add_file(self, name: str, purpose: str, data: bytes) -> dict[str, Any]:
        fid = self._new_id("file")
        obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()), "filename": name,
               "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}
        with self._lock:
            self.files[fid] = dict(obj, _data=data)
        return obj

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fid = body.get("input_file_id")
        if fid not in self.files:
            return 400, _error_body(400, f"input file {fid!r} not found")
        if body.get("endpoint") != "/v1/chat/completions":
            return 400, _error_body(400, "endpoint must be /v1/chat/completions")
        bid = self._new_id("batch")
        now = int(time.time())
        batch = {
            "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None, "input_file_id": fid,
            "completion_window": body.get("completion_window", "24h"), "status": "in_progress", "output_file_id": None,
            "error_file_id": None, "created_at": now, "in_progress_at": now, "expires_at": now + 86400,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"), "_ready": time.monotonic() + self.batch_delay_s,
        }
        lines = self.files[fid]["_data"].decode("utf-8", "replace").splitlines()
        batch["request_counts"]["total"] = sum(1 for x in lines if x.strip())
        with self._lock:
            self.batches[bid] = batch
            self.batch_submissions.append(bid)
        return 200, self._public(batch)

    def _advance(self, bid: str) -> dict[str, Any]:
        """The batch, run once its delay has passed (its lines answered in input order)."""
        with self._lock:
            batch = self.batches[bid]
            if batch["status"] != "in_progress" or time.monotonic() < batch["_ready"]:
                return self._public(batch)
            batch["status"] = "finalizing"
        out, err, errors = [], [], []
        expired = False
        raw_lines = self.files[batch["input_file_id"]]["_data"].decode("utf-8", "replace").splitlines()
        parsed = []
        for no, raw in enumerate(raw_lines, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                assert isinstance(line, dict) and isinstance(line.get("custom_id"), str) and isinstance(line.get("body"), dict)
                assert line.get("url") == "/v1/chat/completions" and line.get("method") == "POST"
                parsed.append(line)
            except (ValueError, AssertionError):
                errors.append({"code": "invalid_request", "message": "line is not a valid batch request", "param": None,
                               "line": no})
        now = int(time.time())
        if errors:
            with self._lock:
                batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
                return self._public(batch)
        for line in parsed:
            body = line["body"]
            with self._lock:
                n = self._chat_count
                self._chat_count += 1
            action = self._choose(n, body)
            if self.record:
                with self._lock:
                    self.requests.append(Recorded(n, "BATCH", line["url"], {}, body, time.monotonic(),
                                                  action.kind if action.kind != "error" else f"error{action.status}"))
            rid = f"batch_req_{n}"
            cid = line["custom_id"]
            if action.kind == "expired":
                expired = True
                err.append({"id": rid, "custom_id": cid, "response": None, "error": {
                    "code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
            elif action.kind == "error":
                err.append({"id": rid, "custom_id": cid, "error": None, "response": {
                    "status_code": action.status, "request_id": rid, "body": _error_body(action.status, action.message)}})
            elif action.kind == "malformed":
                out.append({"id": rid, "custom_id": cid, "error": None,
                            "response": {"status_code": 200, "request_id": rid, "body": "{\"id\": \"chatcmpl-broken\", \"ch"}})
            elif action.kind == "empty":
                out.append({"id": rid, "custom_id": cid, "error": None, "response": {"status_code": 200, "request_id": rid, "body": {
                    "id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": 0, "model": body.get("model"), "choices": []}}})
            else:
                full, _ = self._completion(n, body, action)
                out.append({"id": rid, "custom_id": cid, "error": None,
                            "response": {"status_code": 200, "request_id": rid, "body": full}})
        to_bytes = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
        out_id = self._add_file(f"{bid}_output.jsonl", "batch_output", to_bytes(out))["id"] if out else None
        err_id = self._add_file(f"{bid}_error.jsonl", "batch_output", to_bytes(err))["id"] if err else None
        with self._lock:
            batch.update(output_file_id=out_id, error_file_id=err_id,
                         request_counts={"total": len(parsed), "completed": len(out), "failed": len(err)})
            if expired:
                batch.update(status="expired", expired_at=now)
            else:
                batch.update(status="completed", finalizing_at=now, completed_at=now)
            return self._public(batch)

    def _list_batches(self, query: dict[str, list[str]]) -> dict[str, Any]:
        with self._lock:
            ids = list(reversed(self.batch_submissions))
        after = (query.get("after") or [None])[0]
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        limit = int((query.get("limit") or ["20"])[0])
        page = ids[:limit]
        data = [self._advance(b) for b in page]
        return {"object": "list", "data": data, "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None, "has_more": len(ids) > limit}

    # ----------------------------------------------------------------- HTTP
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "FakeOpenAI/1.0"
            # headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
            # client's delayed ACK add ~40 ms to every keep-alive response
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, status: int, payload: bytes, ctype: str = "application/json",
                      headers: Mapping[str, str] | None = None, cut: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2] if cut else payload)
                self.wfile.flush()
                if cut:
                    self.close_connection = True

            def _json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
                self._send(status, json.dumps(obj).encode(), headers=headers)

            def _read_body(self) -> tuple[bytes, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    return raw, json.loads(raw) if raw else None
                except ValueError:
                    return raw, None

            def _record(self, n: int, body: Any, action: str = "") -> None:
                if fake.record:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    rec = Recorded(n, self.command, self.path, headers, body, time.monotonic(), action)
                    with fake._lock:
                        fake.requests.append(rec)

            def do_GET(self) -> None:  # noqa: N802
                self._record(-1, None)
                url = urllib.parse.urlsplit(self.path)
                path = url.path.rstrip("/")
                parts = path.split("/")
                if path == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": fake.model, "object": "model", "created": 0, "owned_by": "fake"}]})
                elif path == "/v1/batches":
                    self._json(200, fake._list_batches(urllib.parse.parse_qs(url.query)))
                elif len(parts) == 4 and parts[2] == "batches" and parts[3] in fake.batches:
                    self._json(200, fake._advance(parts[3]))
                elif len(parts) in (4, 5) and parts[2] == "files" and parts[3] in fake.files:
                    f = fake.files[parts[3]]
                    if len(parts) == 5 and parts[4] == "content":
                        self._send(200, f["_data"], ctype="application/octet-stream")
                    else:
                        self._json(200, fake._public(f))
                else:
                    self._json(404, _error_body(404, f"no route GET {self.path}"))

            def _upload(self, raw: bytes) -> None:
                ctype = self.headers.get("Content-Type", "")
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
                fields: dict[str, tuple[str | None, bytes]] = {}
                for part in msg.iter_parts() if msg.is_multipart() else ():
                    name = part.get_param("name", header="content-disposition")
                    fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
                if "file" not in fields:
                    self._json(400, _error_body(400, "multipart field 'file' is required"))
                    return
                purpose = fields.get("purpose", (None, b"batch"))[1].decode()
                self._json(200, fake._add_file(fields["file"][0] or "upload.jsonl", purpose, fields["file"][1]))

            def do_POST(self) -> None:  # noqa: N802
                raw, body = self._read_body()
                path = self.path.rstrip("/")
                parts = path.split("/")
                if path == "/v1/files":
                    self._record(-1, None)
                    self._upload(raw)
                    return
                if path == "/v1/batches":
                    self._record(-1, body)
                    if not isinstance(body, dict):
                        self._json(400, _error_body(400, "JSON body required"))
                        return
                    self._json(*fake._create_batch(body))
                    return
                if len(parts) == 5 and parts[2] == "batches" and parts[4] == "cancel" and parts[3] in fake.batches:
                    self._record(-1, body)
                    with fake._lock:
                        b = fake.batches[parts[3]]
                        if b["status"] == "in_progress":
                            b.update(status="cancelled", cancelled_at=int(time.time()))
                    self._json(200, fake._public(fake.batches[parts[3]]))
                    return
                if path == "/v1/embeddings":
                    self._embed(body)
                    return
                if path != "/v1/chat/completions":
                    self._record(-1, body)
                    self._json(404, _error_body(404, f"no route POST {self.path}"))
                    return
                with fake._lock:
                    n = fake._chat_count
                    fake._chat_count += 1
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    self._chat(n, raw, body)
                finally:
                    with fake._lock:
                        fake._in_flight -= 1

            def _chat(self, n: int, raw: bytes, body: Any) -> None:
                if fake._slots is not None:
                    while not fake._slots.acquire(timeout=0.1):
                        if fake._stop.is_set():
                            return
                try:
                    if fake.latency_s > 0:
                        fake._stop.wait(fake.latency_s)
                    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                        self._record(n, body, "invalid")
                        self._json(400, _error_body(400, "request body must be JSON with a 'messages' list"))
                        return
                    if fake.require_api_key is not None:
                        auth = self.headers.get("Authorization", "")
                        if auth != f"Bearer {fake.require_api_key}":
                            self._record(n, body, "unauthorized")
                            self._json(401, _error_body(401, f"Incorrect API key provided: {auth!r}"))
                            return
                    k = body.get("top_logprobs")
                    if k and (not body.get("logprobs") or int(k) > MAX_TOP_LOGPROBS):
                        self._record(n, body, "invalid")
                        self._json(400, _error_body(400, "top_logprobs must be <= 20 and needs logprobs=true"))
                        return
                    action = fake._choose(n, body)
                    self._record(n, body, action.kind if action.kind != "error" else f"error{action.status}")
                    self._act(n, body, action)
                finally:
                    if fake._slots is not None:
                        fake._slots.release()

            def _embed(self, body: Any) -> None:
                if fake.latency_s > 0:
                    fake._stop.wait(fake.latency_s)
                texts = body.get("input") if isinstance(body, dict) else None
                texts = [texts] if isinstance(texts, str) else texts
                if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                    self._record(-1, body, "invalid")
                    self._json(400, _error_body(400, "'input' must be a string or a non-empty list of strings"))
                    return
                action = fake._embedding_action(body, texts)
                self._record(-1, body, action.kind if action.kind != "error" else f"error{action.status}")
                if action.kind == "hang":
                    if fake._stop.wait(action.seconds):
                        return
                    action = Action.reply()
                if action.kind in ("error", "html", "malformed"):
                    self._act(-1, body, action)
                elif action.kind == "wrong_shape":
                    self._json(200, {"object": "list", "data": [{"object": "embedding", "index": 0}]})
                elif action.kind == "empty":
                    self._json(200, {"object": "list", "data": []})
                else:
                    answer = fake._embeddings(body, texts, short=action.kind == "short_vectors")
                    self._send(200, json.dumps(answer).encode(), cut=action.kind == "truncated")

            def _act(self, n: int, body: dict, action: Action) -> None:
                if action.kind == "hang":
                    if fake._stop.wait(action.seconds):
                        return
                    action = Action.reply()
                if action.kind == "error":
                    message = action.message
                    if action.echo_header:
                        message += f" (received Authorization: {self.headers.get('Authorization', '')})"
                    headers = {"Retry-After": action.retry_after} if action.retry_after is not None else None
                    self._json(action.status, _error_body(action.status, message), headers)
                    return
                if action.kind == "malformed":
                    self._send(200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess')
                    return
                if action.kind == "html":
                    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
                    self.send_response(action.status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                if action.kind == "wrong_shape":
                    self._json(200, {"id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": 0,
                                     "model": body.get("model", fake.model), "choices": [{"index": 0, "finish_reason": "stop"}]})
                    return
                if action.kind == "empty":
                    self._json(200, {"id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": 0,
                                     "model": body.get("model", fake.model), "choices": []})
                    return
                full, chunks = fake._completion(n, body, action)
                if body.get("stream"):
                    self._stream(chunks, cut=action.kind == "truncated")
                else:
                    self._send(200, json.dumps(full).encode(), cut=action.kind == "truncated")

            def _stream(self, chunks: list[dict], cut: bool) -> None:
                # chunked transfer encoding, as real servers stream: a cut stream (no final
                # zero-length chunk) is then visible to the client as an incomplete body
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
                if cut:
                    half = max(1, len(events) // 2)
                    events = events[:half] + [events[half][: len(events[half]) // 2]]
                for ev in events:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                    self.wfile.flush()
                if cut:
                    self.close_connection = True
                else:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()

        return Handler


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a fake OpenAI-compatible API until stdin closes.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per chat request")
    ap.add_argument("--slots", type=int, default=0, help="chat requests processed at once (0: unlimited)")
    ap.add_argument("--no-record", action="store_true", help="keep no request log (long benchmarks)")
    args = ap.parse_args(argv)
    srv = FakeOpenAIServer(latency_s=args.latency, slots=args.slots or None, port=args.port, record=not args.no_record)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with srv:
        print(json.dumps({"base_url": srv.base_url}), flush=True)

        def _wait_stdin() -> None:
            try:
                sys.stdin.read()
            finally:
                done.set()

        threading.Thread(target=_wait_stdin, daemon=True).start()
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
