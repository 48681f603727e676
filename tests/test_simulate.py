"""activepref.bench.simulate: the seed spread and paired differences `activepref simulate` prints."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activepref.bench.simulate import (
    AUF_DEMO_POOL,
    DemoPool,
    SeedResult,
    Spread,
    method_spreads,
    paired_differences,
    pool_path,
    spread,
)


def result(method: str, seed: int, acc: float, gap: float = 1.0, rm: float = 0.6) -> SeedResult:
    return SeedResult(method, seed, pairs=10, annotations=20, heldout_accuracy=acc, oracle_gap=gap, rm_accuracy=rm, rm_accuracy_hard=0.5)


def test_spread_by_hand():
    s = spread([0.5, 0.7, 0.6])
    assert (s.mean, s.low, s.high, s.n) == pytest.approx((0.6, 0.5, 0.7, 3))
    assert s.sd == pytest.approx(math.sqrt(((0.1) ** 2 + 0 + (0.1) ** 2) / 3))
    assert s.text() == "0.600 ± 0.082\n0.500 to 0.700"
    assert spread([0.25]).text() == "0.250"
    assert spread([float("nan")]).text() == "-"  # a pool without an oracle
    assert spread([0.2, float("nan"), 0.4]).n == 2  # NaNs are left out, not averaged in


def test_one_sided_needs_every_seed_on_one_side():
    assert spread([0.01, 0.02]).one_sided
    assert spread([-0.01, -0.3]).one_sided
    assert not spread([-0.01, 0.02]).one_sided
    assert not spread([0.0, 0.02]).one_sided  # a tie on one seed is not agreement
    assert not spread([0.05]).one_sided  # one seed shows no spread at all
    assert Spread(0.1, 0.0, 0.1, 0.1, 2).text(signed=True) == "+0.100 ± 0.000\n+0.100 to +0.100"


def test_paired_differences_by_hand():
    results = [
        result("random", 0, 0.60, gap=1.0), result("random", 1, 0.70, gap=1.2),
        result("drts", 0, 0.62, gap=1.5), result("drts", 1, 0.69, gap=1.6), result("drts", 2, 0.99, gap=9.0),  # seed 2: no partner
    ]
    d = paired_differences(results)
    assert list(d) == ["drts"]
    acc = d["drts"]["heldout_accuracy"]
    assert acc.n == 2
    assert (acc.mean, acc.low, acc.high) == pytest.approx((0.005, -0.01, 0.02))
    assert not acc.one_sided
    gap = d["drts"]["oracle_gap"]
    assert (gap.mean, gap.low, gap.high) == pytest.approx((0.45, 0.4, 0.5))
    assert gap.one_sided
    assert paired_differences([result("drts", 0, 0.6)]) == {}  # no Random, nothing to pair with


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=6))
def test_paired_differences_match_a_loop(pairs):
    results = [result("random", s, a) for s, (a, _) in enumerate(pairs)] + [result("dts", s, b) for s, (_, b) in enumerate(pairs)]
    d = paired_differences(results)["dts"]["heldout_accuracy"]
    deltas = [b - a for a, b in pairs]
    assert d.mean == pytest.approx(sum(deltas) / len(deltas), abs=1e-12)
    assert (d.low, d.high) == (min(deltas), max(deltas))
    assert d.sd == pytest.approx(float(np.std(deltas)), abs=1e-12)
    spreads = method_spreads(results)
    assert list(spreads) == ["random", "dts"]
    assert spreads["dts"]["heldout_accuracy"].mean == pytest.approx(sum(b for _, b in pairs) / len(pairs), abs=1e-12)


def test_demo_pool_is_written_once_and_reproducibly(tmp_path):
    demo = DemoPool(prompts=12, dim=8, noise=0.5)
    first = pool_path(AUF_DEMO_POOL, tmp_path / "a", demo)
    again = pool_path(AUF_DEMO_POOL, tmp_path / "a", demo)
    other_dir = pool_path(AUF_DEMO_POOL, tmp_path / "b", demo)
    assert first == again
    with open(first, "rb") as f1, open(other_dir, "rb") as f2:
        assert f1.read() == f2.read()
    assert pool_path("builtin", tmp_path, demo) == "builtin"
    assert pool_path("my.parquet", tmp_path, demo) == "my.parquet"
    with pytest.raises(ValueError):
        pool_path(AUF_DEMO_POOL, tmp_path / "c", DemoPool(prompts=0))
