"""A run's plan: which prompts each iteration takes (kept apart from the loop, which imports
torch, so that ``status`` and ``export`` start without it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from activepref.config import RunConfig
    from activepref.core.store import RunStore


def iteration_plan(store: RunStore, config: RunConfig) -> list[list[int]]:
    """The prompt indices of each iteration: the store's training-prompt order cut into
    ``batch_size`` batches, the first ``iterations`` of them (all when unset)."""
    order = store.train_prompt_order()
    b = config.batch_size
    batches = [order[i : i + b] for i in range(0, len(order), b)]
    return batches[: config.iterations] if config.iterations else batches
