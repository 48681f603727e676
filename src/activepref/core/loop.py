"""One run of the active preference loop (DESIGN §2): select -> annotate -> train, per batch.

Orchestration only: each step takes the run's collaborators (:mod:`activepref.core.wiring`
builds them from the config), its candidate data (:mod:`activepref.core.candidates`) and the
store; the math lives in ``acquisition`` and ``model.enn``, the SQL in ``core.store``. Each
step commits before the next starts, and every random draw comes from (run seed, iteration,
stage) (:mod:`activepref.core.determinism`), so a run killed anywhere and resumed makes
exactly the draws, calls and choices of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from activepref.acquisition import CandidateBatch, PairRule, Proposal, resolve_pairs
from activepref.acquisition.comparisons import ComparisonSet, candidate_pairs, labelled_information
from activepref.backends.base import BackendError, ChatResult, SamplingParams
from activepref.config import RunConfig
from activepref.core.budget import BudgetExhausted, check
from activepref.core.cache import EMBEDDING_STAGE, CachedBackend
from activepref.core.candidates import CandidateSettings, RunData
from activepref.core.costs import Usage, usage_by_iteration
from activepref.core.determinism import Stage, crash_point, stage_rng
from activepref.core.estimate import batch_usage, pool_units, unit_costs
from activepref.core.generators import fixed_generators
from activepref.core.metrics import heldout_metrics
from activepref.core.model_level import check_fixed_generators, chosen_mask, model_select_step
from activepref.core.plan import iteration_plan
from activepref.core.prefetch import Prefetched, Prefetcher, conversations_digest, merge_generation_stats
from activepref.core.store import (
    STATUS_ANNOTATED,
    STATUS_EMBEDDED,
    STATUS_GENERATED,
    STATUS_SELECTED,
    STATUS_TRAINED,
    ComparisonRecord,
    GeneratedResponse,
    GenerationFailure,
    JudgeFailure,
    PreferenceRecord,
    RunStore,
    ScoreRecord,
)
from activepref.core.timings import StageTimes
from activepref.core.wiring import LiveParts, Progress, RunParts, build_parts, new_model
from activepref.errors import ActivePrefError, RunStateError, RunStopped
from activepref.judges import CompareRequest, Comparison, JudgeScore, ScoreRequest, judge_compares
from activepref.judges.routing import preference_uncertainty
from activepref.live.generation import plan_candidates
from activepref.model.enn import EnsembleRewardModel, ReplayBuffer, TrainConfig
from activepref.pools.records import Response, content_id

log = logging.getLogger(__name__)

__all__ = ["LiveParts", "Progress", "RunContext", "execute", "iteration_plan"]


@dataclass
class RunContext:
    """One run in progress: its store, settings, collaborators and candidate data."""

    store: RunStore
    config: RunConfig
    parts: RunParts
    data: RunData
    times: StageTimes = field(default_factory=StageTimes)
    prefetcher: Prefetcher | None = None  # set when the engine overlaps iterations
    prefetched: Prefetched | None = None  # the prefetch generate_step took, for embed_step
    pending_prompt_vectors: dict[int, np.ndarray] | None = None  # model level: embedded, not yet committed
    # [n] the ensemble's uncertainty about each (first, second) pair's preference, for a judge
    # that routes by it (set by ``execute``: it reads the current model)
    pair_uncertainty: Callable[[list[tuple[int, int]]], np.ndarray] | None = None


def fresh_model(ctx: RunContext) -> EnsembleRewardModel:
    init_seed = int(stage_rng(ctx.config.seed, 0, Stage.INIT).integers(2**62))
    return new_model(ctx.config, ctx.data.features.shape[1], init_seed)


# -- steps ---------------------------------------------------------------------------------
def select_step(ctx: RunContext, it: int, prompt_idxs: list[int], model: EnsembleRewardModel, buffer: ReplayBuffer | None = None) -> None:
    if ctx.parts.method.kind == "design":
        return design_select_step(ctx, it, prompt_idxs, model, buffer or ReplayBuffer())
    data = ctx.data
    slots = data.table.slots[prompt_idxs]  # [b, m]
    mask = data.table.mask[prompt_idxs]
    if ctx.parts.model_level is not None and not ctx.config.live:
        allowed = chosen_mask(ctx, it, prompt_idxs)  # pool runs: only the chosen models' candidates exist
        if allowed is not None:
            mask = mask & allowed
    mean = np.zeros(slots.shape)
    std = np.zeros(slots.shape)
    if ctx.parts.method.uses_reward_model and mask.any():  # baselines never look at the reward model
        with ctx.times.measure("enn_predict"):  # inside "select": the rest of it is the acquisition
            mu, sd = model.predict(data.features[torch.from_numpy(slots[mask])])
        mean[mask], std[mask] = mu, sd
    models = np.where(mask, data.models[np.maximum(slots, 0)], None)
    batch = CandidateBatch(mean, std, mask, ctx.config.beta, models)
    with ctx.times.measure("acquire"):  # the method's own choice, within "select"
        proposal = ctx.parts.selector(batch, stage_rng(ctx.config.seed, it, Stage.SELECT))
    crash_point("select.before_commit", it)
    ctx.store.commit_selection(it, prompt_idxs, _proposal_to_json(proposal))
    crash_point("select.after_commit", it)


def design_select_step(ctx: RunContext, it: int, prompt_idxs: list[int], model: EnsembleRewardModel, buffer: ReplayBuffer) -> None:
    """A batch design picks ``design_budget`` comparisons among all candidates of the batch
    (in-prompt, or cross-prompt with ``cross_prompt``), seeing Φ and the heads' rewards."""
    cfg, data = ctx.config, ctx.data
    slots = data.table.slots[prompt_idxs]  # [b, m]
    mask = data.table.mask[prompt_idxs]
    cand = slots[mask]  # [n] response idxs, prompt by prompt
    prompt_of = np.repeat(np.arange(len(prompt_idxs)), mask.sum(axis=1))  # [n] batch-local prompt
    rng = stage_rng(cfg.seed, it, Stage.SELECT)
    pairs = candidate_pairs(prompt_of, cfg.cross_prompt, rng, cfg.cross_prompt_max_pairs)  # [M, 2]
    if len(pairs) == 0:
        ctx.store.commit_selection(it, prompt_idxs, {"kind": "design", "pairs": []})
        return
    inputs = ctx.parts.method.inputs  # only what the design reads is built
    with ctx.times.measure("enn_predict"):  # inside "select": the rest of it is the acquisition
        feats = data.features[torch.from_numpy(cand)]
        rewards = model.rewards(feats).double().numpy()  # [K, n]
        if "phi" in inputs:
            phi = model.last_layer_features(feats)  # [K, n, h]: each head's own Φ (see acquisition.designs)
        else:
            phi = np.empty((model.shape.heads, len(cand), 0))
    past_information = past_differences = None
    history = buffer.pairs()
    wants_information, wants_differences = "past_information" in inputs, "past_differences" in inputs
    if len(history) and (wants_information or wants_differences):
        rows = data.features[torch.from_numpy(history.reshape(-1))]  # [2H, d] (chosen, rejected) per pair
        history_rewards = model.rewards(rows).double().numpy() if wants_information else np.empty(0)
        past_information, past_differences = labelled_information(
            model.last_layer_features(rows), history_rewards, information=wants_information
        )
        past_differences = past_differences if wants_differences else None
    prompt_parts: dict[str, Any] = {}
    if "prompt_features" in inputs:
        prompt_matrix = data.prompt_matrix()  # [P, q]
        acquired = sorted({int(data.response_prompt[c]) for c in history[:, 0]}) if len(history) else []
        prompt_parts = {
            "prompt_features": prompt_matrix[prompt_idxs],
            "acquired_prompt_features": prompt_matrix[acquired] if acquired else None,
            "pool_prompt_features": prompt_matrix[unlabelled_prompts(ctx, it)],
        }
    comparisons = ComparisonSet(
        phi, rewards, prompt_of, pairs, past_information=past_information, past_differences=past_differences, **prompt_parts
    )
    budget = min(cfg.design_budget or len(prompt_idxs), len(pairs))
    with ctx.times.measure("acquire"):  # the design's own choice, within "select"
        chosen = np.asarray(ctx.parts.selector(comparisons, budget, rng), dtype=np.int64)
    selected = [[int(cand[pairs[k, 0]]), int(cand[pairs[k, 1]])] for k in chosen]
    crash_point("select.before_commit", it)
    ctx.store.commit_selection(it, prompt_idxs, {"kind": "design", "pairs": selected})
    crash_point("select.after_commit", it)


