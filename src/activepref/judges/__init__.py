"""Judges score responses. Registry: kind -> factory, filled by ``@register_judge``.

A judge implements :class:`Judge`: ``score(request) -> JudgeScore`` or raises
:class:`~activepref.errors.JudgeError`. :func:`score_with_retries` retries a failing
judge and then reports the failure, so garbage is never silently scored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from activepref.data import Prompt, Response
from activepref.errors import ConfigError, JudgeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRequest:
    response_idx: int
    prompt: Prompt
    response: Response


@dataclass(frozen=True)
class JudgeScore:
    value: float
    aspects: dict[str, float] | None = None


class Judge(Protocol):
    name: str

    def score(self, request: ScoreRequest) -> JudgeScore: ...


JudgeFactory = Callable[..., Judge]


@dataclass(frozen=True)
class JudgeEntry:
    kind: str
    description: str
    factory: JudgeFactory


JUDGES: dict[str, JudgeEntry] = {}


def register_judge(kind: str, description: str) -> Callable[[JudgeFactory], JudgeFactory]:
    def wrap(factory: JudgeFactory) -> JudgeFactory:
        JUDGES[kind] = JudgeEntry(kind, description, factory)
        return factory

    return wrap


def make_judge(kind: str, **kwargs: Any) -> Judge:
    try:
        entry = JUDGES[kind]
    except KeyError:
        raise ConfigError(f"judge.kind: unknown judge {kind!r}; choose one of: {', '.join(JUDGES)}") from None
    return entry.factory(**kwargs)


class AuditedJudge:
    """Wraps a judge and appends one JSON line per call to a log file, flushed to disk
    before the result is used, so every paid call can be accounted for after a crash."""

    def __init__(self, inner: Judge, path: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = path

    def score(self, request: ScoreRequest) -> JudgeScore:
        import json
        import os

        try:
            result = self.inner.score(request)
            entry = {"response_id": request.response.id, "judge": self.name, "ok": True}
            return result
        except JudgeError as exc:
            entry = {"response_id": request.response.id, "judge": self.name, "ok": False, "error": str(exc)}
            raise
        finally:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())


def score_with_retries(judge: Judge, request: ScoreRequest, max_retries: int) -> JudgeScore | str:
    """The judge's score, or the last error message after ``max_retries`` retries."""
    error = ""
    for attempt in range(max_retries + 1):
        try:
            return judge.score(request)
        except JudgeError as exc:
            error = str(exc)
            log.warning("judge %s failed on response %s (attempt %d): %s", judge.name, request.response.id, attempt + 1, error)
    return error


from activepref.judges import replay  # noqa: E402,F401

__all__ = ["JUDGES", "Judge", "JudgeScore", "ScoreRequest", "make_judge", "register_judge", "score_with_retries"]
