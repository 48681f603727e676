"""One run of the active preference loop (DESIGN §2): select -> annotate -> train, per batch.

Orchestration only: the math lives in ``acquisition`` and ``enn``, the SQL in ``store``.
Each step commits before the next starts, and every random draw comes from
(run seed, iteration, stage), so a run killed anywhere and resumed makes exactly the
draws, calls and choices of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from activepref.acquisition import CandidateBatch, PairRule, Proposal, get_method, make_selector, resolve_pairs
from activepref.acquisition.comparisons import ComparisonSet, candidate_pairs
from activepref.backends import make_backend
from activepref.backends.base import BackendError, ChatBackend, ChatResult, SamplingParams
from activepref.bench.metrics import best_of_n_stats, ordered_pairs, spearman_loss
from activepref.cache import CachedBackend, RequestCache
from activepref.config import RunConfig
from activepref.data import Response, content_id
from activepref.enn import ENNShape, EnsembleRewardModel, ReplayBuffer, TrainConfig
from activepref.generation import plan_candidates
from activepref.judges import AuditedJudge, Judge, JudgeResources, JudgeScore, ScoreRequest, make_judge
from activepref.timings import StageTimes
from activepref.store import (
    STATUS_ANNOTATED,
    STATUS_EMBEDDED,
    STATUS_GENERATED,
    STATUS_SELECTED,
    STATUS_TRAINED,
    PreferenceRecord,
    RunStore,
)

if TYPE_CHECKING:
    from activepref.embedders import Embedder

log = logging.getLogger(__name__)

STAGE_SELECT, STAGE_RESOLVE, STAGE_TRAIN, STAGE_INIT, STAGE_GENERATE = 1, 2, 3, 4, 6  # 5: prompt split (runs.py)
STAGE_MONITOR = 7  # the held-out prompts the ENN is scored on every iteration
CRASH_ENV = "ACTIVEPREF_CRASH_AT"  # test hook: "<point>" or "<point>@<iteration>" -> SIGKILL self


def stage_rng(seed: int, iteration: int, stage: int) -> np.random.Generator:
    """The generator of one step; independent of everything that ran before it."""
    return np.random.default_rng(np.random.SeedSequence([seed, iteration, stage]))


def crash_point(name: str, iteration: int) -> None:
    """Kill this process with SIGKILL when the test hook names this point (crash tests)."""
    target = os.environ.get(CRASH_ENV)
    if target and target in (name, f"{name}@{iteration}"):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Progress:
    """Callbacks the CLI uses to draw progress; the library never prints."""

    on_iteration: Callable[[int, int, dict[str, Any]], None] = lambda it, total, metrics: None
    on_stage: Callable[[int, str], None] = lambda it, stage: None


@dataclass
class CandidateTable:
    """Candidates of every prompt as padded slots. slots: [P, m] response idx (-1 padding)."""

    slots: np.ndarray
    mask: np.ndarray

    @classmethod
    def build(cls, response_prompt: np.ndarray, n_prompts: int) -> CandidateTable:
        counts = np.bincount(response_prompt, minlength=n_prompts)
        m = int(counts.max()) if len(counts) else 0
        order = np.argsort(response_prompt, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot_of = np.arange(len(order)) - starts[response_prompt[order]]
        slots = np.full((n_prompts, m), -1, dtype=np.int64)
        slots[response_prompt[order], slot_of] = order
        return cls(slots, slots >= 0)


@dataclass
class LiveParts:
    """Collaborators of a live run: one backend per generation model (by label), the
    embedder and the request cache."""

    backends: dict[str, ChatBackend]
    embedder: Embedder
    cache: RequestCache
    judge_backend: ChatBackend | None = None  # default: built from the judge config


@dataclass
class RunContext:
    store: RunStore
    config: RunConfig
    judge: Judge
    progress: Progress = field(default_factory=Progress)
    live: LiveParts | None = None
    cache: RequestCache | None = None
    times: StageTimes = field(default_factory=StageTimes)
    prompt_matrix: np.ndarray | None = None  # [n_prompts, q] BAL-PM prompt features (prompt_feature_matrix), reset by refresh

    def __post_init__(self) -> None:
        self.selector = make_selector(self.config.method, self.config.method_options)
        self.uses_reward_model = get_method(self.config.method).uses_reward_model
        self.design = get_method(self.config.method).kind == "design"
        self.prompts = [p for p, _, _ in self.store.prompts()]
        self.refresh()

    def refresh_responses_only(self) -> None:
        self.responses, self.response_prompt = self.store.responses()

    def refresh(self) -> None:
        """(Re)load candidates and features from the store (after a live run embeds more)."""
        self.prompt_matrix = None
        self.responses, self.response_prompt = self.store.responses()
        self.table = CandidateTable.build(self.response_prompt, len(self.prompts))
        self.features = load_features(self.store, self.config.enn.standardize).to(self.config.enn.device)  # [n, d]
        self.models = np.asarray([r.model for r in self.responses], dtype=object)
        reference = self.store.oracle()  # pool runs: hidden oracle or stored score
        self.reward_reference = np.full(len(self.responses), np.nan)
        self.reward_reference[: len(reference)] = reference
        eval_prompts = monitored_prompts(self.store.eval_prompts(), self.config.eval_monitor_prompts, self.config.seed)
        self.eval_pairs = _eval_pairs(eval_prompts, self.response_prompt, self.reward_reference)
        held_out = np.zeros(len(self.prompts), dtype=bool)
        held_out[np.asarray(eval_prompts, dtype=np.int64)] = True
        # Held-out candidates with a known reference: what `evaluate` predicts each iteration.
        self.eval_rows = np.nonzero(held_out[self.response_prompt] & np.isfinite(self.reward_reference))[0]


def monitored_prompts(eval_prompts: list[int], limit: int | None, seed: int) -> list[int]:
    """The held-out prompts the ENN is scored on after every iteration: all of them, or a
    sample of ``limit`` drawn once from (seed, STAGE_MONITOR), sorted. The per-iteration
    forward over every held-out candidate (12,300 rows at 410 prompts x 30) cost as much as
    a third of the ENN's training; the dataset evaluator still uses every held-out prompt."""
    if limit is None or len(eval_prompts) <= limit:
        return list(eval_prompts)
    picked = stage_rng(seed, 0, STAGE_MONITOR).choice(len(eval_prompts), size=limit, replace=False)
    return sorted(int(eval_prompts[i]) for i in picked)


