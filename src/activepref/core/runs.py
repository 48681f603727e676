"""Starting, resuming and inspecting runs: the glue between config, pool, store and loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from activepref.annotate.queue import AnnotationQueue
from activepref.config import BudgetConfig, RunConfig, config_from_json
from activepref.core.costs import bill
from activepref.core.determinism import Stage, stage_rng
from activepref.core.plan import iteration_plan
from activepref.core.store import STATUS_TRAINED, RunStore
from activepref.core.summary import run_summary
from activepref.errors import RunStateError
from activepref.judges.human import without_waiting
from activepref.pools.reader import Pool, read_prompts
from activepref.pools.sources import load_pool

if TYPE_CHECKING:
    from activepref.core.loop import LiveParts, Progress


def split_prompts(n_prompts: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out prompt indices, training prompts in annotation order), seeded."""
    perm = stage_rng(seed, 0, Stage.SPLIT).permutation(n_prompts)
    n_eval = int(round(eval_fraction * n_prompts))
    if n_eval >= n_prompts:
        n_eval = n_prompts - 1
    return np.sort(perm[:n_eval]), perm[n_eval:]


def create_run(config: RunConfig, out: str | Path) -> RunStore:
    if config.live:
        assert config.prompts is not None
        prompts = read_prompts(config.prompts)
        pool = Pool(prompts, [], np.empty(0, dtype=np.int64), np.empty((0, 0), np.float32), np.empty(0), {}, None, config.prompts)
        # Live runs generate candidates only for the prompts they annotate, so nothing is held out.
        eval_prompts, train_order = split_prompts(len(prompts), 0.0, config.seed)
    else:
        pool = load_pool(config.pool or "builtin", config.features)
        eval_prompts, train_order = split_prompts(len(pool.prompts), config.eval_fraction, config.seed)
    return RunStore.create(out, config.model_dump_json(), pool, eval_prompts, train_order)


def session_config(config: RunConfig, wait_for_labels: bool) -> RunConfig:
    """The config this session runs with: ``wait_for_labels=False`` (``--no-wait``) makes a
    human judge stop at 'awaiting labels' instead of waiting (not recorded in the run)."""
    if wait_for_labels:
        return config
    return config.model_copy(update={"judge": without_waiting(config.judge)})


def run(
    config: RunConfig, out: str | Path, progress: Progress | None = None, live: LiveParts | None = None, wait_for_labels: bool = True
) -> list[dict[str, Any]]:
    """Create the run directory and run every iteration."""
    store = create_run(config, out)
    try:
        from activepref.core.loop import execute  # (torch: not for status and export)

        return execute(store, session_config(config, wait_for_labels), progress, live)
    finally:
        store.close()


def stored_config(store: RunStore) -> RunConfig:
    text = store.meta("config")
    if text is None:
        raise RunStateError(f"{store.run_dir}: no config recorded")
    return config_from_json(text)


def resume(
    run_dir: str | Path,
    progress: Progress | None = None,
    live: LiveParts | None = None,
    engine: str | None = None,
    budget: dict[str, Any] | None = None,
    wait_for_labels: bool = True,
) -> list[dict[str, Any]] | None:
    """Continue a run; None when every planned iteration was already finished. ``engine``
    (a registered engine kind) replaces the recorded one for this session: an engine changes
    where model calls run, never what they are. ``budget``: new limits (max_usd,
    max_judge_calls, max_generated_tokens; None entries keep the recorded ones), recorded in
    the run's config, so that a run stopped by its budget continues where it stopped.
    ``wait_for_labels=False``: a human judge stops at 'awaiting labels' instead of waiting."""
    store = RunStore.open(run_dir)
    try:
        config = stored_config(store)
        changes = {k: v for k, v in (budget or {}).items() if v is not None}
        if changes:
            new_budget = BudgetConfig.model_validate({**config.budget.model_dump(), **changes})
            config = config.model_copy(update={"budget": new_budget})
            store.set_config(config.model_dump_json())
        config = config.model_copy(update={"engine": config.engine.with_kind(engine)})
        planned = len(iteration_plan(store, config))
        if sum(r.status == STATUS_TRAINED for r in store.iterations()) == planned:
            return None
        from activepref.core.loop import execute  # (torch: not for status and export)

        return execute(store, session_config(config, wait_for_labels), progress, live)
    finally:
        store.close()


@dataclass
class RunStatus:
    run_dir: str
    method: str
    seed: int
    iterations_done: int
    iterations_planned: int
    current: str | None  # status of the first unfinished iteration
    pairs: int
    annotations: int
    failures: int
    last_metrics: dict[str, Any]
    summary: dict[str, Any]
    stopped: str | None = None  # "stopped: budget", "stopped: judge file" (a clean stop before the end)
    stopped_detail: str | None = None
    cost: dict[str, Any] | None = None  # the bill (activepref.core.costs.bill)
    annotation: dict[str, Any] | None = None  # human labels: tasks, per-annotator counts, agreement (None: no tasks)


def annotation_status(store: RunStore) -> dict[str, Any] | None:
    """The human side of a run (None when it has no annotation tasks and no annotators, or
    is an older store read without upgrading)."""
    if not AnnotationQueue.present(store.conn):
        return None
    queue = AnnotationQueue(store.conn)
    summary = queue.summary()
    if not sum(summary.tasks.values()) and not summary.annotators:
        return None
    return asdict(summary)


def status(run_dir: str | Path) -> RunStatus:
    store = RunStore.open_readonly(run_dir)
    try:
        with store.snapshot():  # one committed state, while the run may be writing
            return _status(store, run_dir)
    finally:
        store.close()


def _status(store: RunStore, run_dir: str | Path) -> RunStatus:
    """The status read from an open store (inside one snapshot)."""
    config = stored_config(store)
    records = store.iterations()
    done = [r for r in records if r.status == STATUS_TRAINED]
    unfinished = next((r.status for r in records if r.status != STATUS_TRAINED), None)
    return RunStatus(
        run_dir=str(run_dir),
        method=config.method,
        seed=config.seed,
        iterations_done=len(done),
        iterations_planned=len(iteration_plan(store, config)),
        current=unfinished,
        pairs=store.count("preferences"),
        annotations=store.annotations(),
        failures=store.judge_failure_count(),
        last_metrics=(done[-1].metrics or {}) if done else {},
        summary=run_summary(store),
        stopped=f"stopped: {halt['reason']}" if (halt := store.stopped()) else None,
        stopped_detail=halt["detail"] if halt else None,
        cost=bill(store, config),
        annotation=annotation_status(store),
    )
