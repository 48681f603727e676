"""Judges score responses. Registry: kind -> factory, filled by ``@register_judge``.

A judge implements :class:`Judge`: ``score(request) -> JudgeScore`` or raises
:class:`~activepref.errors.JudgeError`. :func:`score_with_retries` retries a failing
judge and then reports the failure, so garbage is never silently scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from activepref.data import Prompt, Response
from activepref.errors import ConfigError, JudgeError


@dataclass(frozen=True)
class ScoreRequest:
    response_idx: int
    prompt: Prompt
    response: Response


@dataclass(frozen=True)
class JudgeScore:
    """value: overall score; aspects: per-aspect expected scores; distributions: per-aspect
    probabilities of the scores 1..5 (Likert judges)."""

    value: float
    aspects: dict[str, float] | None = None
    distributions: dict[str, list[float]] | None = None


class Judge(Protocol):
    """Scores responses. ``batch_size`` is how many requests the loop hands over at once
    (and commits together): 1 for the replay judge, whose reveals are not cached elsewhere;
    large for model judges, whose calls are committed to the request cache as they return.
    Each judge retries on its own; a result that is still invalid comes back as JudgeError."""

    name: str
    batch_size: int

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]: ...


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
    """Wraps a judge and appends one JSON line per scored request to a log file, flushed to
    disk before the result is used, so every paid call can be accounted for after a crash.
    Each line names the process (``pid``): a kill between a reveal and its commit to the run
    store makes the resumed process reveal that one score again, and the pid shows which."""

    def __init__(self, inner: Judge, path: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.batch_size = inner.batch_size
        self.path = path

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]:
        import json
        import os

        results = self.inner.score_batch(requests)
        with open(self.path, "a", encoding="utf-8") as fh:
            for req, res in zip(requests, results):
                entry = {"response_id": req.response.id, "judge": self.name, "ok": isinstance(res, JudgeScore), "pid": os.getpid()}
                fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return results


from activepref.judges import likert, replay, reward_model  # noqa: E402,F401

__all__ = ["JUDGES", "AuditedJudge", "Judge", "JudgeScore", "ScoreRequest", "make_judge", "register_judge"]
