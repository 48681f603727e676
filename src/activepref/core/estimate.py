"""What a run will cost, before anything is called (``activepref estimate``), and the
projection a budget uses before a run's first iteration.

Per iteration of ``b`` prompts with ``m`` candidates each:

- generation (live runs): ``b x m`` calls; input tokens = the prompt and a system prompt
  (their mean over the principles) per call; output tokens = ``max_tokens`` per call (an
  upper bound: answers that stop early cost less);
- judge: the method is run once on random rewards to count what it asks the judge for per
  prompt (responses to score, or pairs to compare; a batch design asks ``design_budget``
  comparisons); each item costs the calls the judge kind declares (``requests_for``: Likert
  one per aspect, pairwise one or two), with input tokens from those requests' messages (the
  responses at ``max_tokens`` length) and their ``max_tokens`` as output. Retries are not
  counted.

Tokens are counted without the model's tokenizer: 4 characters per token plus 4 per message
(close for English text with BPE tokenizers, to within ~20%); the server's counts replace
the estimate as soon as a run has finished an iteration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from activepref.core.costs import (
    Usage,
    embedding_price,
    generation_price,
    judge_price,
    paid_embedding,
    token_cost,
    unpriced,
)

if TYPE_CHECKING:
    from activepref.backends.base import ChatRequest
    from activepref.config import RunConfig

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
ANNOTATION_PROBES = 3  # random batches the method is asked to propose for (their mean)


def approx_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def request_tokens(request: ChatRequest) -> tuple[int, int]:
    """(input, at most output) tokens of one request, approximately."""
    return sum(TOKENS_PER_MESSAGE + approx_tokens(c) for _, c in request.messages), request.params.max_tokens


@dataclass
class Estimate:
    """A run's expected calls, tokens and dollars (``per_iteration``: one full batch)."""

    iterations: int
    prompts_per_iteration: int
    candidates_per_prompt: float
    judge_items_per_iteration: float
    per_iteration: Usage
    total: Usage
    notes: list[str] = field(default_factory=list)
    judge_mode: str = "online"

    def to_json(self) -> dict[str, Any]:
        t = self.total
        return {
            "judge_calls": t.judge_calls, "generation_calls": t.generation_calls, "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens, "usd": round(t.usd, 6), "usd_generation": round(t.usd_generation, 6),
            "usd_judge": round(t.usd_judge, 6), "generated_tokens": t.generated_tokens, "iterations": self.iterations,
            "prompts_per_iteration": self.prompts_per_iteration, "candidates_per_prompt": self.candidates_per_prompt,
            "judge_items_per_iteration": self.judge_items_per_iteration, "judge_mode": self.judge_mode,
            "embedding_calls": t.embedding_calls, "usd_embedding": round(t.usd_embedding, 6),
        }


def judge_items_per_prompt(config: RunConfig, candidates: int, prompts: int) -> float:
    """Items the method hands the judge per prompt: responses to score (scoring judge) or pairs
    to compare (comparing judge), from the method's own proposals on random rewards."""
    from activepref.acquisition import CandidateBatch, get_method, make_selector
    from activepref.judges import JUDGES

    compares = JUDGES.get(config.judge.kind).compares
    method = get_method(config.method)
    if method.kind == "design":
        budget = config.design_budget or prompts
        return (budget if compares else 2 * budget) / prompts
    if candidates < 2:
        return 0.0
    selector = make_selector(config.method, config.method_options)
    rng = np.random.default_rng(0)
    counts = []
    shape = (prompts, candidates)
    models = np.array([[f"m{j}" for j in range(candidates)]] * prompts, dtype=object)
    for _ in range(ANNOTATION_PROBES):
        batch = CandidateBatch(rng.normal(size=shape), rng.uniform(0.1, 1.0, size=shape), np.ones(shape, bool), config.beta, models)
        proposal = selector(batch, rng)
        counts.append(float((proposal.pair[:, 0] >= 0).sum()) if compares else float(proposal.annotate.sum()))
    return float(np.mean(counts)) / prompts


@dataclass(frozen=True)
class GenerationUnit:
    """One generation model's share per prompt: calls, output tokens per call and, for a pool
    (whose usage is known), input tokens per call (None: the prompt and a system prompt)."""

    model: str
    calls_per_prompt: float
    output_tokens: float
    input_tokens: float | None = None


