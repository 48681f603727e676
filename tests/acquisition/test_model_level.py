"""Model-level acquisition (acquisition.model_level): fast == slow reference on random
inputs, invariants, and hand-checked cases."""

from __future__ import annotations

import model_level_reference as ref
import numpy as np
import pytest
from acq_helpers import PROPERTY, seeds
from hypothesis import given
from hypothesis import strategies as st

from activepref.acquisition import get_method, make_selector
from activepref.acquisition.model_level import ModelBatch
from activepref.errors import ConfigError


@st.composite
def model_batches(draw) -> ModelBatch:
    heads, b, m = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 7))
    values = st.sampled_from([-1.0, 0.0, 0.5, 1.0]) | st.floats(-3, 3, allow_nan=False, width=32)
    rewards = np.asarray(draw(st.lists(values, min_size=heads * b * m, max_size=heads * b * m)), dtype=np.float64)
    available = np.asarray(draw(st.lists(st.booleans(), min_size=b * m, max_size=b * m)), dtype=bool).reshape(b, m)
    return ModelBatch(rewards.reshape(heads, b, m), available, draw(st.sampled_from([0.0, 1.0, 2.0])))


@PROPERTY
@given(batch=model_batches(), seed=seeds, k=st.integers(1, 4), epsilon=st.sampled_from([0.0, 0.3, 1.0]))
def test_model_ucb_and_dts_match_the_reference(batch, seed, k, epsilon) -> None:
    for name in ("model_ucb", "model_dts"):
        got = make_selector(name, {"k": k, "epsilon": epsilon})(batch, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        if name == "model_ucb":
            want = ref.ucb(batch.rewards, batch.available, batch.beta, k, epsilon, rng)
        else:
            want = ref.dts(batch.rewards, batch.available, k, epsilon, rng)
        assert np.array_equal(got, want), name


@PROPERTY
@given(batch=model_batches(), seed=seeds, k=st.integers(1, 4), epsilon=st.sampled_from([0.0, 0.5]),
       name=st.sampled_from(["model_ucb", "model_dts", "model_deltaucb", "model_random"]))
def test_every_method_chooses_min_k_available_models_and_only_available_ones(batch, seed, k, epsilon, name) -> None:
    options = {"k": k} if name == "model_random" else {"k": k, "epsilon": epsilon}
    got = make_selector(name, options)(batch, np.random.default_rng(seed))
    assert got.shape == batch.available.shape and got.dtype == bool
    assert not (got & ~batch.available).any()
    assert np.array_equal(got.sum(axis=1), np.minimum(k, batch.available.sum(axis=1)))


def test_hand_checked_choices() -> None:
    # one prompt, four models, two heads: means [1, 0, 3, -2], stds [1, 0, 0, 2]
    rewards = np.array([[[2.0, 0.0, 3.0, 0.0]], [[0.0, 0.0, 3.0, -4.0]]])
    batch = ModelBatch(rewards, np.ones((1, 4), dtype=bool), beta=1.0)  # upper [2, 0, 3, 0], lower [0, 0, 3, -4]
    rng = np.random.default_rng(0)
    assert make_selector("model_ucb", {"k": 2})(batch, rng).tolist() == [[True, False, True, False]]
    # DeltaUCB over models: optimistic best (model 2, upper 3), pessimistic worst (model 3, lower -4)
    assert make_selector("model_deltaucb", {"k": 2})(batch, rng).tolist() == [[False, False, True, True]]
    # k = 3: then the best remaining upper bound (model 0)
    assert make_selector("model_deltaucb", {"k": 3})(batch, rng).tolist() == [[True, False, True, True]]
    # model 2 is unavailable (the pool has no answer of it): never chosen
    masked = ModelBatch(rewards, np.array([[True, True, False, True]]), 1.0)
    assert not make_selector("model_ucb", {"k": 3})(masked, rng)[0, 2]


def test_model_methods_are_registered_as_kind_model_and_check_options() -> None:
    for name in ("model_ucb", "model_dts", "model_deltaucb", "model_random"):
        m = get_method(name)
        assert m.kind == "model" and m.name.startswith("model_")
        assert {"k", "epsilon", "response_method", "response_options"} <= set(m.options())
    with pytest.raises(ConfigError, match="k"):
        make_selector("model_dts", {"k": 0})
