#!/usr/bin/env python
"""Speed of every registered batch design (``kind == "design"``) against its slow reference.

Problem (the issue's contract): 64 prompts x 30 candidates = 1,920 responses with d = 2560
random N(0, 1) features through a real ``EnsembleRewardModel(ENNShape(2560))`` (K = 20 heads,
2 hidden layers of 128, seed 0): rewards = the heads' outputs [K, n]; Φ = each head's last
hidden layer [K, n, 128] (002 §3.3: features before the final linear layer, per head as the
loop passes it). Candidates: every in-prompt pair (64 · 435 = 27,840 comparisons) and, separately,
cross-prompt pairs subsampled to ``max_pairs`` = 50,000 (002 §3.4). History, as in a later
iteration: 512 labelled comparisons (random pairs of the same responses) give
per-head ``past_differences`` [K, 512, 128] and ``past_information`` [K, 128, 128] (Σ p̂(1-p̂) ΔΦ ΔΦᵀ, ``comparisons.labelled_information``); ``prompt_features``
[64, 2560] and ``acquired_prompt_features`` [256, 2560] are random (used by BAL-PM).
prior_precision = 1. Budget: 64 comparisons per batch.

What is measured: the wall time of ``make_selector(name, options)(comparisons, 64, rng)`` for
every design in the registry (``available()`` with ``kind == "design"``, so a new family shows
up here without edits) with its default options, plus the extra option sets in ``VARIANTS``
(e.g. ``method="greedy"``). Each timed call gets a fresh ``np.random.default_rng(repeat)``; one
untimed warm-up precedes the repeats; every figure is the minimum over repeats (on a shared
machine noise only ever adds time; the median is shown too as ``fast_median_ms``). The candidate
construction and the ENN forward are setup, timed once and printed, not counted.

Reference: ``tests/references/<family>_reference.py`` must define ``design(name, comparisons,
budget, rng, **options)``; families without one are shown with no reference. The references
are plain loops recomputing everything (slogdet per candidate and step, math.dist), far too
slow for the full problem, so they run on a reduced problem: the first ``--reference-prompts``
prompts' in-prompt pairs (default 2: 870 comparisons), the first 2 heads, the first 32 history
rows and budget 8.
The table gives the measured reference time with its size, the fast time on that same
reduced problem (like-for-like speedup), whether the selections agree there, and a labelled
scaled estimate ``reference_ms x (M / M_ref) x (64 / 8)`` (linear in M · budget: a lower bound
for the sequential references, whose cost grows faster in the budget).

Goal (reported, not asserted): each design selects 64 of 27,840 in-prompt comparisons in under
1 s on 2 cores (pass/fail column); the cross-prompt run is reported against the same 1 s.

Output: tables, then as the last stdout line one JSON object ``{design: {"fast_ms",
"fast_median_ms", "reference_ms", "reference_scaled_ms", "reference_size", "fast_same_size_ms", "agree",
"cross_prompt_ms", "variants": {"method=greedy": {...}}}}``. ``--quick`` shrinks the problem
(16 prompts, 4 heads, cross-prompt 12,000 pairs, 3 repeats, a 1-prompt reference) for a smoke run.

    python benchmarks/design_speed.py [--quick] [--repeats N] [--reference-prompts P] [--only dopt,xtx]
                                      [--blas-threads N]

On a shared machine, multi-threaded OpenBLAS can be several times slower than one thread
when the other core is busy (its threads spin at barriers); ``--blas-threads 1`` shows the
single-core figure, and the header line says how many BLAS threads ran.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "references"))

from _timing import time_calls  # noqa: E402  (benchmarks/_timing.py, beside this script)

from activepref.acquisition import available, make_selector  # noqa: E402
from activepref.acquisition.comparisons import (  # noqa: E402
    ComparisonSet,
    candidate_pairs,
    labelled_information,  # noqa: E402
)
from activepref.model.enn import ENNShape, EnsembleRewardModel  # noqa: E402

GOAL_MS = 1000.0
DIM = 2560
BUDGET = 64
REFERENCE_BUDGET = 8
REFERENCE_HISTORY = 32
REFERENCE_HEADS = 2
HISTORY = 512
ACQUIRED_PROMPTS = 256
CROSS_MAX_PAIRS = 50_000
# Extra option sets timed per design (the defaults always run). A family adds its own here.
VARIANTS: dict[str, list[dict]] = {
    "dopt": [{"method": "greedy"}],
    "pa_dopt": [{"method": "greedy"}],
    "xtx": [{"method": "greedy"}],
}


def build_problem(prompts: int, per_prompt: int, seed: int = 0, heads: int = 20) -> tuple[ComparisonSet, dict[str, float]]:
    """The in-prompt ComparisonSet of the contract (see module docstring) and setup timings."""
    g = torch.Generator().manual_seed(seed)
    n = prompts * per_prompt
    x = torch.randn(n, DIM, generator=g)  # [n, d]
    model = EnsembleRewardModel(ENNShape(DIM, heads=heads), seed=seed)
    t0 = time.perf_counter()
    rewards = model.rewards(x).double().numpy()  # [K, n]
    phi = model.last_layer_features(x)  # [K, n, h]: per-head Φ, what the loop feeds the designs
    forward_s = time.perf_counter() - t0
    prompt_of = np.repeat(np.arange(prompts), per_prompt)  # [n]
    t0 = time.perf_counter()
    pairs = candidate_pairs(prompt_of)
    pairs_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    past = rng.integers(0, n, size=(HISTORY, 2))
    past = past[past[:, 0] != past[:, 1]]
    rows = x[torch.from_numpy(past.reshape(-1))]
    past_info, past_diff = labelled_information(model.last_layer_features(rows), model.rewards(rows).double().numpy())  # [K, h, h], [K, H, h]
    comparisons = ComparisonSet(
        phi=phi,
        rewards=rewards,
        prompt_of=prompt_of,
        pairs=pairs,
        prompt_features=rng.normal(size=(prompts, DIM)),
        acquired_prompt_features=rng.normal(size=(ACQUIRED_PROMPTS, DIM)),
        past_information=past_info,
        past_differences=past_diff,
        prior_precision=1.0,
    )
    return comparisons, {"enn_forward_ms": forward_s * 1e3, "in_prompt_pairs_ms": pairs_s * 1e3}


def reduced(comparisons: ComparisonSet, prompts: int) -> ComparisonSet:
    """The in-prompt pairs of the first ``prompts`` prompts and the first REFERENCE_HEADS heads
    (same responses; per-head Φ, rewards and history cut to those heads): the references
    recompute every head's determinants from scratch, so all 20 would not fit the time."""
    keep = comparisons.prompt_of[comparisons.pairs[:, 0]] < prompts
    h = REFERENCE_HEADS
    return replace(
        comparisons,
        pairs=comparisons.pairs[keep],
        phi=comparisons.phi[:h],
        rewards=comparisons.rewards[:h],
        past_information=comparisons.past_information[:h],
        past_differences=comparisons.past_differences[:h, :REFERENCE_HISTORY],
    )


