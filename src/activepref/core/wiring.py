"""Wiring: the one place that reads a run's config to build its collaborators.

:func:`build_parts` turns a :class:`~activepref.config.RunConfig` into :class:`RunParts`:
the judge (any registered kind, audited when asked), the bound acquisition method, the
execution engine and, for live runs, one chat backend per generation model, the embedder and
the request cache. The loop (:mod:`activepref.core.loop`) only calls what it is handed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from activepref.acquisition import Method, get_method, make_selector
from activepref.annotate.queue import AnnotationQueue
from activepref.core.cache import CachedEmbedder, RequestCache
from activepref.core.model_level import ModelLevelParts, split_methods
from activepref.engines import Engine, make_engine
from activepref.judges import AuditedJudge, ComparingJudge, Judge, JudgeResources, make_judge
from activepref.live.embedders import EMBEDDERS
from activepref.model.enn import ENNShape, EnsembleRewardModel

if TYPE_CHECKING:
    from activepref.backends.base import ChatBackend
    from activepref.config import RunConfig
    from activepref.core.store import RunStore
    from activepref.live.embedders import Embedder

BATCH_MODE_CHUNK = 1 << 30  # judge requests handed over at once in batch/file mode: all of an iteration's


@dataclass
class Progress:
    """Callbacks the CLI uses to draw progress; the library never prints."""

    on_iteration: Callable[[int, int, dict[str, Any]], None] = lambda it, total, metrics: None
    on_stage: Callable[[int, str], None] = lambda it, stage: None


@dataclass
class LiveParts:
    """Collaborators of a live run: one backend per generation model (by label), the
    embedder and the request cache."""

    backends: dict[str, ChatBackend]
    embedder: Embedder
    cache: RequestCache
    judge_backend: ChatBackend | None = None  # default: built from the judge config


@dataclass
class RunParts:
    """Everything a run calls. selector: the method with its options bound (``propose(batch,
    rng)`` or, for a design, ``propose(comparisons, budget, rng)``); cache: the request cache
    when any collaborator calls a model."""

    judge: Judge | ComparingJudge
    method: Method
    selector: Callable[..., Any]
    engine: Engine
    progress: Progress = field(default_factory=Progress)
    live: LiveParts | None = None
    cache: RequestCache | None = None
    model_level: ModelLevelParts | None = None  # a model-level method: which models generate (then ``method`` picks the pair)


def build_parts(store: RunStore, config: RunConfig, progress: Progress | None = None, live: LiveParts | None = None) -> RunParts:
    """Build the run's collaborators from its config (tests may pass ``live`` parts directly)."""
    engine = make_engine(config.engine)
    cache = live.cache if live else None
    if config.live and live is None:
        assert config.generation is not None and config.embedding is not None
        cache = RequestCache(config.cache_path)
        embedder = engine.embedder(config.embedding)
        if EMBEDDERS.get(config.embedding.backend).paid:  # every vector it pays for is kept
            embedder = CachedEmbedder(embedder, cache, wave=config.embedding.batch_size * config.embedding.max_concurrency)
        live = LiveParts(
            backends={m.label(): engine.chat_backend(m) for m in config.generation.models},
            embedder=embedder,
            cache=cache,
        )
    resources = JudgeResources(
        stored_score=store.pool_score,
        request_cache=lambda: cache if cache is not None else RequestCache(config.cache_path),
        backend=live.judge_backend if live else None,
        seed=config.seed,
        backend_factory=engine.chat_backend,
        run_dir=store.run_dir,
        annotations=lambda: AnnotationQueue(store.conn),  # human judges write tasks through the run's own connection
    )
    judge: Judge | ComparingJudge = make_judge(config.judge, resources)
    if config.judge.mode != "online":
        judge.batch_size = BATCH_MODE_CHUNK  # an iteration's judge requests go out as one job
    cache = resources.opened_cache or cache
    if config.judge.audit_log:
        judge = AuditedJudge(judge, config.judge.audit_log)
    model_level, response_method, response_options = split_methods(config)
    method = get_method(response_method)
    selector = make_selector(response_method, response_options)
    return RunParts(judge, method, selector, engine, progress or Progress(), live, cache, model_level)


def new_model(config: RunConfig, dim: int, init_seed: int) -> EnsembleRewardModel:
    """A fresh ENN of the config's shape over ``dim``-dimensional features."""
    e = config.enn
    return EnsembleRewardModel(ENNShape(dim, e.heads, e.hidden, e.layers), init_seed, zeta=e.zeta, lr=e.lr, device=e.device)