def load_features(store: RunStore, standardize: bool) -> torch.Tensor:
    """The store's features as a tensor, z-scored per dimension when asked.

    Unit-norm sentence embeddings have per-dimension scales ~1/sqrt(d); z-scoring puts the
    heads' inputs on the scale their PyTorch-style init expects. It uses no labels. The
    statistics are computed once (over the pool, or over the first iteration's candidates
    of a live run) and kept in the run directory, so features never shift under the ENN.
    """
    raw = np.array(store.features(), dtype=np.float32)  # [n, d]
    if standardize and raw.size:
        path = store.run_dir / "feature_stats.npz"
        if path.exists():
            stats = np.load(path)
            mean, std = stats["mean"], stats["std"]
        else:
            mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-6
            tmp = store.run_dir / "feature_stats.tmp.npz"
            np.savez(tmp, mean=mean, std=std)
            tmp.replace(path)
        raw = (raw - mean) / std
    return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))


def _eval_pairs(eval_prompts: list[int], response_prompt: np.ndarray, reward: np.ndarray) -> np.ndarray:
    """[n, 2] (better, worse) response pairs within held-out prompts, strictly ordered by the reference."""
    return ordered_pairs(response_prompt, reward, eval_prompts)


def heldout_accuracy(mean: np.ndarray, eval_pairs: np.ndarray) -> float:
    """Share of held-out pairs the ENN mean orders like the reference reward."""
    if len(eval_pairs) == 0:
        return float("nan")
    return float(np.mean(mean[eval_pairs[:, 0]] > mean[eval_pairs[:, 1]]))


def iteration_plan(store: RunStore, config: RunConfig) -> list[list[int]]:
    order = store.train_prompt_order()
    b = config.batch_size
    batches = [order[i : i + b] for i in range(0, len(order), b)]
    return batches[: config.iterations] if config.iterations else batches