def unlabelled_prompts(ctx: RunContext, it: int) -> list[int]:
    """Training prompts of the batches after iteration ``it`` that have candidates: the rest
    of the unlabelled pool (BAL-PM's neighbours for its kNN radius)."""
    order = ctx.store.train_prompt_order()
    later = order[(it + 1) * ctx.config.batch_size :]
    return [p for p in later if ctx.data.table.mask[p].any()] if later else []


def _generation_specs(ctx: RunContext, it: int, prompt_idxs: list[int]) -> list[Any]:
    """Every (prompt, model, sample) request of the iteration, with its principle: seeded by
    (run seed, iteration), so a prefetch and the step plan the same requests."""
    g = ctx.config.generation
    assert g is not None
    prompts = ctx.data.prompts
    batch = [(p, prompts[p]) for p in prompt_idxs]
    rng = stage_rng(ctx.config.seed, it, Stage.GENERATE)
    specs = []
    for m in g.models:  # per model, in config order, so adding a model leaves the others' draws alone
        params = SamplingParams(
            temperature=g.temperature if m.temperature is None else m.temperature,
            top_p=g.top_p if m.top_p is None else m.top_p,
            max_tokens=g.max_tokens if m.max_tokens is None else m.max_tokens,
        )
        specs += plan_candidates(batch, [m.label()] * g.samples_per_model, params, rng, g.principles)
    fixed = fixed_generators(ctx.config)  # planned for every model (same draws), asked only of those the method can pick
    return specs if fixed is None else [s for s in specs if s.model in fixed]


