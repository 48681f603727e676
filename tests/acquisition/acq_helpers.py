"""Shared hypothesis strategies and comparison helpers of the acquisition tests."""

from __future__ import annotations

import os

import acquisition_reference as ref
import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from activepref.acquisition import CandidateBatch, PairRule
from activepref.acquisition.base import NO_CANDIDATE

# Sized so that the whole acquisition suite runs in a few seconds on two cores; raise it for a
# soak run with ACTIVEPREF_HYPOTHESIS_EXAMPLES=5000.
PROPERTY = settings(
    max_examples=int(os.environ.get("ACTIVEPREF_HYPOTHESIS_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

MODEL_NAMES = ("strong", "weak", "mid", "tiny")
TIE_MEANS = (-1.0, 0.0, 0.5, 1.0)
TIE_STDS = (0.0, 0.5, 1.0)

seeds = st.integers(0, 2**32 - 1)


@st.composite
def candidate_batches(
    draw, max_b: int = 5, max_m: int = 6, with_models: bool = False, min_m: int = 1
) -> CandidateBatch:
    """[b, m] batches with arbitrary masks (prompts with 0, 1, 2, .. real candidates, padding
    anywhere), means and stds with frequent exact ties and zero stds, beta in [0, 3], and
    padding slots holding garbage that a correct method never looks at."""
    b = draw(st.integers(1, max_b), label="b")
    m = draw(st.integers(min_m, max_m), label="m")
    mask = draw(arrays(np.bool_, (b, m)), label="mask")
    means = st.one_of(st.sampled_from(TIE_MEANS), st.floats(-5, 5, allow_nan=False))
    stds = st.one_of(st.sampled_from(TIE_STDS), st.floats(0, 3, allow_nan=False))
    mean = draw(arrays(np.float64, (b, m), elements=means), label="mean")
    std = draw(arrays(np.float64, (b, m), elements=stds), label="std")
    beta = draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0, 3, allow_nan=False)), label="beta")
    padding = draw(st.sampled_from(["as drawn", "huge", "tiny"]), label="padding")
    if padding != "as drawn":
        mean[~mask] = 1e3 if padding == "huge" else -1e3
        std[~mask] = 50.0
    models = None
    if with_models:
        models = draw(arrays(object, (b, m), elements=st.sampled_from(MODEL_NAMES)), label="models")
    return CandidateBatch(mean=mean, std=std, mask=mask, beta=beta, models=models)


def pairs_of(proposal) -> list[tuple[int, int]]:
    return [(int(p[0]), int(p[1])) for p in proposal.pair.tolist()]


def assert_matches_reference(fast, reference: ref.RefProposal, batch: CandidateBatch) -> None:
    """Identical pairs (or, where floating-point near-ties make several answers correct, one of
    the reference's alternatives), identical annotate masks, rule and info."""
    b, m = batch.shape
    assert fast.pair.shape == (b, 2)
    assert np.issubdtype(fast.pair.dtype, np.integer)
    assert fast.annotate.shape == (b, m) and fast.annotate.dtype == np.bool_
    assert fast.rule.value == reference.rule
    got = pairs_of(fast)
    for i in range(b):
        alternatives = reference.alternatives[i]
        assert reference.pair[i] in alternatives
        if len(alternatives) == 1:
            assert got[i] == reference.pair[i], f"prompt {i}: fast {got[i]} != reference {reference.pair[i]}"
            expected_row = reference.annotate[i]
        else:
            event("floating-point near-tie: several correct pairs")
            assert got[i] in alternatives, f"prompt {i}: fast {got[i]} not among {alternatives}"
            expected_row = reference.annotate[i] if got[i] == reference.pair[i] else ref.annotate_for(got[i], m)
        assert fast.annotate[i].tolist() == expected_row, f"prompt {i}: annotate differs"
    assert dict(fast.info) == reference.info
    if reference.info.get("fallbacks"):
        event("Thompson fallback used")


