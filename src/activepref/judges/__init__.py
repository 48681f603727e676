"""Judges annotate. Registry: kind -> factory, filled by ``@register_judge``.

A judge either *scores* responses (:class:`Judge`: ``score_batch(requests)`` gives a
``JudgeScore`` or a :class:`~activepref.errors.JudgeError` per request) or *compares* two
responses of a prompt (:class:`ComparingJudge`, registered with ``compares=True``:
``compare_batch(requests)`` gives a :class:`Comparison` or a ``JudgeError`` per pair). Each
judge retries a failing call on its own and then reports the failure, so garbage is never
silently scored.

Add a judge kind (in-tree or in a plugin) with one factory::

    @register_judge("my_judge", "one line on what it does", needs_model=True)
    def make_my_judge(config: JudgeConfig, resources: JudgeResources) -> Judge: ...

``config`` is the run's ``judge:`` section (``config.model`` the judge's model, when it has
one); ``resources`` gives what the run provides (its request cache, a backend for the model,
the pool's stored scores). :func:`make_judge` builds the judge a config names in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ValidationError

from activepref.errors import ConfigError, JudgeError
from activepref.pools.records import Prompt, Response
from activepref.registry import Registry

if TYPE_CHECKING:
    from activepref.annotate.queue import AnnotationQueue
    from activepref.backends.base import ChatBackend, ChatRequest
    from activepref.config import JudgeConfig, ModelConfig
    from activepref.core.cache import RequestCache


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


@dataclass(frozen=True)
class CompareRequest:
    """Two responses of one prompt (row indices in the run, or any ids outside a run).
    In a run the loop also gives the iteration and, to a judge that asks for it
    (``wants_uncertainty``), the ensemble's uncertainty about the pair's preference."""

    first_idx: int
    second_idx: int
    prompt: Prompt
    first: Response
    second: Response
    iteration: int | None = None
    uncertainty: float | None = None


@dataclass(frozen=True)
class Comparison:
    """p_first: P(first response better), averaged over the orders asked (0.5 exactly is a
    tie); consistent: asked in both orders, whether both answers favoured the same response
    (None when asked in one order)."""

    p_first: float
    consistent: bool | None = None


class Judge(Protocol):
    """Scores responses. ``batch_size`` is how many requests the loop hands over at once
    (and commits together): 1 for the replay judge, whose reveals are not cached elsewhere;
    large for model judges, whose calls are committed to the request cache as they return.
    Each judge retries on its own; a result that is still invalid comes back as JudgeError."""

    name: str
    batch_size: int

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]: ...


class ComparingJudge(Protocol):
    """Says which of two responses is better (``compares = True``). Its preferences carry
    ``score_chosen`` = P(chosen better) and ``score_rejected`` = 1 - that. It cannot serve a
    method that needs scores of more than two candidates (``Method.needs_scores``)."""

    name: str
    batch_size: int
    compares: bool

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Comparison | JudgeError]: ...


def judge_compares(judge: object) -> bool:
    """Whether a built judge compares pairs (else it scores responses)."""
    return bool(getattr(judge, "compares", False))


StoredScore = Callable[[int], tuple[float | None, dict[str, float]]]


@dataclass
class JudgeResources:
    """What the run lends a judge beyond its config.

    stored_score: the pool's stored score of a response row (the replay judge's source).
    request_cache: opens the run's request cache (every model call goes through it).
    backend: a ready backend for the judge's model (live runs and tests pass one); otherwise
    :meth:`chat_backend` builds it from ``config.model``.
    seed: the run's seed (a pairwise judge draws each pair's presentation order from it).
    backend_factory: builds a backend from a model config (the run's execution engine);
    default ``activepref.backends.make_backend``.
    """

    stored_score: StoredScore | None = None
    request_cache: Callable[[], RequestCache] | None = None
    backend: ChatBackend | None = None
    seed: int = 0
    backend_factory: Callable[[ModelConfig], ChatBackend] | None = None
    run_dir: Path | None = None  # where ``mode: file`` writes request files by default
    annotations: Callable[[], AnnotationQueue] | None = None  # the run's human annotation tasks (human, routed)
    _cache: RequestCache | None = field(default=None, repr=False)

    @property
    def opened_cache(self) -> RequestCache | None:
        """The cache :meth:`cache` opened, if a judge asked for one."""
        return self._cache

    def cache(self) -> RequestCache:
        if self._cache is None:
            if self.request_cache is None:
                raise ConfigError("this judge calls a model and needs a request cache; the run provides none")
            self._cache = self.request_cache()
        return self._cache

    def chat_backend(self, config: JudgeConfig) -> ChatBackend:
        """The judge model's backend: online (given, or built by the engine), or a batch
        backend for ``mode: batch`` / ``mode: file``."""
        if config.mode != "online":
            from activepref.backends.openai_batch import make_batch_backend

            return make_batch_backend(config, self.cache(), self.run_dir)
        if self.backend is not None:
            return self.backend
        if self.backend_factory is not None:
            return self.backend_factory(config.require_model())
        from activepref.backends import make_backend

        return make_backend(config.require_model())


JudgeFactory = Callable[["JudgeConfig", JudgeResources], "Judge | ComparingJudge"]
# The calls a model judge makes for one item, before retries: (config, prompt text, the item's
# response texts: one for a scoring judge, two for a comparing one) -> requests. Cost estimates
# (``activepref estimate``, budgets) read their messages and max_tokens.
RequestsFor = Callable[["JudgeConfig", str, "Sequence[str]"], "list[ChatRequest]"]


@dataclass(frozen=True)
class JudgeEntry:
    """A registered judge kind. needs_model: the config must give ``judge.model``;
    backends: the model backends it runs on (None: any); pool_scores: it only reads the
    pool's stored scores (so it cannot judge freshly generated responses); compares: it
    compares pairs (:class:`ComparingJudge`) instead of scoring responses."""

    name: str
    description: str
    factory: JudgeFactory
    needs_model: bool = True
    backends: frozenset[str] | None = None
    pool_scores: bool = False
    compares: bool = False
    options_model: type[BaseModel] | None = None  # the kind's typed ``judge.options`` (None: takes none)
    requests_for: RequestsFor | None = None  # a model judge's calls for one item (None: one call, no tokens)

    def options(self, given: dict[str, object]) -> BaseModel | None:
        """``judge.options`` validated against the kind's options model (ValueError naming
        the option otherwise); None for a kind that takes no options."""
        if self.options_model is None:
            if given:
                raise ValueError(f"judge kind {self.name!r} takes no options (got {', '.join(sorted(given))})")
            return None
        try:
            return self.options_model.model_validate(given)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ValueError(f"options.{where}: {err['msg']} (judge kind {self.name!r})") from None

    @property
    def kind(self) -> str:
        return self.name


JUDGES: Registry[JudgeEntry] = Registry("judge")


def register_judge(
    kind: str,
    description: str,
    *,
    needs_model: bool = True,
    backends: Sequence[str] | None = None,
    pool_scores: bool = False,
    compares: bool = False,
    options: type[BaseModel] | None = None,
    requests_for: RequestsFor | None = None,
) -> Callable[[JudgeFactory], JudgeFactory]:
    """Decorator registering ``factory(config: JudgeConfig, resources: JudgeResources) -> Judge``
    (a :class:`ComparingJudge` when ``compares``). ``options``: a pydantic model of the kind's
    own settings (``judge.options``), validated when the config loads (extra keys refused).
    ``requests_for``: the calls the judge makes per item (what cost estimates count)."""

    def wrap(factory: JudgeFactory) -> JudgeFactory:
        JUDGES.add(JudgeEntry(
            kind, description, factory, needs_model, frozenset(backends) if backends else None, pool_scores, compares, options,
            requests_for,
        ))
        return factory

    return wrap


def make_judge(config: JudgeConfig, resources: JudgeResources) -> Judge | ComparingJudge:
    """The judge ``config.kind`` names, built from its config (one call for every kind)."""
    return JUDGES.get(config.kind).factory(config, resources)


class AuditedJudge:
    """Wraps a judge and appends one JSON line per scored request or compared pair to a log file, flushed to
    disk before the result is used, so every paid call can be accounted for after a crash.
    Each line names the process (``pid``): a kill between a reveal and its commit to the run
    store makes the resumed process reveal that one score again, and the pid shows which."""

    def __init__(self, inner: Judge | ComparingJudge, path: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.batch_size = inner.batch_size
        self.compares = judge_compares(inner)
        self.wants_uncertainty = bool(getattr(inner, "wants_uncertainty", False))
        self.path = path

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]:
        results = self.inner.score_batch(requests)  # type: ignore[union-attr]
        self._append([{"response_id": req.response.id, "ok": isinstance(res, JudgeScore)} for req, res in zip(requests, results)])
        return results

    def compare_batch(self, requests: Sequence[CompareRequest]) -> list[Comparison | JudgeError]:
        results = self.inner.compare_batch(requests)  # type: ignore[union-attr]
        self._append([
            {"response_id": req.first.id, "other_response_id": req.second.id, "ok": isinstance(res, Comparison)}
            for req, res in zip(requests, results)
        ])
        return results

    def _append(self, entries: list[dict[str, object]]) -> None:
        import json
        import os

        with open(self.path, "a", encoding="utf-8") as fh:
            for entry in entries:
                fh.write(json.dumps({**entry, "judge": self.name, "pid": os.getpid()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


from activepref.judges import likert, pairwise, replay, reward_model, verifier  # noqa: E402,F401

# isort: split
from activepref.judges import human  # noqa: E402,F401  (after the model judges: a routed judge wraps one)

__all__ = [
    "JUDGES",
    "AuditedJudge",
    "CompareRequest",
    "ComparingJudge",
    "Comparison",
    "Judge",
    "JudgeEntry",
    "JudgeResources",
    "JudgeScore",
    "ScoreRequest",
    "judge_compares",
    "make_judge",
    "register_judge",
]