def _generate(ctx: RunContext, it: int, specs: list[Any], announce: bool = True) -> dict[int, ChatResult | BackendError]:
    """Ask every model for its share of ``specs`` through the request cache."""
    live, g = ctx.parts.live, ctx.config.generation
    assert live is not None and g is not None
    results: dict[int, ChatResult | BackendError] = {}
    for m in g.models:
        label = m.label()
        mine = [k for k, s in enumerate(specs) if s.model == label]
        if announce:
            ctx.parts.progress.on_stage(it, f"generate ({label}, {len(mine)} responses)")
        generator = CachedBackend(live.backends[label], live.cache, "generation")
        generator.complete([specs[k].request for k in mine], lambda j, r, mine=mine: results.__setitem__(mine[j], r))
    return results


def _generated(
    ctx: RunContext, specs: list[Any], results: dict[int, ChatResult | BackendError]
) -> tuple[list[GeneratedResponse], list[GenerationFailure]]:
    prompts = ctx.data.prompts
    new: list[GeneratedResponse] = []
    failures: list[GenerationFailure] = []
    for k, spec in enumerate(specs):
        res = results.get(k)
        prompt = prompts[spec.prompt_idx]
        if isinstance(res, ChatResult) and res.text.strip():
            rid = content_id(prompt.id, spec.model, spec.principle, res.text)
            p = spec.request.params
            meta = {
                "sampling": {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens, "seed": p.seed},
                "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
            }
            response = Response(rid, prompt.id, spec.model, res.text, spec.principle, spec.system_prompt)
            new.append(GeneratedResponse(response, spec.prompt_idx, meta))
        else:
            failures.append(GenerationFailure(spec.prompt_idx, spec.model, str(res) if res is not None else "empty response"))
    return new, failures


def _conversation(ctx: RunContext, prompt_idx: int, text: str) -> list[dict[str, str]]:
    return [*ctx.data.prompts[prompt_idx].conversation(), {"role": "assistant", "content": text}]


def generate_step(ctx: RunContext, it: int, prompt_idxs: list[int]) -> None:
    """Ask every model of the pool for candidates (request cache first), commit them."""
    live = ctx.parts.live
    assert live is not None
    prefetched = ctx.prefetcher.take(it) if ctx.prefetcher else None
    if prefetched is not None:
        ctx.prefetched = prefetched
    specs = _generation_specs(ctx, it, prompt_idxs)
    if ctx.parts.model_level is not None:  # planned for every model (same draws), asked of the chosen ones
        choices = ctx.store.model_choices(it)
        specs = [s for s in specs if s.model in choices.get(s.prompt_idx, ())]
    before = live.cache.stats.snapshot()
    results = _generate(ctx, it, specs)
    crash_point("generate.before_commit", it)
    new, failures = _generated(ctx, specs, results)
    stats = merge_generation_stats(prefetched.generation_stats if prefetched else None, live.cache.stats.since(before, "generation"))
    ctx.store.commit_generation(it, prompt_idxs, new, failures, stats)