@dataclass(frozen=True)
class UnitCosts:
    """Per-prompt figures of a config, from which any batch's usage follows: generation calls,
    tokens of a system prompt, output tokens per call; judge items per prompt, calls per item,
    input tokens per judge call beyond the prompt's, output tokens per judge call."""

    generation: list[GenerationUnit]
    system_tokens: float
    judge_items_per_prompt: float
    judge_calls_per_item: float
    judge_overhead_tokens: float
    judge_output_tokens: float


def unit_costs(
    config: RunConfig, candidates: int, prompts: int, sample_prompt: str, notes: list[str],
    pool_generation: list[GenerationUnit] | None = None,
) -> UnitCosts:
    """Per-prompt figures of ``config``; ``candidates`` per prompt before a model-level choice;
    ``pool_generation``: a pool's per-model usage (pool runs)."""
    from activepref.core.generators import fixed_generators
    from activepref.core.model_level import split_methods
    from activepref.judges import JUDGES
    from activepref.live.generation import SYSTEM_PROMPTS

    level, response_method, response_options = split_methods(config)
    fixed = fixed_generators(config)  # delta_pair: only its two models generate
    g = config.generation
    generation: list[GenerationUnit] = []
    system = 0.0
    response_len = 256
    n_models = len(g.models) if (g is not None and config.live) else len(pool_generation or []) or 1
    share = 1.0
    if level is not None:
        k = int(dict(config.method_options).get("k", level.method.options()["k"]))
        share = min(1.0, k / n_models)
    if g is not None and config.live:
        system = float(np.mean([TOKENS_PER_MESSAGE + approx_tokens(s) for p in g.principles for s in SYSTEM_PROMPTS[p]]))
        generation = [GenerationUnit(m.label(), g.samples_per_model * share, m.max_tokens or g.max_tokens) for m in g.models
                      if fixed is None or m.label() in fixed]
        response_len = int(max((u.output_tokens for u in generation), default=g.max_tokens))
    elif pool_generation:
        generation = [GenerationUnit(u.model, u.calls_per_prompt * share, u.output_tokens, u.input_tokens) for u in pool_generation
                      if fixed is None or u.model in fixed]
        response_len = int(np.mean([u.output_tokens for u in pool_generation]))
    entry = JUDGES.get(config.judge.kind)
    per_item, overhead, out = 1.0, 0.0, 0.0
    if entry.requests_for is not None:
        response = "word " * response_len  # 5 characters a word: about response_len tokens
        reqs = entry.requests_for(config.judge, sample_prompt, [response, response] if entry.compares else [response])
        tokens = [request_tokens(r) for r in reqs]
        per_item = float(len(reqs))  # 0 for a judge that calls no model (human)
        if tokens:
            overhead = float(np.mean([t[0] for t in tokens])) - approx_tokens(sample_prompt)
            out = float(np.mean([t[1] for t in tokens]))
    elif entry.needs_model:
        notes.append(f"judge kind {config.judge.kind!r} declares no requests_for: one call per item, tokens not counted")
    response_config = config.model_copy(update={"method": response_method, "method_options": response_options})
    seen = max(2, int(round(candidates * share))) if level is not None else candidates
    items = judge_items_per_prompt(response_config, seen, prompts)
    return UnitCosts(generation, system, items, per_item, overhead, out)


def batch_usage(config: RunConfig, units: UnitCosts, prompt_texts: Sequence[str]) -> Usage:
    """The expected Usage of one iteration over ``prompt_texts``."""
    b = len(prompt_texts)
    prompt_tokens = sum(TOKENS_PER_MESSAGE + approx_tokens(t) for t in prompt_texts)
    g_calls = g_in = g_out = 0
    g_usd = 0.0
    fc = fi = fo = 0.0
    for u in units.generation:  # expected (fractional) counts, rounded once for the batch
        calls = b * u.calls_per_prompt
        tin = u.calls_per_prompt * (prompt_tokens + b * units.system_tokens) if u.input_tokens is None else calls * u.input_tokens
        tout = calls * u.output_tokens
        fc, fi, fo = fc + calls, fi + tin, fo + tout
        g_usd += _priced(config, u.model, calls, tin, tout)
    g_calls, g_in, g_out = int(round(fc)), int(round(fi)), int(round(fo))
    calls_per_prompt = units.judge_items_per_prompt * units.judge_calls_per_item
    j_calls = int(round(b * calls_per_prompt))
    j_in = int(round(calls_per_prompt * (prompt_tokens + b * units.judge_overhead_tokens))) if units.judge_output_tokens else 0
    j_out = int(round(j_calls * units.judge_output_tokens))
    j_usd = token_cost(judge_price(config), j_calls, j_in, j_out, config.judge.mode != "online")
    e_calls = e_in = 0
    e_usd = 0.0
    if paid_embedding(config) and config.live:  # a vector per response: its prompt and its text, no system prompt
        e_calls = g_calls
        e_in = int(round(sum(u.calls_per_prompt * (prompt_tokens + b * u.output_tokens) for u in units.generation)))
        e_usd = token_cost(embedding_price(config), e_calls, e_in, 0)
    return Usage(g_calls, g_in, g_out, j_calls, j_in, j_out, g_usd, j_usd, e_calls, e_in, e_usd)