def new_model(ctx: RunContext) -> EnsembleRewardModel:
    e = ctx.config.enn
    shape = ENNShape(ctx.features.shape[1], e.heads, e.hidden, e.layers)
    init_seed = int(stage_rng(ctx.config.seed, 0, STAGE_INIT).integers(2**62))
    return EnsembleRewardModel(shape, init_seed, zeta=e.zeta, lr=e.lr, device=e.device)


# -- steps ---------------------------------------------------------------------------------
def select_step(ctx: RunContext, it: int, prompt_idxs: list[int], model: EnsembleRewardModel, buffer: ReplayBuffer | None = None) -> None:
    if ctx.design:
        return design_select_step(ctx, it, prompt_idxs, model, buffer or ReplayBuffer())
    slots = ctx.table.slots[prompt_idxs]  # [b, m]
    mask = ctx.table.mask[prompt_idxs]
    mean = np.zeros(slots.shape)
    std = np.zeros(slots.shape)
    if ctx.uses_reward_model and mask.any():  # baselines never look at the reward model
        mu, sd = model.predict(ctx.features[torch.from_numpy(slots[mask])])
        mean[mask], std[mask] = mu, sd
    models = np.where(mask, ctx.models[np.maximum(slots, 0)], None)
    batch = CandidateBatch(mean, std, mask, ctx.config.beta, models)
    proposal = ctx.selector(batch, stage_rng(ctx.config.seed, it, STAGE_SELECT))
    crash_point("select.before_commit", it)
    ctx.store.commit_selection(it, prompt_idxs, _proposal_to_json(proposal))
    crash_point("select.after_commit", it)


def design_select_step(ctx: RunContext, it: int, prompt_idxs: list[int], model: EnsembleRewardModel, buffer: ReplayBuffer) -> None:
    """A batch design picks ``design_budget`` comparisons among all candidates of the batch
    (in-prompt, or cross-prompt with ``cross_prompt``), seeing Φ and the heads' rewards."""
    cfg = ctx.config
    slots = ctx.table.slots[prompt_idxs]  # [b, m]
    mask = ctx.table.mask[prompt_idxs]
    cand = slots[mask]  # [n] response idxs, prompt by prompt
    prompt_of = np.repeat(np.arange(len(prompt_idxs)), mask.sum(axis=1))  # [n] batch-local prompt
    rng = stage_rng(cfg.seed, it, STAGE_SELECT)
    pairs = candidate_pairs(prompt_of, cfg.cross_prompt, rng, cfg.cross_prompt_max_pairs)  # [M, 2]
    if len(pairs) == 0:
        ctx.store.commit_selection(it, prompt_idxs, {"kind": "design", "pairs": []})
        return
    inputs = get_method(cfg.method).inputs  # only what the design reads is built
    feats = ctx.features[torch.from_numpy(cand)]
    rewards = model.rewards(feats).double().numpy()  # [K, n]
    if "phi" in inputs:
        phi = model.last_layer_features(feats)  # [K, n, h]: each head's own Φ (see acquisition.designs)
    else:
        phi = np.empty((model.shape.heads, len(cand), 0))
    past_information = past_differences = None
    history = buffer.pairs()
    wants_information, wants_differences = "past_information" in inputs, "past_differences" in inputs
    if len(history) and (wants_information or wants_differences):
        past_information, past_differences = labelled_information(
            model, ctx.features[torch.from_numpy(history.reshape(-1))], information=wants_information
        )
        past_differences = past_differences if wants_differences else None
    prompt_parts: dict[str, Any] = {}
    if "prompt_features" in inputs:
        prompt_matrix = prompt_feature_matrix(ctx)  # [P, q]
        acquired = sorted({int(ctx.response_prompt[c]) for c in history[:, 0]}) if len(history) else []
        prompt_parts = {
            "prompt_features": prompt_matrix[prompt_idxs],
            "acquired_prompt_features": prompt_matrix[acquired] if acquired else None,
            "pool_prompt_features": prompt_matrix[unlabelled_prompts(ctx, it)],
        }
    comparisons = ComparisonSet(
        phi, rewards, prompt_of, pairs, past_information=past_information, past_differences=past_differences, **prompt_parts
    )
    budget = min(cfg.design_budget or len(prompt_idxs), len(pairs))
    chosen = np.asarray(ctx.selector(comparisons, budget, rng), dtype=np.int64)
    selected = [[int(cand[pairs[k, 0]]), int(cand[pairs[k, 1]])] for k in chosen]
    crash_point("select.before_commit", it)
    ctx.store.commit_selection(it, prompt_idxs, {"kind": "design", "pairs": selected})
    crash_point("select.after_commit", it)


