"""What a run's calls cost: usage per iteration and stage, priced with the config's table.

Usage counts every call the dataset rests on, whether this process paid for it or the
request cache had it (a cache hit is counted with the tokens its answer carried). So a run's
bill, and where a budget stops it, do not depend on what the cache held or on where the run
was killed and resumed: a re-run of a finished config shows the same bill and makes no call.
What the cache actually saved is in the stage counters (``cache_hits``).

- generation: from the stored responses of the iteration's prompts (their call usage is in
  each response's meta: live calls, or a pool's ``prompt_tokens``/``completion_tokens``
  columns, what generating the pool cost), priced per generation model; with a model-level
  method only the chosen models' responses count;
- embedding (a paid embedder, the ``openai`` kind): the vectors each iteration's responses
  needed and the input tokens they cost (each text's share of its request's reported usage),
  priced by the embedding model's id;
- judge: a model judge's calls and tokens from the run's call statistics; a judge without a
  model (replay, verifier, a human) counts one call per response scored or pair compared.
  In ``mode: batch`` or ``mode: file`` the judge's price takes its ``batch_discount``.

Prices (``prices:`` in the config) are looked up by the model's name, then its model id; a
model without a price costs 0 and is listed in ``unpriced``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from activepref.core.cache import EMBEDDING_STAGE

if TYPE_CHECKING:
    from activepref.config import PriceConfig, RunConfig
    from activepref.core.store import RunStore

MTOK = 1_000_000


@dataclass(frozen=True)
class Usage:
    """Calls, tokens and dollars of one iteration (or of several, added up)."""

    generation_calls: int = 0
    generation_input_tokens: int = 0
    generated_tokens: int = 0
    judge_calls: int = 0
    judge_input_tokens: int = 0
    judge_output_tokens: int = 0
    usd_generation: float = 0.0
    usd_judge: float = 0.0
    embedding_calls: int = 0  # vectors from a paid embedder (one text each), cache hits included
    embedding_input_tokens: int = 0
    usd_embedding: float = 0.0

    @property
    def usd(self) -> float:
        return self.usd_generation + self.usd_judge + self.usd_embedding

    @property
    def input_tokens(self) -> int:
        return self.generation_input_tokens + self.judge_input_tokens + self.embedding_input_tokens

    @property
    def output_tokens(self) -> int:
        return self.generated_tokens + self.judge_output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def elementwise_max(self, other: Usage) -> Usage:
        return Usage(*(max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "usd": self.usd, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


def price_of(config: RunConfig, *names: str | None) -> PriceConfig | None:
    """The first price-table entry among ``names`` (a model's name, then its model id)."""
    for name in names:
        if name and name in config.prices:
            return config.prices[name]
    return None


def token_cost(price: PriceConfig | None, calls: int, input_tokens: int, output_tokens: int, batch: bool = False) -> float:
    """USD of ``calls`` calls with these token totals (``batch``: at the batch discount)."""
    if price is None:
        return 0.0
    usd = price.per_call * calls + (price.input_per_mtok * input_tokens + price.output_per_mtok * output_tokens) / MTOK
    return usd * (1.0 - price.batch_discount) if batch else usd


def judge_price(config: RunConfig) -> PriceConfig | None:
    j = config.judge
    return price_of(config, j.model.label() if j.model else None, j.model.model if j.model else None, j.kind)


def generation_price(config: RunConfig, label: str) -> PriceConfig | None:
    g = config.generation
    model = next((m for m in g.models if m.label() == label), None) if g else None
    return price_of(config, label, model.model if model else None)


def paid_embedding(config: RunConfig) -> bool:
    """Whether the run's embedder calls a paid service (the ``openai`` kind, or a plugin's)."""
    from activepref.live.embedders import EMBEDDERS

    return config.embedding is not None and EMBEDDERS.get(config.embedding.backend).paid


def embedding_price(config: RunConfig) -> PriceConfig | None:
    """The price of a paid embedder's model (by its model id); input tokens and per-vector calls."""
    return price_of(config, config.embedding.model) if paid_embedding(config) and config.embedding else None


def unpriced(config: RunConfig) -> list[str]:
    """Models of the run that the price table does not list."""
    out = []
    if config.generation:
        out += [m.label() for m in config.generation.models if generation_price(config, m.label()) is None]
    if config.judge.model is not None and judge_price(config) is None:
        out.append(config.judge.model.label())
    if paid_embedding(config) and embedding_price(config) is None and config.embedding:
        out.append(config.embedding.model)
    return out


def usage_by_iteration(store: RunStore, config: RunConfig) -> dict[int, Usage]:
    """iteration -> Usage, for every iteration that has started."""
    from activepref.core.generators import fixed_generators

    prompt_iteration: dict[int, int] = {}
    iterations = store.iterations()
    for rec in iterations:
        for p in rec.prompt_idxs:
            prompt_iteration[p] = rec.iteration
    # generation, per (iteration, model): calls, prompt tokens, completion tokens
    gen: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    chosen = store.model_choices()  # model-level runs: only the chosen models generated
    fixed = fixed_generators(config)  # a method that only ever picks a few models (delta_pair): only they generate
    for p_idx, model, prompt_tokens, completion_tokens in store.response_usage():
        it = prompt_iteration.get(p_idx)
        if it is None or (p_idx in chosen and model not in chosen[p_idx]) or (fixed is not None and model not in fixed):
            continue
        row = gen[(it, model)]
        row[0] += 1
        row[1] += max(prompt_tokens, 0)
        row[2] += max(completion_tokens, 0)
    judge_stats = store.call_stats_by_iteration("judge")
    items = store.judged_items_by_iteration() if not judge_stats else {}
    batch = config.judge.mode != "online"
    jprice = judge_price(config)
    embed_stats = store.call_stats_by_iteration(EMBEDDING_STAGE)
    eprice = embedding_price(config)
    out: dict[int, Usage] = {}
    for rec in iterations:
        it = rec.iteration
        g_calls = g_in = g_out = 0
        g_usd = 0.0
        for (git, model), (calls, tin, tout) in gen.items():
            if git == it:
                g_calls, g_in, g_out = g_calls + calls, g_in + tin, g_out + tout
                g_usd += token_cost(generation_price(config, model), calls, tin, tout)
        s = judge_stats.get(it)
        if s is not None:
            j_calls = s["calls"] + s["cache_hits"]
            j_in = s["prompt_tokens"] + s["hit_prompt_tokens"]
            j_out = s["completion_tokens"] + s["hit_completion_tokens"]
        else:
            j_calls, j_in, j_out = items.get(it, 0), 0, 0
        e = embed_stats.get(it) or {}
        e_calls = e.get("calls", 0) + e.get("cache_hits", 0)
        e_in = e.get("prompt_tokens", 0) + e.get("hit_prompt_tokens", 0)
        out[it] = Usage(g_calls, g_in, g_out, j_calls, j_in, j_out, g_usd, token_cost(jprice, j_calls, j_in, j_out, batch),
                        e_calls, e_in, token_cost(eprice, e_calls, e_in, 0))
    return out


def run_usage(store: RunStore, config: RunConfig) -> Usage:
    total = Usage()
    for u in usage_by_iteration(store, config).values():
        total = total + u
    return total


def bill(store: RunStore, config: RunConfig) -> dict[str, Any]:
    """The run's bill (JSON-able): totals, per stage, per preference pair, the judge's mode and
    what the judge would have cost online (or in batch)."""
    total = run_usage(store, config)
    pairs = store.count("preferences")
    jprice = judge_price(config)
    batch = config.judge.mode != "online"
    other = token_cost(jprice, total.judge_calls, total.judge_input_tokens, total.judge_output_tokens, not batch)
    return {
        **total.to_json(),
        "pairs": pairs,
        "usd_per_pair": total.usd / pairs if pairs else None,
        "generated_tokens_per_pair": total.generated_tokens / pairs if pairs else None,
        "judge_calls_per_pair": total.judge_calls / pairs if pairs else None,
        "judge_mode": config.judge.mode,
        "usd_judge_if_online" if batch else "usd_judge_if_batch": other,
        "unpriced": unpriced(config),
    }
