"""Routing math against the slow references, and hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from activepref.judges.routing import human_count, preference_uncertainty, route_to_humans
from tests.references.routing_reference import route, uncertainty

FLOATS = st.floats(-6, 6, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6), st.integers(0, 12), st.data())
def test_uncertainty_matches_reference(heads, n, data):
    first = data.draw(arrays(np.float64, (heads, n), elements=FLOATS))
    second = data.draw(arrays(np.float64, (heads, n), elements=FLOATS))
    np.testing.assert_allclose(preference_uncertainty(first, second), np.asarray(uncertainty(first.tolist(), second.tolist())).reshape(n),
                               atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([0.0, 0.1, 0.2]), st.floats(0, 0.5), st.just(math.nan)), max_size=30), st.integers(0, 40))
def test_route_by_count_matches_reference(values, count):
    mask = route_to_humans(np.asarray(values, dtype=np.float64), count=count)
    assert mask.tolist() == route(values, min(count, len(values)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 0.5), max_size=30), st.floats(0.01, 1.0))
def test_route_by_share_takes_the_ceiling(values, share):
    mask = route_to_humans(np.asarray(values, dtype=np.float64), share=share)
    assert mask.sum() == min(len(values), math.ceil(share * len(values) - 1e-9))
    assert mask.tolist() == route(values, int(mask.sum()))


def test_hand_cases():
    agree = preference_uncertainty(np.asarray([[2.0], [2.0]]), np.asarray([[0.0], [0.0]]))
    assert agree.tolist() == [0.0]
    split = preference_uncertainty(np.asarray([[40.0], [-40.0]]), np.asarray([[0.0], [0.0]]))
    assert split[0] == pytest.approx(0.5)
    assert route_to_humans(np.asarray([0.1, 0.3, 0.2, 0.3]), count=2).tolist() == [False, True, False, True]
    assert human_count(10, 0.25, None) == 3 and human_count(8, 0.25, None) == 2 and human_count(4, None, 9) == 4
    with pytest.raises(ValueError):
        preference_uncertainty(np.zeros((2, 3)), np.zeros((3, 2)))
