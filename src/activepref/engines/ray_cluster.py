"""The Ray engine: a run's model calls go to Ray actors, a bench's runs to Ray tasks.

Select it with ``engine: {kind: ray, options: {...}}`` in a run config or ``--engine ray`` on
``run``, ``resume``, ``quickstart`` and ``bench`` (needs ``pip install 'activepref[ray]'``).

- Every chat model (each generation model and a model judge) gets ``replicas`` actors; each
  actor builds the model's ordinary backend (``make_backend``) in its own worker process, so
  an actor can hold a vLLM engine on a GPU of another node as well as an HTTP client. The
  driver sees one :class:`RayChatBackend` with the model's usual ``endpoint`` (so the request
  cache keys, and hence the dataset, are the same with or without Ray). Requests of one call
  are dealt round-robin to the replicas; each replica streams answers back (a Ray generator)
  and the driver commits each to the request cache the moment it arrives, exactly as locally.
- The embedder runs in one actor (one, so that every batch an embedder sees is the batch it
  would see locally: embedders sort and pad per call, and a split call could change low bits).
- If a replica dies mid-call (node lost, OOM kill), the requests it had not answered are sent
  again to the replica Ray restarts (or another), and the answers it had streamed stay
  committed: nothing answered is asked twice by the driver.
- ``prefetch`` (default on): while the ensemble trains on iteration t the loop already
  generates and embeds iteration t+1 (see :mod:`activepref.core.prefetch`).
- A bench's (method, seed) runs are Ray tasks of ``job_cpus`` CPUs each.

Ray is the scheduler; this module only maps the backend interface onto actors. Where the
cluster is: ``address`` (``auto``, ``ray://host:10001``), else ``$RAY_ADDRESS``, else a
local cluster of ``init_cpus`` CPUs that this process starts and stops. API keys are read
from the environment of the worker that makes the call: set them on every node (or in
``runtime_env.env_vars``, which Ray keeps in its job metadata).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from activepref.backends.base import BackendError, ChatRequest, ChatResult, OnResult
from activepref.engines import register_engine
from activepref.errors import ConfigError

if TYPE_CHECKING:
    from activepref.config import EmbeddingConfig, EngineConfig, ModelConfig

log = logging.getLogger(__name__)
J = TypeVar("J")

# How often the driver resends a replica's unanswered requests after the replica died.
REPLICA_FAILOVERS = 3
# Ray restarts a dead actor this many times (a replica on a lost node comes back elsewhere).
ACTOR_RESTARTS = 3
# How long the driver waits for a restarting replica before it gives the requests up as failed
# (a local model replica reloads its weights on restart).
REPLICA_RESTART_WAIT_S = 300.0


class ActorResources(BaseModel):
    """Resources of the actors of one model (or of the embedder)."""

    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(1, ge=1, description="actors serving this model (requests are dealt round-robin)")
    num_cpus: float | None = Field(
        None, ge=0, description="CPUs per actor (default: 0 for the openai backend, which only waits on HTTP; 1 otherwise)"
    )
    num_gpus: float = Field(0, ge=0, description="GPUs per actor (a vLLM replica: 1, or its tensor-parallel size)")
    max_concurrency: int = Field(4, ge=1, description="calls one actor serves at once (threads)")


class RayOptions(BaseModel):
    """The ``engine.options`` of ``kind: ray``."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="cluster to join: auto, ray://host:port; default $RAY_ADDRESS, else a new local one")
    init_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster this process starts (default: all)")
    actors: ActorResources = Field(default_factory=ActorResources, description="default actor resources of every chat model")
    models: dict[str, ActorResources] = Field(default_factory=dict, description="per model label: its own actor resources")
    embedder: ActorResources = Field(
        default_factory=lambda: ActorResources(num_cpus=1), description="the embedder's actor (replicas must stay 1)"
    )
    job_cpus: float = Field(1, gt=0, description="CPUs per bench run (Ray task)")
    job_gpus: float = Field(0, ge=0, description="GPUs per bench run (Ray task)")
    prefetch: bool = Field(True, description="generate and embed iteration t+1 while the ensemble trains on t")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env of the job (pip, working_dir, env_vars)")


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("engine kind 'ray' needs Ray: pip install 'activepref[ray]'") from exc
    return ray