def assert_same_stream_position(rng_a: np.random.Generator, rng_b: np.random.Generator) -> None:
    """Both generators consumed exactly the same number of draws."""
    assert rng_a.bit_generator.state == rng_b.bit_generator.state


def check_invariants(name: str, proposal, batch: CandidateBatch, options: dict | None = None) -> None:
    """Pairs are two distinct real candidates; annotation counts per method; prompts with
    fewer than two real candidates get no pair and no annotation."""
    options = options or {}
    mask = batch.mask
    b, m = mask.shape
    for i, (j, k) in enumerate(pairs_of(proposal)):
        n = int(mask[i].sum())
        row = proposal.annotate[i]
        assert not (row & ~mask[i]).any(), "annotates a padding slot"
        if (j, k) != (NO_CANDIDATE, NO_CANDIDATE):
            assert 0 <= j < m and 0 <= k < m and j != k, (j, k)
            assert mask[i, j] and mask[i, k], "pair uses a padding slot"
        else:
            assert j == k == NO_CANDIDATE
        if n < 2:
            assert (j, k) == (NO_CANDIDATE, NO_CANDIDATE)
            assert not row.any()
            continue
        count = int(row.sum())
        if name == "maxmin":
            assert proposal.rule is PairRule.BEST_VS_WORST
            assert (row == mask[i]).all() and (j, k) == (NO_CANDIDATE, NO_CANDIDATE)
        elif name == "ultrafeedback":
            assert proposal.rule is PairRule.BEST_VS_RANDOM
            assert count == min(options.get("sample_size", 4), n)
        elif name == "delta_pair":
            assert proposal.rule is PairRule.FIXED
            assert count == 0
            models = batch.models[i]
            present = {models[c] for c in range(m) if mask[i, c]}
            has_both = options["strong"] in present and options["weak"] in present
            assert ((j, k) != (NO_CANDIDATE, NO_CANDIDATE)) == has_both
            if has_both:
                assert models[j] == options["strong"] and models[k] == options["weak"]
        else:  # random and the five bandit methods: exactly the proposed pair is judged
            assert proposal.rule is PairRule.ORDER_BY_SCORE
            assert j != NO_CANDIDATE
            assert count == 2 and row[j] and row[k]


def single_prompt(mean, std, beta=1.0, mask=None, models=None) -> CandidateBatch:
    mean = np.asarray([mean], dtype=np.float64)
    std = np.asarray([std], dtype=np.float64)
    mask = np.ones_like(mean, dtype=bool) if mask is None else np.asarray([mask], dtype=bool)
    if models is not None:
        models = np.asarray([models], dtype=object)
    return CandidateBatch(mean=mean, std=std, mask=mask, beta=beta, models=models)


def repeated(batch: CandidateBatch, times: int) -> CandidateBatch:
    """The prompts of batch repeated `times` times along the batch axis."""
    models = None if batch.models is None else np.repeat(batch.models, times, axis=0)
    return CandidateBatch(
        mean=np.repeat(batch.mean, times, axis=0),
        std=np.repeat(batch.std, times, axis=0),
        mask=np.repeat(batch.mask, times, axis=0),
        beta=batch.beta,
        models=models,
    )


def with_declared_inputs_only(comparisons, name: str):
    """The ComparisonSet the loop builds for design ``name``: the optional inputs it does not
    declare (``Method.inputs``) left out as the loop leaves them (Φ with 0 columns, None)."""
    import dataclasses

    from activepref.acquisition import get_method

    inputs = get_method(name).inputs
    phi = comparisons.phi if "phi" in inputs else np.empty((*comparisons.phi.shape[:-1], 0))
    changes = {"phi": phi}
    for field in ("past_information", "past_differences"):
        if field not in inputs:
            changes[field] = None
    if "prompt_features" not in inputs:
        changes.update(prompt_features=None, acquired_prompt_features=None, pool_prompt_features=None)
    return dataclasses.replace(comparisons, **changes)
