#!/usr/bin/env python
"""How the dataset evaluator's stopping rule changes its verdict and its cost.

`activepref evaluate` (and the bench at every checkpoint) trains a fresh BT reward model with
full-batch L-BFGS. This script trains it twice on the same datasets, side by side in one run:

- ``strict``: float64, stop only at 500 iterations or a loss change under 1e-10 (the old rule);
- ``shipped``: the defaults of ``train_reward_model`` (float32, loss change under RM_TOLERANCE).

Pool: seed 001's regime in memory (``--prompts`` x 30, d ``--dim``, judge noise ``--noise``,
seed 0); the last 10% of prompts are held out. Datasets, each at 1/6 and all of the other
prompts: ``random`` (a uniform pair per prompt, labelled by the judge score) and ``maxgap``
(the judge's best vs worst per prompt). Both are scored on the same held-out pairs as
`evaluate` does. Printed per case: iterations, rm_accuracy, rm_accuracy_hard of each rule, the
differences and the time ratio; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from activepref.bench.dataset_quality import heldout_pairs, pair_accuracies, standardized_features, train_reward_model
from activepref.pools.auf import AUFRegime, auf_chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="512 prompts (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_prompts = 512 if args.quick else args.prompts
    chunks = list(auf_chunks(AUFRegime(n_prompts=n_prompts, dim=args.dim, noise=args.noise, seed=0)))
    features = standardized_features(np.concatenate([c.features for c in chunks]))
    oracle = np.concatenate([c.oracle for c in chunks])
    score = np.concatenate([c.score for c in chunks])
    m = len(oracle) // n_prompts
    prompt_index = np.repeat(np.arange(n_prompts), m)
    n_train = n_prompts - n_prompts // 10
    pairs = heldout_pairs(prompt_index, oracle, list(range(n_train, n_prompts)), seed=0)
    rng = np.random.default_rng(1)
    out: dict[str, dict[str, float]] = {}
    print(f"pool {n_prompts} x {m}, d {args.dim}, noise {args.noise}; {len(pairs)} held-out pairs", flush=True)
    print(f"{'case':<16} {'rule':<8} {'iters':>5} {'rm_acc':>7} {'hard':>7} {'seconds':>8}")
    for kind in ("random", "maxgap"):
        for share in (1 / 6, 1.0):
            size = int(round(n_train * share))
            ps = rng.choice(n_train, size, replace=False)
            if kind == "random":
                first = rng.integers(0, m, size)
                a, b = ps * m + first, ps * m + (first + rng.integers(1, m, size)) % m
            else:
                s = score.reshape(n_prompts, m)[ps]
                a, b = ps * m + s.argmax(1), ps * m + s.argmin(1)
            chosen, rejected = np.where(score[a] >= score[b], a, b), np.where(score[a] >= score[b], b, a)
            case = f"{kind}-{size}"
            row: dict[str, float] = {}
            for rule, kw in (("strict", {"tolerance": 1e-10, "max_iter": 500, "double": True}), ("shipped", {})):
                t0 = time.perf_counter()
                model = train_reward_model(features, chosen, rejected, seed=0, **kw)
                seconds = time.perf_counter() - t0
                acc, acc_hard = pair_accuracies(model.predict, pairs, oracle)
                row.update({f"{rule}_iterations": model.iterations, f"{rule}_rm_accuracy": acc, f"{rule}_rm_accuracy_hard": acc_hard, f"{rule}_s": seconds})
                print(f"{case:<16} {rule:<8} {model.iterations:>5} {acc:>7.4f} {acc_hard:>7.4f} {seconds:>8.2f}", flush=True)
            row["rm_accuracy_diff"] = row["shipped_rm_accuracy"] - row["strict_rm_accuracy"]
            row["rm_accuracy_hard_diff"] = row["shipped_rm_accuracy_hard"] - row["strict_rm_accuracy_hard"]
            row["speedup"] = row["strict_s"] / row["shipped_s"]
            print(f"{case:<16} shipped - strict: rm_accuracy {row['rm_accuracy_diff']:+.4f}, hard {row['rm_accuracy_hard_diff']:+.4f}; {row['speedup']:.1f}x faster")
            out[case] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
