"""Judge agreement with the verifiers, against a slow reference on random pools and by hand."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from activepref.ifeval.instructions import check_instruction
from activepref.ifeval.judge_quality import judge_agreement
from activepref.ifeval.scoring import loose_variants, verify

INSTRUCTIONS = [[{"kind": "no_commas"}, {"kind": "max_words", "n": 3}], [{"kind": "lowercase"}], None]
TEXTS = ["a b", "a, b", "one two three four", "Upper", "lower", "whatever", "x, y"]


def reference(instructions, prompt_of, texts, scores):
    """Every pair of one prompt, written out: overall over pairs with different oracle; per kind
    over pairs where exactly one follows it; ties in the judge count half."""
    overall, per_kind = [], {}
    for a, b in itertools.combinations(range(len(texts)), 2):
        p = prompt_of[a]
        if prompt_of[b] != p or not instructions[p] or np.isnan(scores[a]) or np.isnan(scores[b]):
            continue
        oa, ob = verify(instructions[p], texts[a]).oracle, verify(instructions[p], texts[b]).oracle
        if oa != ob:
            hi, lo = (a, b) if oa > ob else (b, a)
            overall.append(1.0 if scores[hi] > scores[lo] else 0.5 if scores[hi] == scores[lo] else 0.0)
        for ins in instructions[p]:
            fa = any(check_instruction(ins, v) for v in loose_variants(texts[a]) if v.strip())
            fb = any(check_instruction(ins, v) for v in loose_variants(texts[b]) if v.strip())
            if fa != fb:
                g, w = (a, b) if fa else (b, a)
                per_kind.setdefault(ins["kind"], []).append(1.0 if scores[g] > scores[w] else 0.5 if scores[g] == scores[w] else 0.0)
    return overall, per_kind


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, len(TEXTS) - 1), st.sampled_from([0.0, 1.0, 2.0, float("nan")])),
                min_size=2, max_size=12))
def test_matches_the_pairwise_reference(rows) -> None:
    prompt_of = np.array([p for p, _, _ in rows])
    texts = [TEXTS[t] for _, t, _ in rows]
    scores = np.array([s for _, _, s in rows])
    got = {a.kind: a for a in judge_agreement(INSTRUCTIONS, prompt_of, texts, scores)}
    overall, per_kind = reference(INSTRUCTIONS, prompt_of, texts, scores)
    assert got["overall"].pairs == len(overall)
    if overall:
        assert np.isclose(got["overall"].share, np.mean(overall))
    assert {k for k in got if k != "overall"} == set(per_kind)
    for k, v in per_kind.items():
        assert got[k].pairs == len(v) and np.isclose(got[k].share, np.mean(v))


def test_by_hand() -> None:
    prompt_of = np.array([0, 0, 0])
    texts = ["a b", "a, b", "one two three four"]  # oracle 2.0, 0.5 (follows max_words only), 0.5 (no_commas only)
    scores = np.array([3.0, 4.0, 1.0])  # judge prefers the comma answer over the clean one: wrong
    agreement = {a.kind: a for a in judge_agreement(INSTRUCTIONS, prompt_of, texts, scores)}
    assert agreement["overall"].pairs == 2 and agreement["overall"].share == 0.5  # (0,1) wrong, (0,2) right; (1,2) tied oracle
    assert agreement["no_commas"].pairs == 2 and agreement["no_commas"].share == 0.0  # (0,1) and (1,2): the comma answer scored higher
    assert agreement["max_words"].pairs == 2 and agreement["max_words"].share == 1.0  # (0,2) and (1,2) right