def ensure_ray(options: RayOptions) -> Any:
    """Connect to (or start) the cluster once per process; returns the ``ray`` module."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if options.runtime_env:
        kwargs["runtime_env"] = options.runtime_env
    if address is None and options.init_cpus is not None:
        kwargs["num_cpus"] = options.init_cpus
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"engine ray: cannot reach the Ray cluster at {address or 'a new local cluster'}: {exc}") from exc
    return ray


# ------------------------------------------------------------------ actors (module level: Ray pickles them by reference)
# A replica's answers not yet read by its driver: at most UNREAD_ITEMS yielded items (each at
# most about max_concurrency answers) plus its queue. Backpressure one item deep made the
# replica wait out a Ray round trip per item (ray_1 fell from 71 to 32 requests/s in
# benchmarks/engine_throughput.py); four deep measured as no backpressure at all, side by side
# on one loaded machine (ray_1 69-71 vs 71, ray_2 125-128 vs 129 requests/s).
UNREAD_ITEMS = 4


class ChatActor:
    """One replica of one model: the model's ordinary backend in a Ray worker."""

    def __init__(self, model_json: str) -> None:
        from activepref.backends import make_backend
        from activepref.config import ModelConfig

        self.backend = make_backend(ModelConfig.model_validate_json(model_json))

    def endpoint(self) -> str:
        return self.backend.endpoint

    def pid(self) -> int:
        """The replica's process id (for operators and fault tests)."""
        return os.getpid()

    def complete(self, requests: list[ChatRequest]) -> Iterator[list[tuple[int, ChatResult | BackendError]]]:
        """Yield the answers as they finish (a Ray streaming generator): each item is every
        (position, answer) that arrived since the last item, so a burst of answers costs one
        Ray object, and a lone answer is sent the moment it exists.

        Backpressure end to end: the driver calls this with Ray's generator backpressure
        (``UNREAD_ITEMS`` unread items), and answers wait in a queue of ``max_concurrency`` places whose full
        state blocks the backend's ``on_result`` (and so, through its credits, its next
        request). A driver killed mid-call thus leaves about (UNREAD_ITEMS + 2) x
        ``max_concurrency`` answers unstored at most, never the rest of the call; when the driver goes away (the
        generator is closed) the requests not yet sent are cancelled."""
        bound = max(1, int(getattr(self.backend, "max_concurrency", 0) or 64))
        answers: queue.Queue[tuple[int, ChatResult | BackendError] | None] = queue.Queue(maxsize=bound)
        gone = threading.Event()

        def put(item: tuple[int, ChatResult | BackendError] | None) -> None:
            while not gone.is_set():
                try:
                    answers.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _DriverGone  # on_result raising cancels the backend's remaining requests

        def work() -> None:
            try:
                try:
                    self.backend.complete(requests, lambda i, r: put((i, r)))
                except _DriverGone:
                    raise
                except BaseException as exc:  # a backend must not raise; if it does, fail what is left
                    put((-1, BackendError(f"backend raised {type(exc).__name__}: {exc}")))
                put(None)
            except _DriverGone:  # nobody reads the answers any more: nothing to report
                pass

        threading.Thread(target=work, name="activepref-chat-actor", daemon=True).start()
        delivered: set[int] = set()
        finished = False
        try:
            while not finished:
                items = [answers.get()]
                while True:
                    try:
                        items.append(answers.get_nowait())
                    except queue.Empty:
                        break
                batch: list[tuple[int, ChatResult | BackendError]] = []
                for item in items:
                    if item is None:
                        finished = True
                        continue
                    i, result = item
                    if i < 0:
                        batch += [(j, result) for j in range(len(requests)) if j not in delivered]
                        delivered.update(range(len(requests)))
                    elif i not in delivered:
                        delivered.add(i)
                        batch.append((i, result))
                if batch:
                    yield batch
        finally:
            gone.set()


