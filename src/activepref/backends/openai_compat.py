"""Backend ``openai``: any OpenAI-compatible chat server (vLLM, SGLang, llama.cpp's
``llama-server``, Ollama, hosted APIs) through the official ``openai`` client.

Policy, all ours (the client's own retries are disabled, ``max_retries=0``):

- at most ``max_concurrency`` requests in flight (one ``asyncio.Semaphore``, held per attempt,
  released while a request waits to retry), and at most ``max_concurrency`` of one ``complete``
  call's requests sent but not yet passed to ``on_result`` (a slow caller holds the next request
  back, so answers never pile up where a kill would lose them);
- every attempt has a hard deadline of ``timeout_s`` seconds (``asyncio.wait_for``, so a server
  that accepts the request and then never finishes, or drips bytes, is caught too);
- up to ``max_retries`` retries with exponential backoff and jitter (``tenacity``) on HTTP 408,
  429 and 5xx, timeouts, connection errors (including a body cut mid-way) and malformed or
  empty answers (undecodable JSON, no choices, no text and no logprobs). A ``Retry-After``
  header (``retry-after-ms``, seconds or an HTTP-date; capped at 60 s) replaces the backoff
  for that wait. Any other 4xx (400, 401, 403, 404, 422, ...) fails at once;
- a request that still fails is reported as a :class:`BackendError` through ``on_result``;
  ``complete`` itself raises only if ``on_result`` raises (then the remaining requests are
  cancelled and the caller's exception propagates).

The API key is read from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``)
at each ``complete`` call (without it the placeholder ``EMPTY`` is sent; local servers ignore
it). It is never an attribute of the backend: only the HTTP client holds it, and that client is
left out of ``repr`` and pickling. Error texts are scrubbed of the key (and of any
``Bearer ...`` or ``sk-...`` token) before they reach a ``BackendError`` or a log line.
``endpoint`` is ``"{base_url}|{model}"`` (base URL without user:password).

``complete`` is synchronous from the caller's view, whether or not the calling thread runs an
event loop: the requests run on the backend's own event loop in a daemon thread, started on
first use and kept (with its HTTP client and open connections) for later calls, and
``on_result`` is called in the calling thread as results arrive. Concurrent ``complete`` calls
from several threads share the one ``max_concurrency`` bound. ``close()`` (or ``with``) stops
the thread; a later call starts it again. Async callers can await ``acomplete`` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import queue
import random
import re
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import openai
import tenacity

from activepref.backends import register_backend
from activepref.backends.base import BackendError, ChatRequest, ChatResult, OnResult

if TYPE_CHECKING:
    from activepref.config import ModelConfig

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
PLACEHOLDER_API_KEY = "EMPTY"
RETRY_AFTER_CAP_S = 60.0
REASON_MAX_CHARS = 200
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s'\",;}\]]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
)


def scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` and without anything shaped like a bearer token or key."""
    if secret and secret != PLACEHOLDER_API_KEY and len(secret) >= 4:
        text = text.replace(secret, "***")
    text = _TOKEN_PATTERNS[0].sub(r"\1***", text)
    return _TOKEN_PATTERNS[1].sub("sk-***", text)