def labelled_information(
    model: EnsembleRewardModel, pair_features: torch.Tensor, information: bool = True
) -> tuple[np.ndarray | None, np.ndarray]:
    """Per-head history of the labelled pairs for the designs.

    pair_features: [2H, d] rows (chosen, rejected) of each labelled pair in turn.
    Returns past_information [K, h, h] = Σ_j p̂_jk(1 - p̂_jk) ΔΦ_jk ΔΦ_jkᵀ (head k's Fisher
    information, p̂_jk from its own reward gap; None unless ``information``) and
    past_differences [K, H, h] ΔΦ_jk.
    """
    heads = model.shape.heads
    phi = model.last_layer_features(pair_features).reshape(heads, -1, 2, model.shape.hidden)
    diff = phi[:, :, 0] - phi[:, :, 1]  # [K, H, h]
    if not information:
        return None, diff
    r = model.rewards(pair_features).double().numpy().reshape(heads, -1, 2)  # [K, H, 2]
    p = 1.0 / (1.0 + np.exp(-(r[..., 0] - r[..., 1])))  # [K, H]
    information = np.einsum("khi,kh,khj->kij", diff, p * (1 - p), diff, optimize=True)  # [K, h, h]
    return information, diff


def prompt_feature_matrix(ctx: RunContext) -> np.ndarray:
    """[n_prompts, q] prompt features for BAL-PM, computed once per process: the pool's
    prompt-only embeddings (``prompt_features`` column) when it has them, else the mean
    feature of each prompt's candidates (a documented approximation: a (prompt, response)
    pool has no prompt-only embedding). Prompts without candidates get zeros."""
    if ctx.prompt_matrix is not None:
        return ctx.prompt_matrix
    own = ctx.store.prompt_features()
    if own is not None:
        out = np.asarray(own, dtype=np.float64)
    else:
        feats = ctx.features.double().cpu().numpy()  # [n, d]
        sums = np.zeros((len(ctx.prompts), feats.shape[1]))
        np.add.at(sums, ctx.response_prompt, feats)
        counts = np.bincount(ctx.response_prompt, minlength=len(ctx.prompts))
        out = sums / np.maximum(counts, 1)[:, None]
    ctx.prompt_matrix = out
    return out


def unlabelled_prompts(ctx: RunContext, it: int) -> list[int]:
    """Training prompts of the batches after iteration ``it`` that have candidates: the rest
    of the unlabelled pool (BAL-PM's neighbours for its kNN radius)."""
    order = ctx.store.train_prompt_order()
    later = order[(it + 1) * ctx.config.batch_size :]
    return [p for p in later if ctx.table.mask[p].any()] if later else []


def generate_step(ctx: RunContext, it: int, prompt_idxs: list[int]) -> None:
    """Ask every model of the pool for candidates (request cache first), commit them."""
    assert ctx.live is not None and ctx.config.generation is not None
    g = ctx.config.generation
    batch = [(p, ctx.prompts[p]) for p in prompt_idxs]
    rng = stage_rng(ctx.config.seed, it, STAGE_GENERATE)
    specs = []
    for m in g.models:  # per model, in config order, so adding a model leaves the others' draws alone
        params = SamplingParams(
            temperature=g.temperature if m.temperature is None else m.temperature,
            top_p=g.top_p if m.top_p is None else m.top_p,
            max_tokens=g.max_tokens if m.max_tokens is None else m.max_tokens,
        )
        specs += plan_candidates(batch, [m.label()] * g.samples_per_model, params, rng, g.principles)
    before = ctx.live.cache.stats.snapshot()
    results: dict[int, ChatResult | BackendError] = {}
    for m in g.models:
        label = m.label()
        mine = [k for k, s in enumerate(specs) if s.model == label]
        ctx.progress.on_stage(it, f"generate ({label}, {len(mine)} responses)")
        generator = CachedBackend(ctx.live.backends[label], ctx.live.cache, "generation")
        generator.complete([specs[k].request for k in mine], lambda j, r, mine=mine: results.__setitem__(mine[j], r))
    crash_point("generate.before_commit", it)
    new, failures = [], []
    for k, spec in enumerate(specs):
        res = results.get(k)
        prompt = ctx.prompts[spec.prompt_idx]
        if isinstance(res, ChatResult) and res.text.strip():
            rid = content_id(prompt.id, spec.model, spec.principle, res.text)
            p = spec.request.params
            meta = {
                "sampling": {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens, "seed": p.seed},
                "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
            }
            new.append((Response(rid, prompt.id, spec.model, res.text, spec.principle, spec.system_prompt), spec.prompt_idx, meta))
        else:
            failures.append((spec.prompt_idx, spec.model, str(res) if res is not None else "empty response"))
    ctx.store.commit_generation(it, prompt_idxs, new, failures, ctx.live.cache.stats.since(before, "generation"))