def _priced(config: RunConfig, model: str, calls: float, tin: float, tout: float) -> float:
    p = generation_price(config, model)
    if p is None:
        return 0.0
    return p.per_call * calls + (p.input_per_mtok * tin + p.output_per_mtok * tout) / 1_000_000


def pool_units(tokens: np.ndarray, models: Sequence[str], n_prompts: int) -> list[GenerationUnit]:
    """Per-model generation units of a pool from its [n, 2] (prompt, completion) token counts."""
    by: dict[str, list[int]] = {}
    for n, m in enumerate(models):
        by.setdefault(m, []).append(n)
    out = []
    for m, rows in by.items():
        t = tokens[rows]
        known_in, known_out = t[:, 0][t[:, 0] >= 0], t[:, 1][t[:, 1] >= 0]
        out.append(GenerationUnit(
            m, len(rows) / n_prompts, float(known_out.mean()) if len(known_out) else 0.0,
            float(known_in.mean()) if len(known_in) else 0.0,
        ))
    return out


def estimate_run(config: RunConfig) -> Estimate:
    """Expected calls, tokens and dollars of the whole run ``config`` describes (loads the
    prompts file or the pool; calls nothing)."""
    from activepref.core.generators import check_generators_exist
    from activepref.core.runs import split_prompts
    from activepref.pools.reader import read_prompts
    from activepref.pools.sources import load_pool

    notes: list[str] = []
    pool_generation: list[GenerationUnit] | None = None
    if config.live:
        assert config.prompts is not None and config.generation is not None
        prompts = read_prompts(config.prompts)
        texts = [p.text for p in prompts]
        candidates = config.generation.samples_per_model * len(config.generation.models)
        _, order = split_prompts(len(prompts), 0.0, config.seed)
        check_generators_exist(config, [m.label() for m in config.generation.models])
    else:
        pool = load_pool(config.pool or "builtin", config.features)
        texts = [p.text for p in pool.prompts]
        counts = np.bincount(pool.prompt_index, minlength=len(texts)) if len(pool.prompt_index) else np.zeros(len(texts), int)
        candidates = int(round(float(np.mean(counts[counts > 0])))) if (counts > 0).any() else 0
        _, order = split_prompts(len(texts), config.eval_fraction, config.seed)
        if pool.tokens is not None:
            pool_generation = pool_units(pool.tokens, [r.model for r in pool.responses], len(texts))
            notes.append("a pool run: generation is what the pool's prompt_tokens/completion_tokens say it cost")
        else:
            notes.append("a pool run without token columns: its candidates exist already, so generation is not counted")
    b = config.batch_size
    batches = [order[i : i + b] for i in range(0, len(order), b)]
    if config.iterations:
        batches = batches[: config.iterations]
    if not batches:
        return Estimate(0, 0, float(candidates), 0.0, Usage(), Usage(), notes, config.judge.mode)
    first = [texts[int(p)] for p in batches[0]]
    units = unit_costs(config, candidates, len(first), first[0], notes, pool_generation)
    total = Usage()
    for batch in batches:
        total = total + batch_usage(config, units, [texts[int(p)] for p in batch])
    missing = unpriced(config)
    if missing:
        notes.append(f"no price for {', '.join(missing)} (add them under `prices:`): counted as free")
    per_iteration = batch_usage(config, units, first)
    return Estimate(len(batches), len(first), float(candidates), units.judge_items_per_prompt * len(first), per_iteration, total,
                    notes, config.judge.mode)