def expect_run_dim(ctx: RunContext) -> int | None:
    """The run's feature length so far, told to the embedder (a paid one then refuses vectors of
    another length before they reach the request cache). Main thread only (it reads the store):
    ``execute`` calls it once before any prefetch starts, ``embed_step`` before each embedding."""
    have = ctx.store.feature_dim()
    expect = getattr(ctx.parts.live.embedder, "expect_dim", None) if ctx.parts.live else None
    if have is not None and expect is not None:
        expect(have)
    return have


def prefetch_iteration(ctx: RunContext, it: int, prompt_idxs: list[int]) -> Prefetched:
    """Iteration ``it``'s generation (into the request cache) and embedding (kept in memory),
    run in the background while the ensemble trains on ``it - 1``; commits nothing."""
    live = ctx.parts.live
    assert live is not None
    start = time.perf_counter()
    specs = _generation_specs(ctx, it, prompt_idxs)
    before = live.cache.stats.snapshot()
    results = _generate(ctx, it, specs, announce=False)
    stats = live.cache.stats.since(before, "generation")
    new, _ = _generated(ctx, specs, results)
    conversations = [_conversation(ctx, g.prompt_idx, g.response.text) for g in new]
    vectors = live.embedder.embed(conversations) if conversations else None
    digest = conversations_digest(conversations) if conversations else None
    return Prefetched(it, stats, digest, vectors, time.perf_counter() - start)


def embed_step(ctx: RunContext, it: int) -> None:
    """Features for every response that has none yet (cached by response in the store)."""
    live = ctx.parts.live
    assert live is not None
    data = ctx.data
    data.refresh_responses_only()
    todo = ctx.store.unembedded()
    ctx.parts.progress.on_stage(it, f"embed ({len(todo)} responses)")
    conversations = [_conversation(ctx, int(data.response_prompt[r]), data.responses[r].text) for r in todo]
    prefetched, ctx.prefetched = ctx.prefetched, None
    have = expect_run_dim(ctx)
    if (
        prefetched is not None and prefetched.iteration == it and prefetched.vectors is not None
        and prefetched.digest == conversations_digest(conversations)
    ):
        vectors = prefetched.vectors
    else:
        vectors = live.embedder.embed(conversations) if todo else np.empty((0, 0), dtype=np.float32)
    if todo and have is not None and vectors.shape[1] != have:
        raise RunStateError(f"embedding: the embedder now gives {vectors.shape[1]}-dimensional vectors, the run's features "
                            f"are {have}-dimensional (another model behind the same name or server?); embed with the "
                            "run's model again to resume it, or start a new run")
    usage = getattr(live.embedder, "usage", None)  # a paid embedder: what these vectors cost, for the bill
    stats = {EMBEDDING_STAGE: usage(conversations)} if usage is not None and todo else None
    crash_point("embed.before_commit", it)
    ctx.store.commit_embedding(it, {r: vectors[n] for n, r in enumerate(todo)}, stats)


def _call_stats(ctx: RunContext) -> Any:
    cache = ctx.parts.cache
    return cache.stats.snapshot() if cache else None


def _stats_since(ctx: RunContext, before: Any) -> dict[str, Any] | None:
    cache = ctx.parts.cache
    return cache.stats.since(before, "judge") if cache and before is not None else None


def _score(ctx: RunContext, it: int, items: list[tuple[int, int]]) -> dict[int, float]:
    """Score (prompt_idx, response_idx) items not judged before, committing each chunk as it
    returns; gives every stored score of this judge (failures are stored, not returned)."""
    judge, data = ctx.parts.judge, ctx.data
    before = _call_stats(ctx)
    done = ctx.store.scores(judge.name)
    failed = ctx.store.failures(judge.name)
    needed, seen = [], set()
    for p, r in items:
        if r not in done and r not in failed and r not in seen:
            needed.append((p, r))
            seen.add(r)
    for start in range(0, len(needed), judge.batch_size):
        chunk = needed[start : start + judge.batch_size]
        results = judge.score_batch([ScoreRequest(r, data.prompts[p], data.responses[r]) for p, r in chunk])  # type: ignore[union-attr]
        scored: list[ScoreRecord] = []
        errors: list[JudgeFailure] = []
        for (_, r), res in zip(chunk, results):
            if isinstance(res, JudgeScore):
                details = {"aspects": res.aspects, "distributions": res.distributions} if res.aspects else None
                scored.append(ScoreRecord(r, res.value, details))
                done[r] = res.value
            else:
                errors.append(JudgeFailure(r, str(res)))
                failed[r] = str(res)
        stats = _stats_since(ctx, before)
        before = _call_stats(ctx)
        ctx.store.commit_judgements(it, judge.name, scored, errors, stats)
        if start == 0:
            crash_point("annotate.mid", it)
    return done