def embed_step(ctx: RunContext, it: int) -> None:
    """Features for every response that has none yet (cached by response in the store)."""
    assert ctx.live is not None
    ctx.refresh_responses_only()
    todo = ctx.store.unembedded()
    ctx.progress.on_stage(it, f"embed ({len(todo)} responses)")
    conversations = [
        [*ctx.prompts[int(ctx.response_prompt[r])].conversation(), {"role": "assistant", "content": ctx.responses[r].text}]
        for r in todo
    ]
    vectors = ctx.live.embedder.embed(conversations) if todo else np.empty((0, 0), dtype=np.float32)
    crash_point("embed.before_commit", it)
    ctx.store.commit_embedding(it, {r: vectors[n] for n, r in enumerate(todo)})


def _judge(ctx: RunContext, it: int, items: list[tuple[int, int]]) -> tuple[dict[int, float], dict[int, str]]:
    """Judge (prompt_idx, response_idx) items not judged before, committing each chunk as it
    returns; gives every stored score and failure of this judge."""
    judge = ctx.judge
    before = ctx.cache.stats.snapshot() if ctx.cache else None
    done = ctx.store.scores(judge.name)
    failed = ctx.store.failures(judge.name)
    needed, seen = [], set()
    for p, r in items:
        if r not in done and r not in failed and r not in seen:
            needed.append((p, r))
            seen.add(r)
    for start in range(0, len(needed), judge.batch_size):
        chunk = needed[start : start + judge.batch_size]
        results = judge.score_batch([ScoreRequest(r, ctx.prompts[p], ctx.responses[r]) for p, r in chunk])
        scored, errors = [], []
        for (_, r), res in zip(chunk, results):
            if isinstance(res, JudgeScore):
                details = {"aspects": res.aspects, "distributions": res.distributions} if res.aspects else None
                scored.append((r, res.value, details))
                done[r] = res.value
            else:
                errors.append((r, str(res)))
                failed[r] = str(res)
        stats = ctx.cache.stats.since(before, "judge") if ctx.cache and before is not None else None
        before = ctx.cache.stats.snapshot() if ctx.cache else None
        ctx.store.commit_judgements(it, judge.name, scored, errors, stats)
        if start == 0:
            crash_point("annotate.mid", it)
    return done, failed


def annotate_step(ctx: RunContext, it: int, record_prompts: list[int], proposal_json: dict[str, Any]) -> None:
    """Judge what the proposal asks for (skipping what is already stored), then commit pairs.

    Every judge result is committed as it arrives (a paid call is never repeated); the
    committed rows reach the replay buffer through the store (``RunStore.replay_pairs``).
    """
    if proposal_json.get("kind") == "design":
        _annotate_design(ctx, it, proposal_json)
        return
    proposal = _proposal_from_json(proposal_json)
    slots = ctx.table.slots[record_prompts]  # [b, m]
    rows, cols = np.nonzero(proposal.annotate)
    done, _ = _judge(ctx, it, [(record_prompts[i], int(slots[i, j])) for i, j in zip(rows, cols)])
    scores = np.full(slots.shape, np.nan)  # [b, m]
    for i, j in zip(rows, cols):
        scores[i, j] = done.get(int(slots[i, j]), np.nan)
    pairs = resolve_pairs(proposal, scores, stage_rng(ctx.config.seed, it, STAGE_RESOLVE))
    out: list[PreferenceRecord] = []
    for i, p in enumerate(record_prompts):
        if pairs.status[i] != "ok":
            continue
        c, rj = int(slots[i, pairs.chosen[i]]), int(slots[i, pairs.rejected[i]])
        sc, sr = done.get(c), done.get(rj)
        out.append(PreferenceRecord(it, p, c, rj, sc, sr, ctx.config.method))
    status_counts = {s: int((pairs.status == s).sum()) for s in ("ok", "tie", "failed", "skipped")}
    _commit_pairs(ctx, it, out, status_counts)


