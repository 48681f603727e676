"""Agreement statistics against the slow references (random labels) and published examples."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activepref.annotate.agreement import cohens_kappa, krippendorff_alpha, majority_verdict
from tests.references.agreement_reference import alpha, kappa, majority

LABEL = st.sampled_from(["first", "second", "tie"])


def close(a, b):
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))


@settings(max_examples=200, deadline=None)
@given(st.lists(LABEL, max_size=7))
def test_majority_matches_reference(votes):
    assert majority_verdict(votes) == majority(votes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABEL, LABEL), max_size=40))
def test_kappa_matches_reference(pairs):
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    assert close(cohens_kappa(first, second), kappa(first, second))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(LABEL, max_size=5), max_size=25))
def test_alpha_matches_reference(units):
    assert close(krippendorff_alpha(units), alpha(units))


def test_majority_hand_cases():
    assert majority_verdict(["first"]) == "first"
    assert majority_verdict(["first", "second"]) == "tie"
    assert majority_verdict(["first", "first", "second"]) == "first"
    assert majority_verdict(["tie", "tie", "first"]) == "tie"
    assert majority_verdict(["first", "tie"]) == "tie"
    assert majority_verdict([]) == "tie"


def test_kappa_textbook_example():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohens_kappa(first, second) == pytest.approx(0.4)
    assert cohens_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement 1: undefined
    assert cohens_kappa(["first", "second"], ["second", "first"]) == pytest.approx(-1.0)


def test_alpha_krippendorff_2011_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units with
    # missing values; nominal alpha = 0.743.
    rows = [
        "1 2 3 3 2 1 4 1 2 . . .",
        "1 2 3 3 2 2 4 1 2 5 . 3",
        ". 3 3 3 2 3 4 2 2 5 1 .",
        "1 2 3 3 2 4 4 1 2 5 1 .",
    ]
    table = [r.split() for r in rows]
    units = [[table[c][u] for c in range(4) if table[c][u] != "."] for u in range(12)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)


def test_alpha_edges():
    assert krippendorff_alpha([["first"], ["second"]]) is None  # nothing pairable
    assert krippendorff_alpha([["first", "first"], ["first", "first"]]) is None  # no variation at all
    assert krippendorff_alpha([["first", "first"], ["second", "second"]]) == pytest.approx(1.0)
