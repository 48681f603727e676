"""Reward-model quality of an exported preference dataset, independent of the ENN that chose it.

A fresh Bradley-Terry reward model is trained on the dataset's pairs alone (the pool's
features, z-scored over the pool; its own seed; full-batch L-BFGS in float32 on the
L2-regularised BT loss until an iteration changes the loss by less than RM_TOLERANCE, at most
RM_MAX_ITER iterations), then scored against the pool's hidden reward on prompts the dataset
never saw:

- ``rm_accuracy``: share of held-out same-prompt pairs (a fixed, seeded sample) it orders
  like the oracle;
- ``rm_accuracy_hard``: the same on the sampled pairs whose oracle gap is in the lowest
  quartile (a RewardBench-like hard subset);
- ``label_accuracy``: share of the dataset's own pairs whose chosen response has the higher
  oracle (how clean the labels are);
- ``mean_oracle_chosen`` / ``mean_oracle_rejected``: the dataset's Table-21 statistics.

The reward model is one MLP [d -> RM_HIDDEN -> 1] (ReLU): the pools' oracles are nonlinear in
the features, and a linear model would cap every method at the same ceiling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from activepref.bench.metrics import ordered_pairs
from activepref.errors import PoolFormatError
from activepref.pools.reader import Pool, _iter_rows

RM_HIDDEN = 64
RM_L2 = 1e-3  # weight of ||theta||^2 next to the mean BT loss
RM_MAX_ITER = 500
# Stop when an L-BFGS iteration moves the loss by less than this (absolute; the final losses of
# 4,096-prompt datasets are 0.01-0.1). Measured on the 001 regime (benchmarks/results/
# rm-convergence/, benchmarks/rm_convergence.py):
# 30-190 iterations, rm_accuracy within 0.002 (hard subset 0.004) of 500 float64
# iterations, 7-30x faster.
RM_TOLERANCE = 1e-5
HELDOUT_PAIRS = 20_000  # sampled held-out pairs (all of them when fewer)
HARD_QUANTILE = 0.25


@dataclass(frozen=True)
class DatasetQuality:
    """What `activepref evaluate` reports (the JSON keys)."""

    rm_accuracy: float
    rm_accuracy_hard: float
    label_accuracy: float
    mean_oracle_chosen: float
    mean_oracle_rejected: float
    pairs: int
    prompts: int
    heldout_prompts: int
    heldout_pairs: int
    reference: str  # "oracle", or "score" for a pool without an oracle

    def to_json(self) -> str:
        return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()})


def standardized_features(features: np.ndarray) -> np.ndarray:
    """[n, d] z-scored per dimension over the pool (as runs do with enn.standardize)."""
    x = np.asarray(features, dtype=np.float64)
    return ((x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)).astype(np.float32)


def train_reward_model(features: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, seed: int = 0,
                       tolerance: float = RM_TOLERANCE, max_iter: int = RM_MAX_ITER, double: bool = False, l2: float = RM_L2):
    """Fit the BT reward model. features: [n, d] float32; chosen, rejected: [N] row indices.
    ``tolerance``/``max_iter``/``double`` (float64)/``l2`` exist for the convergence and
    regularisation benchmarks.
    Returns the fitted model (``.predict(rows)`` -> rewards [len(rows)] float64, ``.iterations``)."""
    import torch

    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    d = features.shape[1]
    w1 = ((torch.rand(d, RM_HIDDEN, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(d)).to(dtype)
    b1 = torch.zeros(RM_HIDDEN, dtype=dtype)
    w2 = ((torch.rand(RM_HIDDEN, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(RM_HIDDEN)).to(dtype)
    params = [p.requires_grad_(True) for p in (w1, b1, w2)]

    def reward(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ w1 + b1) @ w2

    chosen, rejected = np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64)
    if len(chosen):
        # Only the dataset's rows take part in training: gather them once, not at every evaluation.
        rows, local = np.unique(np.concatenate([chosen, rejected]), return_inverse=True)
        xs = torch.from_numpy(np.asarray(features[rows])).to(dtype)  # [u, d]
        c, r = torch.from_numpy(local[: len(chosen)]), torch.from_numpy(local[len(chosen) :])
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=tolerance,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            rewards = reward(xs)  # [u]
            loss = -torch.nn.functional.logsigmoid(rewards[c] - rewards[r]).mean() + l2 * sum((p * p).sum() for p in params)
            loss.backward()
            return loss

        opt.step(closure)
        iterations = int(opt.state[params[0]].get("n_iter", 0))
    else:
        iterations = 0

    def predict(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return reward(torch.from_numpy(np.asarray(features[np.asarray(rows, dtype=np.int64)])).to(dtype)).double().numpy()

    return FittedRewardModel(predict=predict, iterations=iterations)


@dataclass(frozen=True)
class FittedRewardModel:
    predict: Callable[[np.ndarray], np.ndarray]  # response rows [n] -> rewards [n] float64
    iterations: int  # L-BFGS iterations used


def heldout_pairs(prompt_index: np.ndarray, reference: np.ndarray, prompts: Sequence[int], seed: int, limit: int = HELDOUT_PAIRS) -> np.ndarray:
    """[k, 2] (better, worse) same-prompt pairs of the given prompts with strictly ordered
    reference, a seeded uniform sample of at most ``limit`` of them."""
    out = ordered_pairs(prompt_index, reference, prompts)
    if len(out) > limit:
        out = out[np.sort(np.random.default_rng(seed).choice(len(out), size=limit, replace=False))]
    return out


def pair_accuracies(predict: Callable[[np.ndarray], np.ndarray], pairs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(rm_accuracy, rm_accuracy_hard) of a reward model on (better, worse) pairs [k, 2]: the
    share it orders like ``reference`` [n], on all pairs and on those whose reference gap is in
    the lowest HARD_QUANTILE. NaN for no pairs."""
    if not len(pairs):
        return float("nan"), float("nan")
    pred = predict(pairs.reshape(-1)).reshape(-1, 2)
    right = pred[:, 0] > pred[:, 1]
    gap = reference[pairs[:, 0]] - reference[pairs[:, 1]]
    hard = gap <= np.quantile(gap, HARD_QUANTILE)
    return float(right.mean()), float(right[hard].mean())


