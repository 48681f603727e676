"""What a run knows about its candidates, loaded from the run store: prompts, responses,
their features (standardised once), the padded per-prompt candidate table, and the held-out
pairs the ENN is scored on. Pure data: no judge, no model, no config beyond two settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from activepref.acquisition.comparisons import mean_prompt_features
from activepref.bench.metrics import ordered_pairs
from activepref.core.determinism import Stage, stage_rng
from activepref.core.features import FeatureMatrix, load_feature_matrix
from activepref.core.store import RunStore
from activepref.pools.records import Response


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


def monitored_prompts(eval_prompts: list[int], limit: int | None, seed: int) -> list[int]:
    """The held-out prompts the ENN is scored on after every iteration: all of them, or a
    sample of ``limit`` drawn once from (seed, Stage.MONITOR), sorted. The per-iteration
    forward over every held-out candidate (12,300 rows at 410 prompts x 30) cost as much as
    a third of the ENN's training; the dataset evaluator still uses every held-out prompt."""
    if limit is None or len(eval_prompts) <= limit:
        return list(eval_prompts)
    picked = stage_rng(seed, 0, Stage.MONITOR).choice(len(eval_prompts), size=limit, replace=False)
    return sorted(int(eval_prompts[i]) for i in picked)


def load_features(store: RunStore, standardize: bool) -> FeatureMatrix:
    """The run's features, read by row (never loaded whole), z-scored per dimension when asked.

    Unit-norm sentence embeddings have per-dimension scales ~1/sqrt(d); z-scoring puts the
    heads' inputs on the scale their PyTorch-style init expects. It uses no labels. The
    statistics are computed once in a streaming pass (over the pool, or over the first
    iteration's candidates of a live run) and kept in the run directory, so features never
    shift under the ENN. ``features[idx]`` -> float32 tensor [len(idx), d].
    """
    return load_feature_matrix(store.run_dir, store.feature_source(), standardize)


class ResponseTable:
    """The run's responses by idx, read from the store when asked (a paper-scale pool's 1.8 M
    texts never sit in memory): ``table[i]`` -> Response, ``len(table)``. The loop reads
    only the responses it judges."""

    def __init__(self, store: RunStore, count: int) -> None:
        self.store = store
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, idx: int) -> Response:
        if not 0 <= int(idx) < self.count:
            raise IndexError(f"response {idx} out of range 0..{self.count - 1}")
        return self.store.response_at(int(idx))


class ModelColumn:
    """The generating model of every response as category codes: ``models[idx]`` -> object
    array of names (idx an int array), without one string object per response."""

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes = codes
        self.names = np.asarray(names, dtype=object)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.names[self.codes[idx]]


@dataclass
class CandidateSettings:
    """The config values the candidate data depends on."""

    standardize: bool
    device: str
    eval_monitor_prompts: int | None
    seed: int


class RunData:
    """The run's candidates as arrays, (re)loaded from the store.

    prompts: every prompt row; responses: [n] candidates (a ResponseTable: texts read from
    the store by idx); response_prompt: [n] their prompt row; table: the padded [P, m]
    candidate table; features: [n, d] FeatureMatrix (rows read on demand, ``features[idx]``
    -> CPU float32 tensor); models: [n] generating model of each candidate (a ModelColumn:
    ``models[idx]`` -> names); reward_reference: [n] hidden oracle or stored score (NaN
    where unknown); eval_pairs: [E, 2] (better, worse) held-out pairs; eval_rows: the
    held-out candidates with a known reference; eval_pair_positions: [E, 2] eval_pairs as
    positions in eval_rows."""

    def __init__(self, store: RunStore, settings: CandidateSettings) -> None:
        self.store = store
        self.settings = settings
        self.prompts = [p for p, _, _ in store.prompts()]
        self._prompt_matrix: np.ndarray | None = None
        self.refresh()

    def refresh_responses_only(self) -> None:
        self.response_prompt, codes, names = self.store.response_index()
        self.responses = ResponseTable(self.store, len(self.response_prompt))
        self.models = ModelColumn(codes, names)

    def refresh(self) -> None:
        """(Re)load candidates and features from the store (after a live run embeds more)."""
        s = self.settings
        self._prompt_matrix = None
        self.refresh_responses_only()
        self.table = CandidateTable.build(self.response_prompt, len(self.prompts))
        self.features = load_features(self.store, s.standardize)  # [n, d], rows read on demand (CPU tensors)
        reference = self.store.oracle()  # pool runs: hidden oracle or stored score
        self.reward_reference = np.full(len(self.responses), np.nan)
        self.reward_reference[: len(reference)] = reference
        eval_prompts = monitored_prompts(self.store.eval_prompts(), s.eval_monitor_prompts, s.seed)
        self.eval_pairs = ordered_pairs(self.response_prompt, self.reward_reference, eval_prompts)
        held_out = np.zeros(len(self.prompts), dtype=bool)
        held_out[np.asarray(eval_prompts, dtype=np.int64)] = True
        # Held-out candidates with a known reference: what the loop predicts each iteration.
        self.eval_rows = np.nonzero(held_out[self.response_prompt] & np.isfinite(self.reward_reference))[0]
        # eval_pairs as positions in eval_rows (sorted; every pair's rows are in it), so the
        # per-iteration metrics index the held-out predictions without a pool-sized array.
        self.eval_pair_positions = np.searchsorted(self.eval_rows, self.eval_pairs)

    def prompt_matrix(self) -> np.ndarray:
        """[n_prompts, q] prompt features for BAL-PM, computed once per load: the pool's
        prompt-only embeddings (``prompt_features`` column) when it has them, else the mean
        feature of each prompt's candidates (``mean_prompt_features``)."""
        if self._prompt_matrix is None:
            own = self.store.prompt_features()
            if own is not None:
                self._prompt_matrix = np.asarray(own, dtype=np.float64)
            else:
                self._prompt_matrix = mean_prompt_features(
                    ((start, block.double().numpy()) for start, block in self.features.chunks()),
                    self.response_prompt, len(self.prompts), self.features.shape[1],
                )
        return self._prompt_matrix