def _compare(ctx: RunContext, it: int, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Compare (first, second) response pairs not compared before (in either order), committing
    each chunk as it returns; gives P(first better) of every pair asked that has a verdict."""
    judge, data = ctx.parts.judge, ctx.data
    before = _call_stats(ctx)
    stored = {key: rec.p_first for key, rec in ctx.store.comparisons(judge.name).items()}
    failed = ctx.store.comparison_failures(judge.name)

    def known(a: int, b: int) -> float | None:
        if (a, b) in stored:
            return stored[(a, b)]
        return 1.0 - stored[(b, a)] if (b, a) in stored else None

    needed: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for a, b in pairs:
        key = (a, b) if a < b else (b, a)
        if known(a, b) is None and (a, b) not in failed and (b, a) not in failed and key not in seen:
            needed.append((a, b))
            seen.add(key)
    for start in range(0, len(needed), judge.batch_size):
        chunk = needed[start : start + judge.batch_size]
        uncertainty: list[float | None] = [None] * len(chunk)
        if getattr(judge, "wants_uncertainty", False) and ctx.pair_uncertainty is not None and chunk:
            uncertainty = [float(u) for u in ctx.pair_uncertainty(chunk)]
        requests = [
            CompareRequest(a, b, data.prompts[int(data.response_prompt[a])], data.responses[a], data.responses[b], it, u)
            for (a, b), u in zip(chunk, uncertainty)
        ]
        results = judge.compare_batch(requests)  # type: ignore[union-attr]
        compared: list[ComparisonRecord] = []
        errors: list[tuple[int, int, str]] = []
        for (a, b), res in zip(chunk, results):
            if isinstance(res, Comparison):
                compared.append(ComparisonRecord(a, b, res.p_first, res.consistent))
                stored[(a, b)] = res.p_first
            else:
                errors.append((a, b, str(res)))
        stats = _stats_since(ctx, before)
        before = _call_stats(ctx)
        ctx.store.commit_comparisons(it, judge.name, compared, errors, stats)
        if start == 0:
            crash_point("annotate.mid", it)
    return {(a, b): p for a, b in pairs if (p := known(a, b)) is not None}


def annotate_step(ctx: RunContext, it: int, record_prompts: list[int], proposal_json: dict[str, Any]) -> None:
    """Judge what the proposal asks for (skipping what is already stored), then commit pairs.

    Every judge result is committed as it arrives (a paid call is never repeated); the
    committed rows reach the replay buffer through the store (``RunStore.replay_pairs``).
    A judge that compares pairs answers P(first better) for the proposed pair, which then
    stands in for the two scores (so ``resolve_pairs`` orders it the same way).
    """
    if proposal_json.get("kind") == "design":
        _annotate_design(ctx, it, proposal_json)
        return
    proposal = _proposal_from_json(proposal_json)
    slots = ctx.data.table.slots[record_prompts]  # [b, m]
    scores = np.full(slots.shape, np.nan)  # [b, m]
    if judge_compares(ctx.parts.judge) and proposal.rule is not PairRule.FIXED:
        if proposal.rule is not PairRule.ORDER_BY_SCORE:
            raise ActivePrefError(
                f"method {ctx.config.method!r} proposed rule {proposal.rule.value!r}, which needs per-response scores; judge "
                f"{ctx.parts.judge.name!r} compares pairs (a plugin method of this kind must register with needs_scores=True)"
            )
        rows = np.nonzero(proposal.pair[:, 0] >= 0)[0]
        asked = [(int(slots[i, proposal.pair[i, 0]]), int(slots[i, proposal.pair[i, 1]])) for i in rows]
        verdicts = _compare(ctx, it, asked)
        for i, pair in zip(rows, asked):
            if pair in verdicts:
                scores[i, proposal.pair[i, 0]], scores[i, proposal.pair[i, 1]] = verdicts[pair], 1.0 - verdicts[pair]
    else:
        rows, cols = np.nonzero(proposal.annotate)
        done = _score(ctx, it, [(record_prompts[i], int(slots[i, j])) for i, j in zip(rows, cols)])
        for i, j in zip(rows, cols):
            scores[i, j] = done.get(int(slots[i, j]), np.nan)
    pairs = resolve_pairs(proposal, scores, stage_rng(ctx.config.seed, it, Stage.RESOLVE))
    out: list[PreferenceRecord] = []
    for i, p in enumerate(record_prompts):
        if pairs.status[i] != "ok":
            continue
        sc, sr = scores[i, pairs.chosen[i]], scores[i, pairs.rejected[i]]
        c, rj = int(slots[i, pairs.chosen[i]]), int(slots[i, pairs.rejected[i]])
        out.append(PreferenceRecord(it, p, c, rj, None if np.isnan(sc) else float(sc), None if np.isnan(sr) else float(sr), ctx.config.method))
    status_counts = {s: int((pairs.status == s).sum()) for s in ("ok", "tie", "failed", "skipped")}
    _commit_pairs(ctx, it, out, status_counts)


def _annotate_design(ctx: RunContext, it: int, proposal_json: dict[str, Any]) -> None:
    """A design's comparisons: judge both sides of each (or compare them), the better is chosen."""
    pairs = [(int(a), int(b)) for a, b in proposal_json["pairs"]]
    response_prompt = ctx.data.response_prompt
    if judge_compares(ctx.parts.judge):
        verdicts = _compare(ctx, it, pairs)
        sides = {pair: (p, 1.0 - p) for pair, p in verdicts.items()}
    else:
        done = _score(ctx, it, [(int(response_prompt[r]), r) for pair in pairs for r in pair])
        sides = {(a, b): (done[a], done[b]) for a, b in pairs if a in done and b in done}
    out: list[PreferenceRecord] = []
    counts = {"ok": 0, "tie": 0, "failed": 0, "skipped": 0}
    for k, (a, b) in enumerate(pairs):
        if (a, b) not in sides:
            counts["failed"] += 1
            continue
        sa, sb = sides[(a, b)]
        if sa == sb:
            counts["tie"] += 1
        else:
            (c, sc), (r, sr) = ((a, sa), (b, sb)) if sa > sb else ((b, sb), (a, sa))
            out.append(PreferenceRecord(it, int(response_prompt[c]), c, r, sc, sr, ctx.config.method, k))
            counts["ok"] += 1
    _commit_pairs(ctx, it, out, counts)


def _commit_pairs(ctx: RunContext, it: int, prefs: list[PreferenceRecord], counts: dict[str, int]) -> None:
    crash_point("annotate.before_commit", it)
    ctx.store.commit_preferences(it, prefs, counts)
    crash_point("annotate.after_commit", it)


def train_step(ctx: RunContext, it: int, model: EnsembleRewardModel, buffer: ReplayBuffer) -> dict[str, Any]:
    e = ctx.config.enn
    train_cfg = TrainConfig(lr=e.lr, steps=e.steps, batch_size=e.batch_size, gamma=e.gamma, rho=e.rho)
    train_size = min(len(buffer), ctx.config.batch_size * e.rho)  # 001 App. B.2
    half = max(e.steps // 2, 1)

    def on_step(step: int) -> None:
        if step == half:
            crash_point("train.mid", it)

    with ctx.times.measure("enn_fit"):
        loss = model.fit(ctx.data.features, buffer, train_cfg, train_size, stage_rng(ctx.config.seed, it, Stage.TRAIN), on_step=on_step)
    model.decay_zeta(e.zeta_decay)
    with ctx.times.measure("checkpoint"):
        model.save(ctx.store.checkpoint_path(it))
    crash_point("train.after_checkpoint", it)
    with ctx.times.measure("evaluate"):
        metrics = heldout_metrics(ctx.store, ctx.data, model)
    metrics.update(train_loss=None if math.isnan(loss) else loss, zeta=model.zeta, buffer=len(buffer))
    with ctx.times.measure("store"):
        ctx.store.commit_training(it, metrics)
        ctx.store.prune_checkpoints(it - ctx.config.keep_checkpoints + 1)
    crash_point("train.after_commit", it)
    return metrics


def pool_generation_units(ctx: RunContext) -> list[Any] | None:
    """A pool run's per-model generation usage (from the responses' stored token counts)."""
    if ctx.config.live:
        return None
    rows = ctx.store.response_usage()
    if not rows:
        return None
    tokens = np.asarray([[p, c] for _, _, p, c in rows], dtype=np.int64)
    return pool_units(tokens, [m for _, m, _, _ in rows], len(ctx.data.prompts))


def budget_step(ctx: RunContext, it: int, prompt_idxs: list[int]) -> None:
    """Stop cleanly (BudgetExhausted) before iteration ``it`` if it would not fit the budget."""
    cfg = ctx.config
    if not cfg.budget.active():
        return
    usage = usage_by_iteration(ctx.store, cfg)
    finished = [usage[i] for i in range(it) if i in usage]
    estimate = Usage()
    if not finished and prompt_idxs:
        texts = [ctx.data.prompts[p].text for p in prompt_idxs]
        if cfg.live and cfg.generation is not None:
            candidates = cfg.generation.samples_per_model * len(cfg.generation.models)
        else:
            candidates = int(round(float(ctx.data.table.mask[prompt_idxs].sum(axis=1).mean())))
        units = unit_costs(cfg, candidates, len(texts), texts[0], [], pool_generation_units(ctx))
        estimate = batch_usage(cfg, units, texts)
    result = check(cfg.budget, it, finished, [], estimate)
    if result.over:
        raise BudgetExhausted(result.message())


# -- the run -------------------------------------------------------------------------------
def _proposal_to_json(p: Proposal) -> dict[str, Any]:
    return {"annotate": p.annotate.astype(int).tolist(), "pair": p.pair.tolist(), "rule": p.rule.value, "info": p.info}


def _proposal_from_json(d: dict[str, Any]) -> Proposal:
    return Proposal(np.asarray(d["annotate"], dtype=bool).reshape(len(d["pair"]), -1), np.asarray(d["pair"], dtype=np.int64).reshape(-1, 2), PairRule(d["rule"]), d.get("info", {}))


def build_context(store: RunStore, config: RunConfig, progress: Progress | None = None, live: LiveParts | None = None) -> RunContext:
    """The run's collaborators (wired from its config) and its candidate data."""
    parts = build_parts(store, config, progress, live)
    settings = CandidateSettings(config.enn.standardize, config.enn.device, config.eval_monitor_prompts, config.seed)
    ctx = RunContext(store, config, parts, RunData(store, settings))
    check_fixed_generators(ctx)
    if config.live and getattr(parts.engine, "prefetch", False) and parts.model_level is None:
        ctx.prefetcher = Prefetcher()
    return ctx


def load_checkpoint(ctx: RunContext, it: int) -> EnsembleRewardModel | str:
    """The ENN as iteration ``it`` left it (it = -1: the fresh initialisation), or why its
    checkpoint cannot be loaded."""
    model = fresh_model(ctx)
    if it < 0:
        return model
    try:
        model.load(ctx.store.checkpoint_path(it))
    except Exception as exc:  # missing, truncated, wrong shapes, not safetensors: any of them makes it unusable
        return f"{type(exc).__name__}: {exc}"
    return model


def recover_checkpoint(ctx: RunContext, last_trained: int) -> tuple[int, EnsembleRewardModel]:
    """The last trained iteration whose checkpoint loads, and the ENN loaded from it. An
    unreadable last checkpoint (a disk that filled, a truncated copy) is rebuilt: that
    iteration is trained again from the checkpoint before it, with the same seed and buffer,
    so the weights come out the same."""
    loaded = load_checkpoint(ctx, last_trained)
    if not isinstance(loaded, str):
        return last_trained, loaded
    path = ctx.store.checkpoint_path(last_trained)
    before = load_checkpoint(ctx, last_trained - 1)
    if isinstance(before, str):
        raise RunStateError(
            f"{path}: the ENN checkpoint cannot be read ({loaded}), nor the one before it ({before}); restore the "
            f"checkpoints from a backup, or start the run again in a new directory"
        )
    log.warning("%s cannot be read (%s): iteration %d is trained again from the checkpoint before it", path, loaded, last_trained + 1)
    ctx.store.reopen_training(last_trained)
    return last_trained - 1, before


def execute(store: RunStore, config: RunConfig, progress: Progress | None = None, live: LiveParts | None = None) -> list[dict[str, Any]]:
    """Run (or resume) every unfinished step. Returns per-iteration metrics."""
    started = time.perf_counter()
    ctx = build_context(store, config, progress, live)
    ctx.times.add("load", time.perf_counter() - started)
    plan = iteration_plan(store, config)
    # The buffer is always filled from the store in its recorded order (here and after each
    # iteration's commit), so a resumed process trains on the buffer of an uninterrupted one.
    buffer = ReplayBuffer()
    buffer.extend(store.replay_pairs())
    last_trained = max((rec.iteration for rec in store.iterations() if rec.status == STATUS_TRAINED), default=-1)
    model: EnsembleRewardModel | None = None
    if last_trained >= 0:  # loaded (and checked) once here, then trained on in memory
        last_trained, model = recover_checkpoint(ctx, last_trained)

    def current_model() -> EnsembleRewardModel:
        # Built lazily: a live run knows its feature dimension only after the first embedding.
        nonlocal model
        if model is None:
            model = fresh_model(ctx)
        return model

    def pair_uncertainty(pairs: list[tuple[int, int]]) -> np.ndarray:
        idx = torch.as_tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2))  # [n, 2]
        rewards = current_model().rewards(ctx.data.features[idx.reshape(-1)]).double().numpy()  # [K, 2n]
        return preference_uncertainty(rewards[:, 0::2], rewards[:, 1::2])  # [n]

    ctx.pair_uncertainty = pair_uncertainty
    if config.live:
        expect_run_dim(ctx)  # before a prefetch can embed: vectors of another length never reach the cache
    history: list[dict[str, Any]] = []
    if store.stopped() is not None:
        store.set_stopped(None)
    try:
        for it, prompt_idxs in enumerate(plan):
            rec = store.iteration(it)
            if rec is not None and rec.status == STATUS_TRAINED:
                history.append(rec.metrics or {})
                ctx.parts.progress.on_iteration(it, len(plan), rec.metrics or {})
                continue
            if rec is None:
                budget_step(ctx, it, prompt_idxs)
                level = ctx.parts.model_level
                if level is not None and not store.model_choices(it):
                    ctx.parts.progress.on_stage(it, "choose models")
                    with ctx.times.measure("model_select"):
                        model_select_step(ctx, it, prompt_idxs, level)
            if rec is None and config.live:
                generate_step(ctx, it, prompt_idxs)
                rec = store.iteration(it)
            if rec is not None and rec.status == STATUS_GENERATED:
                embed_step(ctx, it)
                rec = store.iteration(it)
            if rec is None or rec.status == STATUS_EMBEDDED:
                if config.live:
                    ctx.data.refresh()
                ctx.parts.progress.on_stage(it, "select")
                with ctx.times.measure("select"):
                    select_step(ctx, it, prompt_idxs, current_model(), buffer)
                rec = store.iteration(it)
            assert rec is not None
            if rec.status == STATUS_SELECTED:
                ctx.parts.progress.on_stage(it, "annotate")
                with ctx.times.measure("annotate"):
                    annotate_step(ctx, it, rec.prompt_idxs, rec.proposal or {})
                buffer.extend(store.replay_pairs(iteration=it))
                rec = store.iteration(it)
            assert rec is not None and rec.status == STATUS_ANNOTATED
            if ctx.prefetcher is not None and it + 1 < len(plan) and store.iteration(it + 1) is None:
                ctx.prefetcher.start(it + 1, lambda nxt=it + 1: prefetch_iteration(ctx, nxt, plan[nxt]))
            ctx.parts.progress.on_stage(it, "train")
            metrics = train_step(ctx, it, current_model(), buffer)
            history.append(metrics)
            ctx.parts.progress.on_iteration(it, len(plan), metrics)
    except RunStopped as exc:  # a clean stop (budget, judge file): what is done stays committed
        store.set_stopped(exc.reason, str(exc))
        if ctx.prefetcher is not None:
            ctx.prefetcher.take(-1)
        raise
    if ctx.prefetcher is not None:
        ctx.prefetcher.take(-1)  # join one still in flight (none in a run that got this far), drop it
        ctx.times.add("prefetch", ctx.prefetcher.worked_s)
        ctx.times.add("prefetch_wait", ctx.prefetcher.waited_s)
    try:
        ctx.times.write(store.run_dir)
    except OSError as exc:  # informational only: never fail a finished run over it
        log.warning("could not write %s: %s", store.run_dir / "timings.json", exc)
    return history