def _annotate_design(ctx: RunContext, it: int, proposal_json: dict[str, Any]) -> None:
    """A design's comparisons: judge both sides of each, the higher score is chosen."""
    pairs = [(int(a), int(b)) for a, b in proposal_json["pairs"]]
    items = [(int(ctx.response_prompt[r]), r) for pair in pairs for r in pair]
    done, _ = _judge(ctx, it, items)
    out: list[PreferenceRecord] = []
    counts = {"ok": 0, "tie": 0, "failed": 0, "skipped": 0}
    for k, (a, b) in enumerate(pairs):
        sa, sb = done.get(a), done.get(b)
        if sa is None or sb is None:
            counts["failed"] += 1
        elif sa == sb:
            counts["tie"] += 1
        else:
            c, r = (a, b) if sa > sb else (b, a)
            out.append(PreferenceRecord(it, int(ctx.response_prompt[c]), c, r, done[c], done[r], ctx.config.method, k))
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
        loss = model.fit(ctx.features, buffer, train_cfg, train_size, stage_rng(ctx.config.seed, it, STAGE_TRAIN), on_step=on_step)
    model.decay_zeta(e.zeta_decay)
    with ctx.times.measure("checkpoint"):
        model.save(ctx.store.checkpoint_path(it))
    crash_point("train.after_checkpoint", it)
    with ctx.times.measure("evaluate"):
        metrics = evaluate(ctx, model)
    metrics.update(train_loss=None if math.isnan(loss) else loss, zeta=model.zeta, buffer=len(buffer))
    with ctx.times.measure("store"):
        ctx.store.commit_training(it, metrics)
        ctx.store.prune_checkpoints(it - ctx.config.keep_checkpoints + 1)
    crash_point("train.after_commit", it)
    return metrics


def evaluate(ctx: RunContext, model: EnsembleRewardModel) -> dict[str, Any]:
    """Held-out metrics of the ENN and dataset statistics against the hidden reference reward.

    On the held-out candidates (one ENN forward): ``heldout_accuracy``, and the bench's
    model metrics ``heldout_spearman_loss``, ``heldout_best_of_n`` (+ ``_regret``,
    ``_normalized``, ``heldout_oracle_best``), so that `activepref bench` need not predict
    them again from the checkpoints."""
    metrics: dict[str, Any] = {}
    if len(ctx.eval_pairs) and len(ctx.eval_rows):
        rows = ctx.eval_rows
        mean = np.full(len(ctx.responses), np.nan)
        mu, _ = model.predict(ctx.features[torch.from_numpy(rows)])
        mean[rows] = mu
        metrics["heldout_accuracy"] = heldout_accuracy(mean, ctx.eval_pairs)
        ref, groups = ctx.reward_reference[rows], ctx.response_prompt[rows]
        bon = best_of_n_stats(mu, ref, groups)
        metrics.update(
            heldout_spearman_loss=spearman_loss(mu, ref, groups), heldout_best_of_n=bon.mean,
            heldout_best_of_n_regret=bon.regret, heldout_best_of_n_normalized=bon.normalized, heldout_oracle_best=bon.oracle_max,
        )
    prefs = ctx.store.preference_rows()
    metrics["pairs"] = len(prefs)
    metrics["annotations"] = ctx.store.count("scores") + ctx.store.count("judge_failures")
    chosen = ctx.reward_reference[[p.chosen_idx for p in prefs]]
    rejected = ctx.reward_reference[[p.rejected_idx for p in prefs]]
    known = np.isfinite(chosen) & np.isfinite(rejected)  # live runs have no hidden reference
    if known.any():
        metrics["mean_chosen_reward"] = float(chosen[known].mean())
        metrics["mean_rejected_reward"] = float(rejected[known].mean())
        metrics["pair_agreement"] = float(np.mean(chosen[known] > rejected[known]))
    judged = [(p.score_chosen, p.score_rejected) for p in prefs if p.score_chosen is not None and p.score_rejected is not None]
    if judged:
        metrics["mean_chosen_score"] = float(np.mean([c for c, _ in judged]))
        metrics["mean_rejected_score"] = float(np.mean([r for _, r in judged]))
    return metrics


