#!/usr/bin/env python
"""Does a better-regularised fresh reward model change which method's dataset looks best?

The 001-regime bench found the delta methods' datasets (large chosen - rejected gaps, clean
labels) training *worse* fresh reward models than Random's. One reading: pairs with large
gaps are nearly separable, so the shipped evaluator (L2 1e-3, trained to convergence) fits
them with large weights and learns the model ladder rather than close calls. If that is the
cause, stronger L2 or early stopping should shrink the deficit.

This script takes the final exported dataset of every run of a finished bench (``--bench
DIR``: its ``runs/<method>-seed<k>/``), retrains the evaluator's reward model on it under each
setting (L2 weights and L-BFGS iteration caps), side by side in one run, and scores it on the
run's held-out prompts exactly as the bench does (same held-out pairs, same seed). Printed:
per setting and method the mean rm_accuracy / rm_accuracy_hard over seeds and each method's
paired difference from Random; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from activepref.bench.dataset_quality import RM_L2, RM_MAX_ITER, heldout_pairs, pair_accuracies, train_reward_model
from activepref.bench.runner import _DatasetView, hidden_reference
from activepref.core.store import STATUS_TRAINED, RunStore

SETTINGS = (  # (name, l2, max_iter)
    ("shipped", RM_L2, RM_MAX_ITER),
    ("l2=1e-4", 1e-4, RM_MAX_ITER),
    ("l2=1e-2", 1e-2, RM_MAX_ITER),
    ("l2=3e-2", 3e-2, RM_MAX_ITER),
    ("l2=1e-1", 1e-1, RM_MAX_ITER),
    ("iters<=10", RM_L2, 10),
    ("iters<=30", RM_L2, 30),
)


def run_case(run_dir: Path, seed: int) -> dict[str, tuple[float, float]]:
    store = RunStore.open_readonly(run_dir)
    try:
        last = [r.iteration for r in store.iterations() if r.status == STATUS_TRAINED][-1]
        heldout = sorted(store.eval_prompts())
        response_prompt, reference = hidden_reference(store)
        view = _DatasetView(store, response_prompt, reference)
    finally:
        store.close()
    upto = view.iteration <= last
    chosen, rejected = view.chosen[upto], view.rejected[upto]
    pairs = heldout_pairs(response_prompt, reference, heldout, seed)  # the bench's held-out pairs
    out = {}
    for name, l2, max_iter in SETTINGS:
        model = train_reward_model(view.features, chosen, rejected, seed, max_iter=max_iter, l2=l2)
        out[name] = pair_accuracies(model.predict, pairs, reference)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, required=True, help="a finished `activepref bench --out` directory")
    ap.add_argument("--methods", default="", help="comma-separated subset (default: every method with runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    wanted = {m for m in args.methods.split(",") if m}
    cases: dict[str, dict[int, Path]] = {}
    for d in sorted((args.bench / "runs").iterdir()):
        m = re.fullmatch(r"(.+)-seed(\d+)", d.name)
        if m and (not wanted or m.group(1) in wanted) and (d / "run.sqlite").exists():
            cases.setdefault(m.group(1), {})[int(m.group(2))] = d
    if "random" not in cases:
        raise SystemExit("the bench needs random runs (the reference)")
    started = time.perf_counter()
    scores: dict[str, dict[int, dict[str, tuple[float, float]]]] = {}
    for method, seeds in cases.items():
        for seed, d in sorted(seeds.items()):
            scores.setdefault(method, {})[seed] = run_case(d, seed)
            print(f"{method} seed {seed}: " + "  ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in scores[method][seed].items()), flush=True)
    print()
    result: dict[str, dict[str, dict[str, float]]] = {}
    header = f"{'setting':<10} {'method':<14} {'rm_acc':>7} {'hard':>7} {'- random':>9} {'(min..max)':>16} {'hard - random':>14}"
    print(header)
    for name, _, _ in SETTINGS:
        for method, seeds in scores.items():
            acc = np.array([seeds[s][name][0] for s in sorted(seeds)])
            hard = np.array([seeds[s][name][1] for s in sorted(seeds)])
            paired = [s for s in sorted(seeds) if s in scores["random"]]
            d_acc = np.array([seeds[s][name][0] - scores["random"][s][name][0] for s in paired])
            d_hard = np.array([seeds[s][name][1] - scores["random"][s][name][1] for s in paired])
            result.setdefault(name, {})[method] = {
                "rm_accuracy": float(acc.mean()), "rm_accuracy_hard": float(hard.mean()),
                "minus_random": float(d_acc.mean()), "minus_random_min": float(d_acc.min()), "minus_random_max": float(d_acc.max()),
                "hard_minus_random": float(d_hard.mean()), "seeds": len(acc),
            }
            print(f"{name:<10} {method:<14} {acc.mean():>7.3f} {hard.mean():>7.3f} {d_acc.mean():>+9.3f} "
                  f"{f'({d_acc.min():+.3f}..{d_acc.max():+.3f})':>16} {d_hard.mean():>+14.3f}")
        print()
    print(f"{time.perf_counter() - started:.0f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