def reference_of(family: str):
    """``design`` of tests/references/<family>_reference.py, or None."""
    try:
        module = importlib.import_module(f"{family}_reference")
    except ModuleNotFoundError:
        return None
    return getattr(module, "design", None)


def blas_limits(threads: int | None):
    """Apply ``--blas-threads`` and print the BLAS thread count the timings ran with."""
    try:
        import threadpoolctl
    except ModuleNotFoundError:
        if threads is not None:
            raise SystemExit("--blas-threads needs threadpoolctl (or set OPENBLAS_NUM_THREADS)") from None
        print("BLAS threads: unknown (threadpoolctl not installed)")
        return None
    limiter = threadpoolctl.threadpool_limits(limits=threads, user_api="blas") if threads is not None else None
    info = [
        f"{p['internal_api']} {p['num_threads']}" for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"
    ]
    print(f"BLAS threads: {', '.join(info) or 'none found'}; torch threads {torch.get_num_threads()}")
    return limiter


def label(name: str, options: dict) -> str:
    return name + ("" if not options else "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 prompts, 4 heads, 12,000 cross-prompt pairs, 3 repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="fast repeats (default 5, quick 3)")
    ap.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit numpy's BLAS threads (needs threadpoolctl; default: as configured)",
    )
    ap.add_argument("--only", default=None, help="comma-separated design names to run (default: every design)")
    ap.add_argument(
        "--reference-prompts", type=int, default=None, help="prompts of the reference problem (default 2, quick 1)"
    )
    args = ap.parse_args(argv)
    prompts, per_prompt = (16, 30) if args.quick else (64, 30)
    cross_max = 12_000 if args.quick else CROSS_MAX_PAIRS
    repeats = args.repeats or (3 if args.quick else 5)
    ref_prompts = args.reference_prompts or (1 if args.quick else 2)

    limiter = blas_limits(args.blas_threads)
    wall0 = time.perf_counter()
    comparisons, setup = build_problem(prompts, per_prompt, heads=4 if args.quick else 20)
    t0 = time.perf_counter()
    cross_pairs = candidate_pairs(
        comparisons.prompt_of, cross_prompt=True, rng=np.random.default_rng(0), max_pairs=cross_max
    )
    setup["cross_prompt_pairs_ms"] = (time.perf_counter() - t0) * 1e3
    cross = replace(comparisons, pairs=cross_pairs)
    small = reduced(comparisons, ref_prompts)
    m, m_cross, m_ref = len(comparisons.pairs), len(cross.pairs), len(small.pairs)
    print(
        f"problem: {prompts} prompts x {per_prompt} candidates, d = {DIM}, K = {comparisons.rewards.shape[0]}, "
        f"K = {comparisons.phi.shape[0]} heads, p = {comparisons.phi.shape[-1]} per head; M = {m:,} in-prompt, {m_cross:,} cross-prompt; budget {BUDGET}; "
        f"history {comparisons.past_differences.shape[1]}; reference: M = {m_ref:,}, K = {REFERENCE_HEADS}, budget {REFERENCE_BUDGET}"
    )
    print("setup (not counted): " + ", ".join(f"{k} {v:.1f}" for k, v in setup.items()))

    results: dict[str, dict] = {}
    rows = []
    for method in available():
        if method.kind != "design" or (args.only and method.name not in args.only.split(",")):
            continue
        reference = reference_of(method.family)
        for options in [{}, *VARIANTS.get(method.name, [])]:
            select = make_selector(method.name, options)
            fast = time_calls(lambda rng, s=select: s(comparisons, BUDGET, rng), repeats)
            fast_cross = time_calls(lambda rng, s=select: s(cross, BUDGET, rng), repeats)
            fast_small = time_calls(lambda rng, s=select: s(small, REFERENCE_BUDGET, rng), max(repeats, 3))
            entry: dict = {
                "fast_ms": min(fast),
                "fast_median_ms": statistics.median(fast),
                "cross_prompt_ms": min(fast_cross),
                "fast_same_size_ms": min(fast_small),
                "reference_ms": None,
                "reference_scaled_ms": None,
                "reference_size": {"comparisons": m_ref, "budget": REFERENCE_BUDGET, "history": REFERENCE_HISTORY},
                "agree": None,
            }
            if reference is not None:
                slow = min(
                    time_calls(
                        lambda rng, f=reference, n=method.name, o=options: f(
                            n, small, REFERENCE_BUDGET, rng, **dict(o)
                        ),
                        1,
                    )
                )
                entry["reference_ms"] = slow
                entry["reference_scaled_ms"] = slow * (m / m_ref) * (BUDGET / REFERENCE_BUDGET)
                got = select(small, REFERENCE_BUDGET, np.random.default_rng(0)).tolist()
                want = reference(method.name, small, REFERENCE_BUDGET, np.random.default_rng(0), **dict(options))
                entry["agree"] = got == list(want)
            if options:
                results[method.name].setdefault("variants", {})[",".join(f"{k}={v}" for k, v in options.items())] = (
                    entry
                )
            else:
                results[method.name] = entry
            rows.append((label(method.name, options), entry))

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(
        title=f"Designs: {BUDGET} of {m:,} in-prompt / {m_cross:,} cross-prompt comparisons "
        f"(min of {repeats}); reference on M = {m_ref:,}, budget {REFERENCE_BUDGET}"
    )
    for col in (
        "design",
        "fast ms",
        "fast median",
        f"goal <= {GOAL_MS:g} ms",
        "cross-prompt ms",
        "cross goal",
        "fast ms (ref size)",
        "reference ms (ref size)",
        "speedup (ref size)",
        "ref scaled ms (est.)",
        "agree",
    ):
        table.add_column(col, justify="left" if col == "design" else "right")
    for name, e in rows:
        has_ref = e["reference_ms"] is not None
        table.add_row(
            name,
            f"{e['fast_ms']:.1f}",
            f"{e['fast_median_ms']:.1f}",
            "pass" if e["fast_ms"] <= GOAL_MS else "FAIL",
            f"{e['cross_prompt_ms']:.1f}",
            "pass" if e["cross_prompt_ms"] <= GOAL_MS else "FAIL",
            f"{e['fast_same_size_ms']:.2f}",
            f"{e['reference_ms']:.0f}" if has_ref else "-",
            f"{e['reference_ms'] / e['fast_same_size_ms']:.0f}x" if has_ref else "-",
            f"{e['reference_scaled_ms']:.0f}" if has_ref else "-",
            {True: "yes", False: "NO", None: "-"}[e["agree"]],
        )
    console.print(table)
    print(f"wall time {time.perf_counter() - wall0:.1f} s")
    if limiter is not None:
        limiter.restore_original_limits()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
