#!/usr/bin/env python
"""Speed of every registered acquisition method against its slow reference.

What is measured: for each per-prompt method in ``activepref.acquisition.available()``, the wall time of
one proposal ``make_selector(name, options)(batch, rng)`` on a fixed ``CandidateBatch`` of
b = 64 prompts x m = 30 candidate slots (random N(0, 1) means, U(0.05, 1) stds, beta = 1;
prompt 0 has a single candidate, every fourth prompt is shorter, 2..29 real candidates, with
garbage in its padding slots; ``models`` gives each prompt a random permutation of 30 model
names including ``strong`` and ``weak``, so shorter prompts may miss one of them), against
the plain-Python reference of the same method (``tests/references/acquisition_reference.py``,
``propose(name, batch, rng, **options)``). ``delta_pair`` runs with options
``strong="strong", weak="weak"``; every other method with its defaults.

Each timed call gets a fresh ``np.random.default_rng(repeat)`` made outside the timer; one
untimed warm-up call precedes the repeats; the figures are medians over repeats (min shown
too). The first repeat of fast and reference share a seed, and the table's "agree" column
counts prompts whose fast pair (and annotate row) is the reference's, or one of its listed
floating-point near-tie alternatives.

Goal (reported, not asserted): every method <= 5 ms per 64 x 30 batch (pass/fail column).

Output: a table, a wall-time line, then as the last stdout line one JSON object
``{method: {"fast_ms": median, "reference_ms": median}, ...}`` with one key per method.
``--quick`` uses a 16 x 12 batch and few repeats (smoke run; the goal column then
still applies to the 5 ms figure but says nothing about the 64 x 30 contract).

    python benchmarks/acquisition_speed.py [--quick] [--repeats N] [--reference-repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "references"))

import acquisition_reference as ref  # noqa: E402
from _timing import time_calls  # noqa: E402  (benchmarks/_timing.py, beside this script)

from activepref.acquisition import CandidateBatch, available, make_selector  # noqa: E402

GOAL_MS = 5.0
OPTIONS = {"delta_pair": {"strong": "strong", "weak": "weak"}}


def make_batch(b: int, m: int, seed: int = 0) -> CandidateBatch:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(b, m))
    std = rng.uniform(0.05, 1.0, size=(b, m))
    mask = np.ones((b, m), dtype=bool)
    for i in range(1, b, 4):  # shorter prompts: padding at the end
        mask[i, rng.integers(2, m) if m > 2 else m :] = False
    mask[0, 1:] = False  # a prompt with a single candidate (no pair possible)
    names = np.array(["strong", "weak"] + [f"model-{k}" for k in range(2, max(m, 2))], dtype=object)
    models = np.empty((b, m), dtype=object)
    for i in range(b):
        models[i] = rng.permutation(names)[:m]
    return CandidateBatch(mean=mean, std=std, mask=mask, beta=1.0, models=models)


def agreement(fast, reference, m: int) -> int:
    """Prompts where the fast proposal is the reference's (or an allowed near-tie alternative)."""
    ok = 0
    for i, (p, alts) in enumerate(zip(fast.pair.tolist(), reference.alternatives)):
        got = (int(p[0]), int(p[1]))
        if got not in alts:
            continue
        row = reference.annotate[i] if got == reference.pair[i] else ref.annotate_for(got, m)
        ok += fast.annotate[i].tolist() == row
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 x 12 batch, few repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="fast repeats (default 200, quick 10)")
    ap.add_argument("--reference-repeats", type=int, default=None, help="reference repeats (default 5, quick 1)")
    args = ap.parse_args(argv)
    b, m = (16, 12) if args.quick else (64, 30)
    repeats = args.repeats or (10 if args.quick else 200)
    ref_repeats = args.reference_repeats or (1 if args.quick else 5)

    wall0 = time.perf_counter()
    batch = make_batch(b, m)
    results: dict[str, dict[str, float]] = {}
    rows = []
    for method in available():
        if method.kind != "per_prompt":  # batch designs: benchmarks/design_speed.py
            continue
        name = method.name
        options = OPTIONS.get(name, {})
        select = make_selector(name, options)
        fast = time_calls(lambda rng, select=select: select(batch, rng), repeats)
        slow = time_calls(lambda rng, name=name, options=options: ref.propose(name, batch, rng, **options), ref_repeats)
        agree = agreement(
            select(batch, np.random.default_rng(0)), ref.propose(name, batch, np.random.default_rng(0), **options), m
        )
        fast_ms, ref_ms = statistics.median(fast), statistics.median(slow)
        results[name] = {"fast_ms": fast_ms, "reference_ms": ref_ms}
        rows.append((name, fast_ms, min(fast), ref_ms, agree))

    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(
        title=f"Acquisition: one proposal on a {b} x {m} batch (median of {repeats} fast / {ref_repeats} reference calls)"
    )
    for col in (
        "method",
        "fast ms (median)",
        "fast ms (min)",
        "reference ms",
        "speedup",
        f"goal <= {GOAL_MS:g} ms",
        "agree",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, fast_ms, fast_min, ref_ms, agree in rows:
        table.add_row(
            name,
            f"{fast_ms:.3f}",
            f"{fast_min:.3f}",
            f"{ref_ms:.1f}",
            f"{ref_ms / fast_ms:.0f}x",
            "pass" if fast_ms <= GOAL_MS else "FAIL",
            f"{agree}/{b}",
        )
    console.print(table)
    print(f"wall time {time.perf_counter() - wall0:.1f} s")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
