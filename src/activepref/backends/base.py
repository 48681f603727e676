"""The one interface every generation/judging backend implements, and the request record.

A backend takes a list of :class:`ChatRequest` and reports each result through a callback
as soon as it exists, so that the caller can commit it (request cache, run store) before
anything else happens: a crash never loses a paid call that already returned.

Backends: ``openai_compat`` (any OpenAI-compatible server: vLLM, SGLang, llama.cpp,
Ollama, hosted APIs), ``transformers`` (local, batched) and ``vllm`` (offline engine).
Register a new one in ``activepref.backends`` with ``@register_backend``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from activepref.errors import ActivePrefError


class BackendError(ActivePrefError):
    """A request failed after the backend's own retries (HTTP error, timeout, bad payload)."""


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request; part of the cache key.

    ``top_logprobs`` > 0 asks for the top log-probabilities of each generated token (the
    Likert judge needs them for the first token). ``score_tokens`` asks a local backend for
    the exact log-probabilities of these strings as the first generated token, whether or
    not they are in the top k (servers ignore it and report only their top k).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    top_logprobs: int = 0
    score_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    """messages: chat turns as (role, content) dicts, system prompt included."""

    messages: tuple[tuple[str, str], ...]
    params: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def from_messages(cls, messages: Sequence[dict[str, str]], params: SamplingParams) -> ChatRequest:
        return cls(tuple((m["role"], m["content"]) for m in messages), params)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def cache_key(self, endpoint: str) -> str:
        """sha256 of (endpoint/model, messages, sampling parameters incl. seed)."""
        payload = {"endpoint": endpoint, "messages": self.messages, "params": asdict(self.params)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class ChatResult:
    """One completion. first_token_logprobs: token string -> log-probability at the first
    generated position (top k, plus any requested score tokens), empty if not requested."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    finish_reason: str | None = None
    first_token_logprobs: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChatResult:
        return cls(**json.loads(text))


OnResult = Callable[[int, "ChatResult | BackendError"], None]


class ChatBackend(Protocol):
    """``endpoint`` identifies the model behind the backend (it enters the cache key)."""

    endpoint: str

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        """Run every request; call ``on_result(i, result_or_error)`` once per request, in
        whatever order they finish. Never raises for a single failed request."""
        ...