# -- the run -------------------------------------------------------------------------------
def _proposal_to_json(p: Proposal) -> dict[str, Any]:
    return {"annotate": p.annotate.astype(int).tolist(), "pair": p.pair.tolist(), "rule": p.rule.value, "info": p.info}


def _proposal_from_json(d: dict[str, Any]) -> Proposal:
    return Proposal(np.asarray(d["annotate"], dtype=bool).reshape(len(d["pair"]), -1), np.asarray(d["pair"], dtype=np.int64).reshape(-1, 2), PairRule(d["rule"]), d.get("info", {}))


def build_context(store: RunStore, config: RunConfig, progress: Progress | None = None, live: LiveParts | None = None) -> RunContext:
    """Wire the run's collaborators from its config (tests may pass ``live`` parts directly)."""
    from activepref.embedders import embedder_from_config

    cache = live.cache if live else None
    if config.live and live is None:
        cache = RequestCache(config.cache_path)
        live = LiveParts(
            backends={m.label(): make_backend(m) for m in config.generation.models},  # type: ignore[union-attr]
            embedder=embedder_from_config(config.embedding),  # type: ignore[arg-type]
            cache=cache,
        )
    resources = JudgeResources(
        stored_score=store.pool_score,
        request_cache=lambda: cache if cache is not None else RequestCache(config.cache_path),
        backend=live.judge_backend if live else None,
    )
    judge: Judge = make_judge(config.judge, resources)
    cache = resources.opened_cache or cache
    if config.judge.audit_log:
        judge = AuditedJudge(judge, config.judge.audit_log)
    return RunContext(store, config, judge, progress or Progress(), live, cache)


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

    def current_model() -> EnsembleRewardModel:
        # Built lazily: a live run knows its feature dimension only after the first embedding.
        nonlocal model
        if model is None:
            model = new_model(ctx)
            if last_trained >= 0:
                model.load(store.checkpoint_path(last_trained))
        return model

    history = []
    for it, prompt_idxs in enumerate(plan):
        rec = store.iteration(it)
        if rec is not None and rec.status == STATUS_TRAINED:
            history.append(rec.metrics or {})
            ctx.progress.on_iteration(it, len(plan), rec.metrics or {})
            continue
        if rec is None and config.live:
            generate_step(ctx, it, prompt_idxs)
            rec = store.iteration(it)
        if rec is not None and rec.status == STATUS_GENERATED:
            embed_step(ctx, it)
            rec = store.iteration(it)
        if rec is None or rec.status == STATUS_EMBEDDED:
            if config.live:
                ctx.refresh()
            ctx.progress.on_stage(it, "select")
            with ctx.times.measure("select"):
                select_step(ctx, it, prompt_idxs, current_model(), buffer)
            rec = store.iteration(it)
        assert rec is not None
        if rec.status == STATUS_SELECTED:
            ctx.progress.on_stage(it, "annotate")
            with ctx.times.measure("annotate"):
                annotate_step(ctx, it, rec.prompt_idxs, rec.proposal or {})
            buffer.extend(store.replay_pairs(iteration=it))
            rec = store.iteration(it)
        assert rec is not None and rec.status == STATUS_ANNOTATED
        ctx.progress.on_stage(it, "train")
        metrics = train_step(ctx, it, current_model(), buffer)
        history.append(metrics)
        ctx.progress.on_iteration(it, len(plan), metrics)
    try:
        ctx.times.write(store.run_dir)
    except OSError as exc:  # informational only: never fail a finished run over it
        log.warning("could not write %s: %s", store.run_dir / "timings.json", exc)
    return history