def _shorten(text: str, limit: int = REASON_MAX_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP-date;
    None when absent or unreadable. Not capped here."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            value = float(ms) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
    except (TypeError, ValueError):
        pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = str(raw).strip()
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _logaddexp(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    if hi == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


@dataclass(frozen=True)
class _RetryWait:
    """tenacity wait: the server's Retry-After (capped, plus a little jitter) when it sent one,
    else exponential backoff with "equal jitter" (half fixed, half uniform random). A plain
    object, not a bound method: tenacity's retry objects are cyclic garbage, and must not keep
    the backend (and so its event-loop thread) alive until the next GC pass."""

    backoff_s: float
    backoff_max_s: float
    retry_after_cap_s: float

    def __call__(self, state: tenacity.RetryCallState) -> float:
        exc = _outcome_failure(state)
        if exc is not None and exc.retry_after is not None:
            wait = min(exc.retry_after, self.retry_after_cap_s)
            return wait + random.uniform(0.0, min(0.25, 0.1 * max(wait, 0.1)))
        step = min(self.backoff_max_s, self.backoff_s * 2.0 ** (state.attempt_number - 1))
        return step * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class _LogRetry:
    """tenacity before_sleep: one INFO line per retry (the reason is already scrubbed)."""

    endpoint: str
    index: int

    def __call__(self, state: tenacity.RetryCallState) -> None:
        exc = _outcome_failure(state)
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info("%s: request %d attempt %d failed (%s); retrying in %.2f s", self.endpoint, self.index,
                 state.attempt_number, exc.reason if exc is not None else "?", wait)


def _outcome_failure(state: tenacity.RetryCallState) -> _Failure | None:
    """The failure an attempt returned (attempts return failures instead of raising them: no
    traceback, hence no reference cycle through the frames, stays in tenacity's state)."""
    if state.outcome is None or state.outcome.failed:
        return None
    result = state.outcome.result()
    return result if isinstance(result, _Failure) else None


def _last_result(state: tenacity.RetryCallState) -> Any:
    return state.outcome.result() if state.outcome is not None else None


class _Failure(Exception):
    """One failed attempt. ``reason`` is already scrubbed and short."""

    def __init__(self, reason: str, *, retryable: bool, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def _is_retryable(result: object) -> bool:
    return isinstance(result, _Failure) and result.retryable


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _error_reason(exc: openai.APIStatusError) -> str:
    body = exc.body
    message: Any = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or err.get("msg")
        elif isinstance(err, str):
            message = err
        if message is None:
            message = body.get("detail") or body.get("message")
    elif isinstance(body, str):
        message = body
    if not message:
        try:
            message = exc.response.reason_phrase
        except Exception:  # noqa: BLE001 - best effort only
            message = None
    return str(message or type(exc).__name__)


_DONE = object()


class _Runtime:
    """A private event loop in a daemon thread, with the client and the semaphore that live
    on it; one per backend, reused by every ``complete`` call (connections stay open)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.client: openai.AsyncOpenAI | None = None
        self.semaphore: asyncio.Semaphore | None = None
        self.thread = threading.Thread(target=self._run, name="activepref-openai", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            # stopped: cancel what is left, close the client, then the loop
            self.loop.run_until_complete(self._shutdown())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    def usable(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive() and not self.loop.is_closed()

    def submit(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop (its thread then cleans up); wait for that unless called from the
        loop's own thread (a finalizer may run there)."""
        if self.pid != os.getpid() or not self.thread.is_alive():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # loop already closed
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.client is not None:
            client, self.client = self.client, None
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


class OpenAICompatBackend:
    """See the module docstring. ``backoff_s``/``backoff_max_s``: first and largest backoff
    wait (seconds, before jitter); ``retry_after_cap_s``: the most a ``Retry-After`` can ask."""

    path = "/chat/completions"  # the endpoint, relative to base_url

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        retry_after_cap_s: float = RETRY_AFTER_CAP_S,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env or DEFAULT_API_KEY_ENV
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self.endpoint = f"{_without_userinfo(self.base_url)}|{model}"
        self._retry_wait = _RetryWait(backoff_s, backoff_max_s, retry_after_cap_s)
        self._warned_no_logprobs = False
        self._runtime: _Runtime | None = None
        self._runtime_lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(endpoint={self.endpoint!r}, api_key_env={self.api_key_env!r}, "
            f"max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s}, max_retries={self.max_retries})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_runtime", "_runtime_lock", "_finalizer"):  # a thread, a loop, a client (holding the key)
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime = None
        self._runtime_lock = threading.Lock()
        self._finalizer = None

    def __enter__(self) -> OpenAICompatBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client and stop the backend's event-loop thread (a later
        ``complete`` starts them again). Also done at interpreter exit."""
        with self._runtime_lock:
            runtime, self._runtime = self._runtime, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if runtime is not None:
            runtime.stop()

    # ----------------------------------------------------------------- public
    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        """Run every request on the backend's event-loop thread; ``on_result`` runs in the
        calling thread, once per request, as results arrive. Works whether or not the calling
        thread runs an event loop (it blocks that thread either way: the call is synchronous)."""
        requests = list(requests)
        if not requests:
            return
        runtime = self._get_runtime()
        results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Backpressure: a request takes a credit before it is sent and gives it back once
        # on_result has returned, so at most max_concurrency answers are ever on the wire or
        # waiting for the caller (who stores each in the request cache): a kill loses no more.
        credits = asyncio.Semaphore(self.max_concurrency)
        future = runtime.submit(self._drive_shared(runtime, requests, lambda i, r: results.put((i, r)), credits))
        future.add_done_callback(lambda _f: results.put(_DONE))
        pending = len(requests)
        try:
            while pending:
                item = results.get()
                if item is _DONE:
                    break
                pending -= 1
                on_result(*item)
                runtime.loop.call_soon_threadsafe(credits.release)
        except BaseException:
            future.cancel()  # cancels the in-flight requests on the loop thread
            raise
        future.result()  # the driver has returned (immediately after the last result); re-raises a bug
        if pending:
            raise RuntimeError(f"{self.endpoint}: {pending} request(s) ended without a result")

    async def acomplete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        """The async form of :meth:`complete`, on the caller's loop (with its own client and
        concurrency bound; ``on_result`` runs on that loop). If ``on_result`` raises, the
        remaining requests are cancelled and the exception propagates."""
        requests = list(requests)
        if not requests:
            return
        key = self._api_key()
        client = self._make_client(key)
        aborted = False  # on_result raised: report nothing more

        def emit(i: int, result: ChatResult | BackendError) -> None:
            nonlocal aborted
            if aborted:
                return
            try:
                on_result(i, result)
            except BaseException:
                aborted = True
                raise

        try:
            await self._drive(client, asyncio.Semaphore(self.max_concurrency), key, requests, emit)
        finally:
            await client.close()

    # ----------------------------------------------------------------- event loop and client
    def _get_runtime(self) -> _Runtime:
        with self._runtime_lock:
            runtime = self._runtime
            if runtime is None or not runtime.usable():  # first call, after close(), or after a fork
                runtime = self._runtime = _Runtime()
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._finalizer = weakref.finalize(self, runtime.stop)
            return runtime

    def _make_client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            max_retries=0,  # retries are ours
            timeout=self.timeout_s + 5.0,  # our asyncio deadline binds; this is only a backstop
        )

    async def _drive_shared(
        self, runtime: _Runtime, requests: list[ChatRequest], emit: OnResult, credits: asyncio.Semaphore | None = None
    ) -> None:
        """On the runtime's loop: one client and one semaphore shared by every ``complete``
        call of this backend (so concurrent callers together stay within max_concurrency);
        ``credits``: taken before each request is sent (the caller gives them back)."""
        key = self._api_key()
        if runtime.client is None or runtime.client.api_key != key:  # first call, or the key changed
            if runtime.client is not None:
                await runtime.client.close()
            runtime.client = self._make_client(key)
        if runtime.semaphore is None:
            runtime.semaphore = asyncio.Semaphore(self.max_concurrency)
        await self._drive(runtime.client, runtime.semaphore, key, requests, emit, credits)

    async def _drive(
        self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, key: str, requests: list[ChatRequest], emit: OnResult,
        credits: asyncio.Semaphore | None = None,
    ) -> None:
        async def one(i: int, request: ChatRequest) -> None:
            if credits is not None:
                await credits.acquire()
            try:
                result: ChatResult | BackendError = await self._run_one(client, sem, i, request, key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must not lose the request's result
                result = BackendError(f"{self.endpoint}: unexpected {type(exc).__name__}: "
                                      f"{_shorten(scrub(str(exc), key))}")
            emit(i, result)

        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # ----------------------------------------------------------------- internals
    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env) or ""
        if not key:
            log.debug("%s: environment variable %s is not set; sending a placeholder key", self.endpoint, self.api_key_env)
            return PLACEHOLDER_API_KEY
        return key

    def _request_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        return chat_body(self.model, request)

    async def _run_one(
        self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, i: int, request: ChatRequest, key: str
    ) -> ChatResult | BackendError:
        kwargs = self._request_kwargs(request)
        attempts = 0

        async def attempt() -> ChatResult | _Failure:
            nonlocal attempts
            attempts += 1
            try:
                async with sem:
                    response = await self._call(client, kwargs, key)
                return self._parse(response, request)
            except _Failure as failure:
                failure.__traceback__ = failure.__context__ = None  # return it bare (see _outcome_failure)
                return failure

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=self._retry_wait,
            retry=tenacity.retry_if_result(_is_retryable),
            before_sleep=_LogRetry(self.endpoint, i),
            retry_error_callback=_last_result,  # out of attempts: the last failure, not a RetryError
        )
        f = await retrying(attempt)
        if isinstance(f, _Failure):
            tail = "no retry" if not f.retryable else f"{attempts} attempt{'s' if attempts != 1 else ''}"
            err = BackendError(f"{self.endpoint}: {f.reason} ({tail})")
            err.status = f.status  # type: ignore[attr-defined]
            err.attempts = attempts  # type: ignore[attr-defined]
            err.retryable = f.retryable  # type: ignore[attr-defined]
            log.warning("request %d failed: %s", i, err)
            return err
        return f

    async def _call(self, client: openai.AsyncOpenAI, kwargs: dict[str, Any], key: str) -> Any:
        try:
            # client.post (the SDK's documented call for raw requests) rather than
            # client.chat.completions.create: the same auth, headers, error classes and JSON
            # decoding, minus the SDK's walk of the request TypedDicts and its pydantic response
            # objects (~25 per top-20 judge answer), which together were ~60% of our per-request
            # CPU and cost throughput at 8+ requests in flight. The body is plain JSON built by
            # _request_kwargs; cast_to=object returns the decoded JSON as it is (a str if the
            # server's content type is not JSON, which _to_result rejects as malformed).
            call = client.post(self.path, body=kwargs, cast_to=object)
            return await asyncio.wait_for(call, self.timeout_s)
        except asyncio.TimeoutError:
            raise _Failure(f"timed out after {self.timeout_s:g} s", retryable=True) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # JSONDecodeError is a ValueError
            # (before APIStatusError: the validation error is a subclass of it, with status 200)
            raise _Failure(f"malformed response: {_shorten(scrub(str(exc), key), 120)}", retryable=True) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            reason = _shorten(scrub(_error_reason(exc), key))
            retryable = _retryable_status(status)
            retry_after = None
            if retryable:
                try:
                    retry_after = parse_retry_after(exc.response.headers)
                except Exception:  # noqa: BLE001 - a broken header is no reason to fail
                    retry_after = None
            raise _Failure(f"HTTP {status}: {reason}", retryable=retryable, status=status,
                           retry_after=retry_after) from None
        except openai.APITimeoutError:
            raise _Failure(f"timed out after {self.timeout_s:g} s (client)", retryable=True) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            raise _Failure(f"connection error: {_shorten(scrub(detail, key), 120)}", retryable=True) from None

    def _parse(self, data: Any, request: Any) -> Any:
        """The decoded JSON answer to ``request`` -> its result; raises a retryable
        :class:`_Failure` when the answer is malformed. A subclass serving another endpoint
        overrides this, ``path`` and ``_request_kwargs``."""
        return self._to_result(data, request.params.top_logprobs > 0)

    def _to_result(self, data: Any, want_logprobs: bool) -> ChatResult:
        result = parse_completion(data, want_logprobs)
        if want_logprobs and not result.first_token_logprobs and not self._warned_no_logprobs:
            self._warned_no_logprobs = True
            log.warning("%s: logprobs were requested but the server returned none", self.endpoint)
        return result


def chat_body(model: str, request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a chat-completions call for ``request`` (also a batch line's body)."""
    p = request.params
    body: dict[str, Any] = {
        "model": model,
        "messages": request.message_dicts(),
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_tokens": p.max_tokens,
    }
    if p.seed is not None:
        body["seed"] = p.seed
    if p.top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = p.top_logprobs
    return body


def parse_completion(data: Any, want_logprobs: bool) -> ChatResult:
    """The decoded JSON body of a chat completion -> ChatResult; raises a retryable
    :class:`_Failure` if it is not one (online answers and batch result lines alike)."""
    try:
        if not isinstance(data, dict):
            raise _Failure(f"malformed response: a JSON object was expected, got {type(data).__name__}", retryable=True)
        choices = data.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise _Failure("malformed response: no choices", retryable=True)
        choice = choices[0]
        text = (choice.get("message") or {}).get("content")
        if text is not None and not isinstance(text, str):
            raise _Failure("malformed response: message content is not a string", retryable=True)
        first: dict[str, float] = {}
        if want_logprobs:
            content = (choice.get("logprobs") or {}).get("content")
            if content:
                token0 = content[0]
                for alt in token0.get("top_logprobs") or ():
                    tok, lp = str(alt["token"]), float(alt["logprob"])
                    first[tok] = _logaddexp(first[tok], lp) if tok in first else lp
                if token0.get("token") is not None and str(token0["token"]) not in first:
                    first[str(token0["token"])] = float(token0["logprob"])
        if text is None and not first:
            raise _Failure("malformed response: no message content", retryable=True)
        if text == "" and not first:
            raise _Failure("empty response", retryable=True)
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        finish = choice.get("finish_reason")
        return ChatResult(
            text=text or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_prompt_tokens=int(details.get("cached_tokens") or 0),
            finish_reason=None if finish is None else str(finish),
            first_token_logprobs=first,
        )
    except _Failure:
        raise
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise _Failure(f"malformed response: {type(exc).__name__}", retryable=True) from None


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@register_backend("openai", "any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, hosted APIs)")
def make_openai_backend(config: ModelConfig) -> OpenAICompatBackend:
    return OpenAICompatBackend(
        model=config.model,
        base_url=config.base_url,
        api_key_env=config.api_key_env,
        max_concurrency=config.max_concurrency,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
    )
