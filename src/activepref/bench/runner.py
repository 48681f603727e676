"""`activepref bench`: several methods x several seeds on one pool, in parallel, resumable.

Layout of a bench directory ``out``::

    runs/<method>-seed<k>/        one ordinary run directory per (method, seed)
    runs/<method>-seed<k>/bench_metrics.json   per-iteration bench metrics (cache)
    results.csv                   one row per (method, seed, iteration)
    summary.md, curves.png, table21.png        the report (activepref.bench.report)

Every run is an ordinary activepref run (``activepref status`` / ``export`` work on it).
The loop stores the ENN's held-out metrics (accuracy, Spearman loss, best-of-N) with each
iteration, so a bench run keeps only its newest ENN checkpoint (what a resume needs); runs
written before the loop stored them are scored from their checkpoints. Pool runs of one
bench share one features file (``features/<sha256>.npy``, hard-linked into each run).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from activepref.bench import metrics as M
from activepref.bench.files import (  # noqa: F401  (RESULT_COLUMNS, read_calls, ... stay importable from here)
    BENCH_TIMINGS_FILE,
    CALLS_FILE,
    EXTRA_COLUMNS,
    JUDGE_QUALITY_FILE,
    RESULT_COLUMNS,
    read_calls,
    read_results,
    record_call,
    write_judge_quality,
    write_results,
)
from activepref.config import BUILTIN_POOL, EngineConfig, RunConfig, load_config
from activepref.core.export import exported_preferences
from activepref.core.timings import StageTimes
from activepref.engines import make_engine
from activepref.errors import ActivePrefError, ConfigError

CACHE_NAME = "bench_metrics.json"
CACHE_VERSION = 4  # 4: the bill (usd, generated_tokens; activepref.core.costs); 2: dataset-quality columns (prompts_consumed, rm_accuracy, ...)
DATASET_FRACTIONS = (1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1.0)  # of the planned iterations (001 Fig. 7's x axis)


def dataset_checkpoints(planned: int) -> set[int]:
    """Iterations after which the exported dataset is evaluated: the ends of 1/6, 1/3, 1/2,
    2/3, 5/6 and all of the planned iterations (every iteration when there are fewer than 6)."""
    if planned <= len(DATASET_FRACTIONS):
        return set(range(planned))
    return {max(0, math.ceil(f * planned) - 1) for f in DATASET_FRACTIONS}
# Set by the bench for every run; a user override of these would break the comparison.
RESERVED_KEYS = ("pool", "prompts", "method", "method_options", "seed", "batch_size", "iterations", "design_budget", "keep_checkpoints")


@dataclass(frozen=True)
class BenchRun:
    """One (method, seed) run of a bench: its directory and the dotted-key config."""

    method: str
    seed: int
    run_dir: Path
    overrides: dict[str, Any]
    shared_features: Path | None = None  # where the bench keeps one copy of the pool's features

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass(frozen=True)
class BenchEvent:
    """Reported to ``progress`` in the calling process as each run ends.

    state: ``skipped`` (already finished before this call), ``finished`` (ran or resumed
    now) or ``failed`` (``error`` says why); done/total count runs ended so far."""

    run: str
    method: str
    seed: int
    state: str
    done: int
    total: int
    error: str | None = None


def iterations_for(budget: int, batch_size: int) -> int:
    """Iterations that acquire ``budget`` pairs at ``batch_size`` pairs per iteration
    (the last iteration may overshoot by up to batch_size - 1 pairs)."""
    return max(1, math.ceil(budget / batch_size))


def plan_runs(
    pool: str,
    methods: Sequence[str],
    seeds: int | Sequence[int],
    budget: int,
    out: Path,
    batch_size: int = 16,
    overrides: dict[str, Any] | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> list[BenchRun]:
    """The bench's runs, method-major, each with its validated dotted-key config.

    Per-prompt methods annotate one pair per prompt, so an iteration of ``batch_size``
    prompts gives ``batch_size`` pairs; batch designs get ``design_budget = batch_size``
    comparisons per iteration. ``method_options`` maps a method name to its options (e.g.
    ``{"delta_pair": {"strong": "gpt-4", "weak": "smollm2"}}``). Raises ConfigError on a bad
    method, option or override.
    """
    from activepref.acquisition import get_method

    if budget < 1 or batch_size < 1:
        raise ConfigError(f"bench: budget and batch_size must be >= 1 (got {budget}, {batch_size})")
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"bench: give one or more distinct methods (got {methods})")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list) or min(seed_list) < 0:
        raise ConfigError(f"bench: give one or more distinct seeds >= 0 (got {seeds})")
    user = dict(overrides or {})
    clash = sorted(k for k in user if k in RESERVED_KEYS or k.split(".")[0] in RESERVED_KEYS)
    if clash:
        raise ConfigError(f"bench: overrides may not set {', '.join(clash)} (the bench sets them per run)")
    options = dict(method_options or {})
    stray = sorted(set(options) - set(methods))
    if stray:
        raise ConfigError(f"bench: method_options given for {', '.join(stray)}, which is not among the methods {methods}")
    pool_ref = pool if pool == BUILTIN_POOL else str(Path(pool).resolve())
    if pool != BUILTIN_POOL and not Path(pool_ref).exists():
        raise ConfigError(f"bench: pool {pool} does not exist")
    iterations = iterations_for(budget, batch_size)
    runs = []
    for method in methods:
        try:
            design = get_method(method).kind == "design"
        except (KeyError, ValueError, ConfigError):
            design = False  # load_config below names the unknown method
        for seed in seed_list:
            ov = {
                **user, "pool": pool_ref, "method": method, "seed": seed, "batch_size": batch_size,
                "iterations": iterations, "keep_checkpoints": 1,
            }
            if design:
                ov["design_budget"] = batch_size
            if options.get(method):
                ov["method_options"] = dict(options[method])
            load_config(None, ov)  # validate now, before any process starts
            runs.append(BenchRun(method, seed, Path(out) / "runs" / f"{method}-seed{seed}", ov, Path(out) / "features"))
    return runs


# -- one run (runs in a worker process) -------------------------------------------------------
def _worker_init() -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from activepref.model.numerics import flush_denormals_in_every_thread
    from activepref.pools.sources import reuse_last_pool

    flush_denormals_in_every_thread()  # as the CLI does, so a worker computes like a resumed run
    reuse_last_pool()  # a worker creates many runs from one pool: read and validate it once
    torch.set_num_threads(1)
    # numpy's BLAS as well: with its default of one thread per core, two workers on two cores
    # run four BLAS threads that spin against each other (the designs' GEMMs measured 2.7x
    # slower side by side than with one thread each).
    threadpool_limits(limits=1)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the bench process dies.

    Without it, a bench killed with SIGKILL (or by the OOM killer) leaves its workers
    running, holding their run directories' locks, and the rerun that should resume the
    bench is refused with "in use by another activepref process" until they finish."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


# Settings that change no selection, annotation or metric: a run made with other values of
# them (e.g. by an older bench that kept every checkpoint) is resumed as the same run.
RESULT_NEUTRAL_KEYS = ("keep_checkpoints", "engine")


def _same_config(a: RunConfig, b: RunConfig) -> bool:
    def relevant(c: RunConfig) -> dict[str, Any]:
        return {k: v for k, v in c.model_dump().items() if k not in RESULT_NEUTRAL_KEYS}

    return relevant(a) == relevant(b)


def share_features(run_dir: Path, shared_dir: Path) -> bool:
    """Replace a pool run's ``features.npy`` by a hard link to the bench's copy of the same
    bytes (``shared_dir/<sha256>.npy``, created from the first run that has them), so a
    bench of 66 runs on a 4,096 x 30, d 256 pool keeps one 126 MB matrix instead of 66.
    The features of a pool run are never written after it is created. Returns True when the
    run's file is (now) the shared one; False without features or where the filesystem
    refuses hard links (the run keeps its own copy)."""
    from activepref.core.features import file_sha256

    own = Path(run_dir) / "features.npy"
    if not own.exists():
        return False
    shared = Path(shared_dir) / f"{file_sha256(own)}.npy"
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(own, shared)  # the first run with these bytes provides the shared copy
            return True
        except FileExistsError:
            pass
        if os.path.samefile(own, shared):
            return True
        tmp = own.with_suffix(".npy.link")
        tmp.unlink(missing_ok=True)
        os.link(shared, tmp)
        tmp.replace(own)
        return True
    except OSError:
        return False


def execute_run(spec: BenchRun) -> tuple[str, list[dict[str, Any]]]:
    """Run, resume or skip one bench run, then its per-iteration metrics.

    Returns (state, rows): state ``skipped`` when the run was already complete."""
    from activepref.core import runs
    from activepref.core.store import RunStore

    config = load_config(None, spec.overrides)
    run_dir = spec.run_dir
    state = "finished"
    times = StageTimes()
    if RunStore.exists(run_dir):
        try:
            store = RunStore.open_readonly(run_dir)
        except ActivePrefError:
            # Interrupted while the run directory was being created: nothing was annotated yet.
            shutil.rmtree(run_dir)
        else:
            try:
                stored = runs.stored_config(store)
            finally:
                store.close()
            if not _same_config(stored, config):
                raise ConfigError(
                    f"{run_dir} holds a run with another configuration (budget, batch size, pool or overrides "
                    "differ); use another --out or delete that directory"
                )
            st = runs.status(run_dir)
            if st.iterations_done == st.iterations_planned:
                state = "skipped"
            else:
                with times.measure("run"):
                    runs.resume(run_dir)
    with times.measure("run"):
        if not RunStore.exists(run_dir):
            runs.run(config, run_dir)
    with times.measure("dataset_eval"):
        rows = evaluate_run(run_dir, spec.method, spec.seed)
    if spec.shared_features is not None:
        share_features(run_dir, spec.shared_features)
    if state != "skipped":
        times.write(run_dir, BENCH_TIMINGS_FILE)
    return state, rows


def submission_order(specs: list[BenchRun]) -> list[BenchRun]:
    """The order runs are handed to the workers: the batch designs that read the ENN's
    last layer (Φ) first, as they take the longest (1.5-2x a per-prompt run in the 4,096-prompt
    bench), then the rest, each group in plan order. Longest first keeps the workers from
    ending on one long run while the other idles; results do not depend on the order."""
    from activepref.acquisition import get_method

    def heavy(spec: BenchRun) -> bool:
        try:
            method = get_method(spec.method)
        except ConfigError:
            return False  # unknown names fail in their run, with the config's message
        return method.kind == "design" and bool(method.inputs & {"phi", "past_information", "past_differences"})

    return [s for s in specs if heavy(s)] + [s for s in specs if not heavy(s)]


def _run_in_worker(spec: BenchRun) -> tuple[str, list[dict[str, Any]], str | None]:
    """Exceptions become strings: some project errors do not survive pickling."""
    try:
        state, rows = execute_run(spec)
        return state, rows, None
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        return "failed", [], f"{type(exc).__name__}: {exc}"


# -- per-iteration metrics from checkpoints -------------------------------------------------
def evaluate_run(run_dir: Path, method: str, seed: int) -> list[dict[str, Any]]:
    """Rows of results.csv for one finished (or partly finished) run.

    Held-out prompts only: the ENN of each trained iteration predicts the held-out candidates,
    compared with the hidden reference reward (oracle, else the pool score). The loop stores
    those model metrics with each iteration (``core.metrics.heldout_metrics``); runs written before it did
    are predicted again from their checkpoints. Iterations computed before are read from
    ``bench_metrics.json``; an older run's iteration whose checkpoint was pruned gets the
    stored accuracy and NaN model metrics.
    """
    import torch

    from activepref.core.candidates import load_features
    from activepref.core.costs import Usage, usage_by_iteration
    from activepref.core.plan import iteration_plan
    from activepref.core.runs import stored_config
    from activepref.core.store import STATUS_TRAINED, RunStore
    from activepref.model.enn import ENNShape, EnsembleRewardModel

    cache_path = Path(run_dir) / CACHE_NAME
    cache: dict[str, Any] = {}
    if cache_path.exists():
        loaded = json.loads(cache_path.read_text(encoding="utf-8"))
        if loaded.get("version") == CACHE_VERSION:
            cache = loaded.get("iterations", {})
    store = RunStore.open_readonly(run_dir)
    try:
        records = store.iterations()
        trained = [r for r in records if r.status == STATUS_TRAINED]
        todo = [r for r in trained if str(r.iteration) not in cache]
        if todo:
            config = stored_config(store)
            spent = usage_by_iteration(store, config)
            # Runs since the loop stores its held-out model metrics need no ENN forward here.
            needs_model = any("heldout_spearman_loss" not in (r.metrics or {}) for r in todo)
            features = load_features(store, config.enn.standardize) if needs_model else None
            response_prompt, reference = hidden_reference(store)
            eval_set = set(store.eval_prompts())
            cand = np.asarray([i for i, p in enumerate(response_prompt) if int(p) in eval_set], dtype=np.int64)
            groups, ref = response_prompt[cand], reference[cand]
            e = config.enn
            shape = ENNShape(features.shape[1], e.heads, e.hidden, e.layers) if features is not None else None
            quality_at = dataset_checkpoints(len(iteration_plan(store, config)))
            consumed = np.cumsum([len(r.prompt_idxs) for r in records])
            wanted = quality_at & {r.iteration for r in todo}
            dataset = _DatasetView(store, response_prompt, reference) if wanted and np.isfinite(reference).any() else None
            for rec in todo:
                m = rec.metrics or {}
                row: dict[str, Any] = {
                    "annotations": m.get("annotations"), "accuracy": m.get("heldout_accuracy"),
                    "spearman_loss": None, "best_of_n": None, "pairs": m.get("pairs"),
                    "best_of_n_regret": None, "best_of_n_normalized": None, "oracle_best": None,
                    "mean_chosen_reward": m.get("mean_chosen_reward"), "mean_rejected_reward": m.get("mean_rejected_reward"),
                    "checkpoint": 0,
                }
                row.update(_judge_costs(store, rec.iteration, m.get("annotations")))
                bill = sum((spent[i] for i in range(rec.iteration + 1) if i in spent), Usage())
                row.update(usd=bill.usd, generated_tokens=bill.generated_tokens)
                path = store.checkpoint_path(rec.iteration)
                if "heldout_spearman_loss" in m:
                    # The loop computed them on the same held-out candidates (core.metrics.heldout_metrics).
                    row.update(
                        spearman_loss=m["heldout_spearman_loss"], best_of_n=m.get("heldout_best_of_n"),
                        best_of_n_regret=m.get("heldout_best_of_n_regret"), best_of_n_normalized=m.get("heldout_best_of_n_normalized"),
                        oracle_best=m.get("heldout_oracle_best"), checkpoint=1,
                    )
                elif features is not None and path.exists() and len(cand):
                    model = EnsembleRewardModel(shape, seed=0)
                    model.load(path)
                    pred, _ = model.predict(features[torch.from_numpy(cand)])
                    bon = M.best_of_n_stats(pred, ref, groups)
                    row.update(
                        accuracy=M.pairwise_accuracy(pred, ref, groups), spearman_loss=M.spearman_loss(pred, ref, groups),
                        best_of_n=bon.mean, best_of_n_regret=bon.regret, best_of_n_normalized=bon.normalized,
                        oracle_best=bon.oracle_max, checkpoint=1,
                    )
                row["prompts_consumed"] = int(consumed[rec.iteration])
                if dataset is not None and rec.iteration in quality_at:
                    q = dataset.quality(rec.iteration, eval_set, seed)
                    row.update(rm_accuracy=q.rm_accuracy, rm_accuracy_hard=q.rm_accuracy_hard, label_accuracy=q.label_accuracy)
                else:
                    row.update(rm_accuracy=None, rm_accuracy_hard=None, label_accuracy=None)
                cache[str(rec.iteration)] = {k: _jsonable(v) for k, v in row.items()}
            tmp = cache_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "iterations": cache}, sort_keys=True), encoding="utf-8")
            tmp.replace(cache_path)
        if trained:
            # Their metrics are in the cache now: keep only the checkpoint a resume needs (the
            # newest). A 27-run bench at d 256 otherwise keeps ~12 GB of ENN states with Adam moments.
            for rec in trained[:-1]:
                store.checkpoint_path(rec.iteration).unlink(missing_ok=True)
    finally:
        store.close()
    rows = []
    for rec in trained:
        row = {"method": method, "seed": seed, "iteration": rec.iteration}
        row.update({k: (float("nan") if v is None else v) for k, v in cache[str(rec.iteration)].items()})
        rows.append(row)
    return rows


def hidden_reference(store: Any) -> tuple[np.ndarray, np.ndarray]:
    """(response_prompt [n], reference [n]) of a run: each response's prompt and its hidden
    reference reward (the pool's oracle; NaN for responses without one, e.g. live ones)."""
    _, response_prompt = store.responses()
    reference = np.full(len(response_prompt), np.nan)
    oracle = store.oracle()
    reference[: len(oracle)] = oracle
    return response_prompt, reference


class _DatasetView:
    """The run's exported dataset (in-prompt pairs) up to an iteration, evaluated like
    `activepref evaluate` does (activepref.bench.dataset_quality) on the run's held-out prompts."""

    def __init__(self, store: Any, response_prompt: np.ndarray, reference: np.ndarray) -> None:
        from activepref.bench.dataset_quality import standardized_features

        self.response_prompt, self.reference = response_prompt, reference
        self.features = standardized_features(np.asarray(store.features(), dtype=np.float32))
        keep = exported_preferences(store.preference_rows(), response_prompt)
        self.iteration = np.asarray([p.iteration for p in keep], dtype=np.int64)
        self.chosen = np.asarray([p.chosen_idx for p in keep], dtype=np.int64)
        self.rejected = np.asarray([p.rejected_idx for p in keep], dtype=np.int64)

    def quality(self, iteration: int, heldout: set[int], seed: int) -> Any:
        from activepref.bench.dataset_quality import evaluate_pairs

        upto = self.iteration <= iteration
        return evaluate_pairs(self.response_prompt, self.reference, self.features, self.chosen[upto], self.rejected[upto], sorted(heldout), seed)


def run_dataset_quality(run_dir: Path, seed: int, iteration: int | None = None) -> Any:
    """`activepref evaluate`'s numbers for a run's exported dataset up to ``iteration`` (default:
    the last trained one) on the run's held-out prompts; None without held-out prompts or a
    hidden reference reward."""
    from activepref.core.store import STATUS_TRAINED, RunStore

    store = RunStore.open_readonly(run_dir)
    try:
        trained = [r.iteration for r in store.iterations() if r.status == STATUS_TRAINED]
        eval_set = set(store.eval_prompts())
        response_prompt, reference = hidden_reference(store)
        if not trained or not eval_set or not np.isfinite(reference).any():
            return None
        view = _DatasetView(store, response_prompt, reference)
        return view.quality(trained[-1] if iteration is None else iteration, eval_set, seed)
    finally:
        store.close()


def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    v = float(v)
    return None if math.isnan(v) else v


def _judge_costs(store: Any, iteration: int, annotations: int | None) -> dict[str, Any]:
    """Judge requests and tokens up to and including ``iteration``. A replay judge records
    no call statistics: each annotation then counts as one call with zero tokens."""
    calls, tokens = store.stage_totals("judge", up_to_iteration=iteration)
    return {"judge_calls": int(calls) if calls else (annotations or 0), "judge_tokens": int(tokens)}


# -- the bench ------------------------------------------------------------------------------
def pool_judge_quality(run_dir: Path) -> list[Any] | None:
    """The pool's stored judge scores against its verifiable instructions, read from one of the
    bench's run stores (every run imports the same pool; no second read of the pool file and
    its features). None when the pool has no instructions or no scores."""
    from activepref.core.store import RunStore
    from activepref.ifeval.judge_quality import judge_agreement

    with RunStore.open_readonly(run_dir) as store:
        instructions = [p.meta.get("instructions") for p, _, _ in store.prompts()]
        if not any(instructions):
            return None
        responses, response_prompt = store.responses()
        scores = store.stored_scores()
    if not np.isfinite(scores).any():
        return None
    return judge_agreement(instructions, response_prompt, [r.text for r in responses], scores)


def run_bench(
    pool: str,
    methods: list[str],
    seeds: int | list[int],
    budget: int,
    out: Path,
    batch_size: int = 16,
    workers: int = 2,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[BenchEvent], None] | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    engine: EngineConfig | None = None,
) -> Path:
    """Run every method with every seed on ``pool`` and write the report; returns ``out``.

    pool: a pool file (.jsonl/.parquet) or ``builtin``. methods: registered acquisition
    methods (per-prompt ones and batch designs may be mixed). seeds: a count n (seeds
    0..n-1) or explicit seeds. budget: preference pairs acquired per run; each run does
    ceil(budget / batch_size) iterations of ``batch_size`` prompts (per-prompt methods:
    one pair per prompt; designs: ``design_budget = batch_size`` comparisons), so the last
    iteration may overshoot the budget by < batch_size pairs, and a pool with too few
    training prompts stops earlier. workers: runs executed at once, each in its own
    process with one torch thread. overrides: dotted config keys applied to every run
    (e.g. ``{"enn.steps": 20, "eval_fraction": 0.2}``); the keys the bench sets per run
    (pool, method, method_options, seed, batch_size, iterations, design_budget,
    keep_checkpoints) are refused. progress: called in this process with a
    :class:`BenchEvent` as each run ends. method_options: per-method options, e.g.
    ``{"delta_pair": {"strong": "gpt-4", "weak": "smollm2"}}``. engine: where the runs
    execute (default: the local engine's worker processes).

    Resumable: a run directory ``out/runs/<method>-seed<k>`` that already exists is
    resumed, or skipped when finished; its per-iteration metrics are cached beside it, so
    calling again on a finished bench does no run or model work and rewrites identical
    results. A run directory made with another configuration raises ConfigError.

    Writes ``out/results.csv`` (columns method, seed, iteration, annotations, accuracy,
    spearman_loss, best_of_n, then extras) and the report of
    :func:`activepref.bench.report.write_report`. Raises ActivePrefError naming the
    failed runs if any run fails (the others still finish).
    """
    from activepref.bench.report import write_report

    out = Path(out)
    specs = plan_runs(pool, methods, seeds, budget, out, batch_size, overrides, method_options)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[str] = []
    started, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    states: list[str] = []
    processes = max(1, min(workers, len(specs)))
    jobs = make_engine(engine).run_jobs(_run_in_worker, submission_order(specs), processes, initializer=_worker_init)
    for done, (spec, (state, rows, error)) in enumerate(jobs, start=1):
        states.append(state)
        if error:
            errors.append(f"{spec.name}: {error}")
        else:
            results[spec.name] = rows
        if progress is not None:
            progress(BenchEvent(spec.name, spec.method, spec.seed, state, done, len(specs), error))
    record_call(out, {
        "started": started_at, "wall_s": round(time.perf_counter() - started, 1), "workers": processes,
        "cpus": os.cpu_count(), **{state: states.count(state) for state in ("finished", "skipped", "failed")},
    })
    if errors:
        raise ActivePrefError(f"{len(errors)} of {len(specs)} bench runs failed: " + "; ".join(errors))
    rows = [row for s in specs for row in results[s.name]]  # method-major, seed, iteration
    write_results(rows, out / "results.csv")
    quality = pool_judge_quality(specs[0].run_dir)
    if quality is not None:
        write_judge_quality(quality, out / JUDGE_QUALITY_FILE)
    write_report(out, {(s.method, s.seed): s.run_dir for s in specs}, budget=budget, judge_quality=quality)
    return out