class _DriverGone(Exception):
    """The driver stopped reading a replica's answers (closed generator, cancelled task)."""


class EmbedActor:
    def __init__(self, config_json: str) -> None:
        from activepref.config import EmbeddingConfig
        from activepref.live.embedders import embedder_from_config

        self.embedder = embedder_from_config(EmbeddingConfig.model_validate_json(config_json))

    def describe(self) -> str:
        return self.embedder.name

    def dim(self) -> int:  # asked only when needed: a server-side embedder may have to call to know it
        return int(self.embedder.dim)

    def embed(self, conversations: list[Any]) -> np.ndarray:
        return self.embedder.embed(conversations)

    def embed_with_tokens(self, conversations: list[Any]) -> tuple[np.ndarray, list[int]]:
        with_tokens = getattr(self.embedder, "embed_with_tokens", None)
        if with_tokens is not None:
            return with_tokens(conversations)
        return self.embedder.embed(conversations), [0] * len(conversations)


def _default_cpus(resources: ActorResources, backend: str) -> float:
    if resources.num_cpus is not None:
        return resources.num_cpus
    return 0.0 if backend == "openai" else 1.0


class RayChatBackend:
    """The driver's side of one model's replicas: a ``ChatBackend``."""

    def __init__(self, ray: Any, actors: list[Any], endpoint: str) -> None:
        self._ray = ray
        self._actors = actors
        self.endpoint = endpoint

    @property
    def replicas(self) -> int:
        return len(self._actors)

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        if not requests:
            return
        lock = threading.Lock()
        answered: set[int] = set()

        def deliver(i: int, result: ChatResult | BackendError) -> None:
            with lock:
                if i in answered:
                    return
                answered.add(i)
                on_result(i, result)

        shares = [list(range(k, len(requests), len(self._actors))) for k in range(len(self._actors))]
        threads = [
            threading.Thread(target=self._serve, args=(k, share, requests, deliver), name=f"activepref-ray-{k}", daemon=True)
            for k, share in enumerate(shares)
            if share
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        missing = [i for i in range(len(requests)) if i not in answered]
        for i in missing:  # only if a replica stream ended early without an error (should not happen)
            deliver(i, BackendError(f"{self.endpoint}: the Ray replica returned no answer"))

    def _serve(
        self, k: int, share: list[int], requests: Sequence[ChatRequest], deliver: Callable[[int, ChatResult | BackendError], None]
    ) -> None:
        """Stream one replica's share; after a replica death resend what it had not answered
        (to the same replica once Ray has restarted it, else to the next one alive)."""
        ray = self._ray
        todo = list(share)
        last: Exception | None = None
        for attempt in range(REPLICA_FAILOVERS + 1):
            actor = self._live_actor(k + attempt)
            if actor is None:
                break
            done: set[int] = set()
            try:
                # a few unread items at most: the replica waits for this driver (see ChatActor.complete)
                stream = actor.complete.options(_generator_backpressure_num_objects=UNREAD_ITEMS).remote([requests[i] for i in todo])
                for ref in stream:
                    for j, result in ray.get(ref):
                        done.add(j)
                        deliver(todo[j], result)
                return
            except ray.exceptions.RayError as exc:
                todo = [i for n, i in enumerate(todo) if n not in done]
                log.warning("%s: replica %d failed (%s); resending its %d unanswered requests", self.endpoint, k, exc, len(todo))
                last = exc
        for i in todo:
            deliver(i, BackendError(f"{self.endpoint}: Ray replica lost {REPLICA_FAILOVERS + 1} times: {last}"))

    def _live_actor(self, start: int) -> Any | None:
        """The first replica from ``start`` on that answers (waiting for one Ray is
        restarting), or None when every replica is dead for good."""
        ray = self._ray
        deadline = time.monotonic() + REPLICA_RESTART_WAIT_S
        while time.monotonic() < deadline:
            dead = 0
            for n in range(len(self._actors)):
                actor = self._actors[(start + n) % len(self._actors)]
                try:
                    ray.get(actor.pid.remote(), timeout=10)
                    return actor
                except ray.exceptions.ActorDiedError:
                    dead += 1
                except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                    pass  # restarting, or busy starting
            if dead == len(self._actors):
                return None
            time.sleep(0.5)
        return None


class RayEmbedder:
    """The driver's side of the embedder actor: an ``Embedder``."""

    def __init__(self, ray: Any, actor: Any) -> None:
        self._ray = ray
        self._actor = actor
        self.name = ray.get(actor.describe.remote())  # raises here if the embedder did not start
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._ray.get(self._actor.dim.remote()))
        return self._dim

    def embed(self, conversations: Sequence[Any]) -> np.ndarray:
        return self._ray.get(self._actor.embed.remote(list(conversations)))

    def embed_with_tokens(self, conversations: Sequence[Any]) -> tuple[np.ndarray, list[int]]:
        return self._ray.get(self._actor.embed_with_tokens.remote(list(conversations)))