def evaluate_pool_pairs(pool: Pool, chosen: np.ndarray, rejected: np.ndarray, heldout: Sequence[int], seed: int = 0) -> DatasetQuality:
    """:func:`evaluate_pairs` on a pool read from disk: its oracle (else its judge score) and
    its features z-scored over the pool."""
    reference = pool.oracle if pool.oracle is not None else pool.scores
    return evaluate_pairs(pool.prompt_index, reference, standardized_features(pool.features), chosen, rejected, heldout, seed,
                          "oracle" if pool.oracle is not None else "score")


def evaluate_pairs(
    prompt_index: np.ndarray, reference: np.ndarray, features: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
    heldout: Sequence[int], seed: int = 0, reference_name: str = "oracle",
) -> DatasetQuality:
    """Quality of the dataset (chosen[i] preferred to rejected[i], response row indices),
    scored on the held-out prompts ``heldout``.

    prompt_index: [n] prompt of each response; reference: [n] hidden reward; features: [n, d]
    already standardised (computed once by callers that evaluate many datasets on one pool)."""
    reference = np.asarray(reference, dtype=np.float64)
    predict = train_reward_model(features, chosen, rejected, seed).predict
    pairs = heldout_pairs(prompt_index, reference, heldout, seed)
    acc, acc_hard = pair_accuracies(predict, pairs, reference)
    known = np.isfinite(reference[chosen]) & np.isfinite(reference[rejected]) if len(chosen) else np.zeros(0, bool)
    rc, rr = reference[chosen][known], reference[rejected][known]
    return DatasetQuality(
        rm_accuracy=acc, rm_accuracy_hard=acc_hard,
        label_accuracy=float(np.mean(rc > rr)) if len(rc) else float("nan"),
        mean_oracle_chosen=float(rc.mean()) if len(rc) else float("nan"),
        mean_oracle_rejected=float(rr.mean()) if len(rr) else float("nan"),
        pairs=int(len(chosen)), prompts=int(len(np.unique(prompt_index[chosen]))) if len(chosen) else 0,
        heldout_prompts=len(set(heldout)), heldout_pairs=int(len(pairs)), reference=reference_name,
    )


def read_dataset_pairs(pool: Pool, dataset: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(chosen rows, rejected rows) of the pool for each row of an exported dataset (JSONL or
    Parquet from `activepref export`): by ``response_id_chosen``/``response_id_rejected``
    when present, else by (prompt_id, response text). Errors name the file, row and field."""
    path = Path(dataset)
    if not path.exists():
        raise PoolFormatError(str(path), "file", None, "does not exist")
    by_id = {r.id: i for i, r in enumerate(pool.responses)}
    by_text: dict[tuple[str, str], int] = {}
    for i, r in enumerate(pool.responses):
        by_text.setdefault((r.prompt_id, r.text), i)
    chosen, rejected = [], []
    for where, row in _iter_rows(path):
        pair = []
        for side in ("chosen", "rejected"):
            rid = row.get(f"response_id_{side}")
            if rid is not None:
                if rid not in by_id:
                    raise PoolFormatError(str(path), where, f"response_id_{side}", f"{rid!r} is not in the pool")
                pair.append(by_id[rid])
                continue
            pid = row.get("prompt_id")
            value = row.get(side)
            text = value[-1]["content"] if isinstance(value, list) and value and isinstance(value[-1], dict) else value
            if not isinstance(pid, str) or not isinstance(text, str):
                raise PoolFormatError(str(path), where, side if isinstance(pid, str) else "prompt_id",
                                      "missing: need prompt_id and the response text (or response_id_chosen/rejected)")
            if (pid, text) not in by_text:
                raise PoolFormatError(str(path), where, side, f"no response of prompt {pid!r} in the pool has this text")
            pair.append(by_text[(pid, text)])
        chosen.append(pair[0])
        rejected.append(pair[1])
    return np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64)
