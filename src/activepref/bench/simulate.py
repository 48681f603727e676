"""`activepref simulate`: several methods x several seeds on a pre-scored pool, summarised with
the seeds' spread and each method's paired difference from Random.

The default pool is a small pool in seed 001's regime (activepref.pools.auf: 30 candidates per
prompt from a 30-model quality ladder, judge noise 0.5), written into the simulation's
directory; ``builtin`` is the 80-prompt MT-bench pool shipped with the package, and any pool
file works. Per (method, seed) it reports the selecting ensemble's held-out pairwise accuracy,
the dataset's oracle gap (mean oracle of chosen minus rejected) and ``rm_accuracy`` of a fresh
reward model trained on the exported dataset alone (activepref.bench.dataset_quality).

Differences are paired by seed: a seed fixes the held-out prompts, so method and Random are
scored on the same prompts and the paired difference has less spread than either score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from activepref.bench.report import REFERENCE_METHOD
from activepref.config import BUILTIN_POOL

AUF_DEMO_POOL = "auf"
# metric -> column header, in the order `activepref simulate` prints them
METRICS = {"heldout_accuracy": "held-out acc", "oracle_gap": "oracle gap", "rm_accuracy": "rm_accuracy"}


@dataclass(frozen=True)
class DemoPool:
    """The default pool: seed 001's regime at a size one minute can run."""

    prompts: int = 1024
    dim: int = 64
    noise: float = 0.5
    seed: int = 0


def pool_path(pool: str, base: Path, demo: DemoPool) -> str:
    """The pool a simulation runs on: ``auf`` writes the demo pool into ``base`` (once; the same
    regime gives the same file), ``builtin`` and paths pass through."""
    if pool != AUF_DEMO_POOL:
        return pool
    from activepref.pools.auf import AUFRegime, write_auf_pool

    path = base / f"auf-{demo.prompts}x30-d{demo.dim}-noise{demo.noise:g}-seed{demo.seed}.parquet"
    if not path.exists():
        base.mkdir(parents=True, exist_ok=True)
        write_auf_pool(AUFRegime(n_prompts=demo.prompts, dim=demo.dim, noise=demo.noise, seed=demo.seed), path)
    return str(path)


def pool_title(pool: str, demo: DemoPool) -> str:
    if pool == AUF_DEMO_POOL:
        return f"seed 001's regime ({demo.prompts} prompts x 30 models, d {demo.dim}, judge noise {demo.noise:g})"
    if pool == BUILTIN_POOL:
        return "the built-in pool"
    return pool


@dataclass(frozen=True)
class SeedResult:
    """One (method, seed) run's final numbers."""

    method: str
    seed: int
    pairs: int
    annotations: int
    heldout_accuracy: float
    oracle_gap: float  # mean oracle(chosen) - oracle(rejected) over the dataset
    rm_accuracy: float  # fresh reward model trained on the exported dataset, held-out prompts
    rm_accuracy_hard: float


def seed_result(method: str, seed: int, history: Sequence[dict[str, Any]], run_dir: Path) -> SeedResult:
    """Final metrics of a finished simulation run (NaN where the pool has no hidden oracle)."""
    from activepref.bench.runner import run_dataset_quality

    last = history[-1] if history else {}
    gap = last.get("mean_chosen_reward", float("nan")) - last.get("mean_rejected_reward", float("nan"))
    quality = run_dataset_quality(run_dir, seed) if history else None
    return SeedResult(
        method=method, seed=seed, pairs=int(last.get("pairs", 0)), annotations=int(last.get("annotations", 0)),
        heldout_accuracy=float(last.get("heldout_accuracy", float("nan"))), oracle_gap=float(gap),
        rm_accuracy=quality.rm_accuracy if quality else float("nan"),
        rm_accuracy_hard=quality.rm_accuracy_hard if quality else float("nan"),
    )


@dataclass(frozen=True)
class Spread:
    """Mean, standard deviation (ddof 0) and range of a metric over seeds."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    def text(self, signed: bool = False) -> str:
        """``mean ± sd`` and, on a second line, ``min to max`` (a single value alone)."""
        if self.n == 0:
            return "-"
        f = "{:+.3f}" if signed else "{:.3f}"
        if self.n == 1:
            return f.format(self.mean)
        return f"{f.format(self.mean)} ± {self.sd:.3f}\n{f.format(self.low)} to {f.format(self.high)}"

    @property
    def one_sided(self) -> bool:
        """Every seed's value has the same sign (for paired differences: the ordering held on
        every seed, not just on average)."""
        return self.n > 1 and (self.low > 0 or self.high < 0)


def spread(values: Sequence[float]) -> Spread:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return Spread(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    return Spread(float(v.mean()), float(v.std()), float(v.min()), float(v.max()), len(v))


def method_spreads(results: Sequence[SeedResult]) -> dict[str, dict[str, Spread]]:
    """method -> metric -> spread over that method's seeds (methods in first-seen order)."""
    out: dict[str, dict[str, Spread]] = {}
    for method in dict.fromkeys(r.method for r in results):
        mine = [r for r in results if r.method == method]
        out[method] = {k: spread([getattr(r, k) for r in mine]) for k in METRICS}
    return out


def paired_differences(results: Sequence[SeedResult], reference: str = REFERENCE_METHOD) -> dict[str, dict[str, Spread]]:
    """method -> metric -> spread over seeds of (method - reference) on the same seed.

    Seeds the reference did not run are left out; empty when the reference is absent."""
    ref = {r.seed: r for r in results if r.method == reference}
    out: dict[str, dict[str, Spread]] = {}
    for method in dict.fromkeys(r.method for r in results if r.method != reference):
        mine = [r for r in results if r.method == method and r.seed in ref]
        if mine:
            out[method] = {k: spread([getattr(r, k) - getattr(ref[r.seed], k) for r in mine]) for k in METRICS}
    return out