class RayEngine:
    name = "ray"

    def __init__(self, options: RayOptions) -> None:
        self.options = options
        self.prefetch = options.prefetch

    def _actor_options(self, resources: ActorResources, backend: str) -> dict[str, Any]:
        return {
            "num_cpus": _default_cpus(resources, backend),
            "num_gpus": resources.num_gpus,
            "max_concurrency": resources.max_concurrency,
            "max_restarts": ACTOR_RESTARTS,
        }

    def chat_backend(self, model: ModelConfig) -> RayChatBackend:
        ray = ensure_ray(self.options)
        resources = self.options.models.get(model.label(), self.options.actors)
        cls = ray.remote(ChatActor).options(**self._actor_options(resources, model.backend))
        actors = [cls.remote(model.model_dump_json()) for _ in range(resources.replicas)]
        try:
            endpoint = ray.get(actors[0].endpoint.remote())
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"engine ray: the actor of model {model.label()!r} did not start: {exc}") from exc
        return RayChatBackend(ray, actors, endpoint)

    def embedder(self, config: EmbeddingConfig) -> RayEmbedder:
        ray = ensure_ray(self.options)
        opts = self._actor_options(self.options.embedder, config.backend)
        opts["max_concurrency"] = 1
        # a retried call is harmless for a local embedder; a paid one (openai) re-asks at most the
        # wave in flight when its actor died (the driver has stored every wave before it)
        opts["max_task_retries"] = 2
        actor = ray.remote(EmbedActor).options(**opts).remote(config.model_dump_json())
        try:
            return RayEmbedder(ray, actor)
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"engine ray: the embedder actor did not start: {exc}") from exc

    def run_jobs(
        self, fn: Callable[[J], Any], jobs: Sequence[J], workers: int, initializer: Callable[[], None] | None = None
    ) -> Iterator[tuple[J, Any]]:
        """Each job is a Ray task; ``workers`` caps how many are in flight (the cluster's free
        CPUs cap it too)."""
        ray = ensure_ray(self.options)
        task = ray.remote(_job_task).options(num_cpus=self.options.job_cpus, num_gpus=self.options.job_gpus, max_retries=0)
        pending = list(jobs)
        running: dict[Any, J] = {}
        limit = max(1, workers)
        while pending or running:
            while pending and len(running) < limit:
                job = pending.pop(0)
                running[task.remote(fn, job, initializer)] = job
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                job = running.pop(ref)
                yield job, ray.get(ref)


def _job_task(fn: Callable[[J], Any], job: J, initializer: Callable[[], None] | None) -> Any:
    if initializer is not None:
        initializer()
    return fn(job)


@register_engine("ray", "Ray cluster: model replicas as actors, bench runs as tasks (pip install 'activepref[ray]').")
def make_ray_engine(config: EngineConfig) -> RayEngine:
    try:
        options = RayOptions.model_validate(config.options)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"engine.options.{where}: {first['msg']}") from exc
    if options.embedder.replicas != 1:
        raise ConfigError(f"engine.options.embedder.replicas: the embedder runs in one actor (got {options.embedder.replicas})")
    return RayEngine(options)
