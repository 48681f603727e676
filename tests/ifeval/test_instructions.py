"""Each verifiable instruction kind on hand-written compliant and non-compliant texts, the
loose variants, the four accuracies, and the draw of compatible instructions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activepref.ifeval.instructions import (
    KINDS,
    check_instruction,
    draw_instructions,
    phrase_instruction,
    validate_instructions,
)
from activepref.ifeval.scoring import accuracy, loose_variants, verify

# kind -> (params, texts that follow it, texts that do not)
CASES: dict[str, tuple[dict, list[str], list[str]]] = {
    "lowercase": ({}, ["all small here, 42 too.", "ok"], ["Capital start.", "mostly small but One", "1234"]),
    "uppercase": ({}, ["ALL CAPS HERE, 42.", "OK"], ["ALL CAPS but one", "...", "Mixed Case"]),
    "no_commas": ({}, ["No commas at all. Fine; really.", ""], ["one, two", "a,b"]),
    "max_words": ({"n": 5}, ["one two three four five", "short", "it's five words?"], ["one two three four five six", "a b c d e f g"]),
    "min_words": ({"n": 4}, ["one two three four", "a b c d e"], ["one two three", ""]),
    "bullet_points": (
        {"n": 2},
        ["Intro\n* first\n* second", "- a\n- b\nend", "  * indented\n* ok"],
        ["* only one", "* a\n* b\n* c", "*not a bullet\n*either", "1. numbered\n2. list"],
    ),
    "include_keywords": (
        {"keywords": ["balance", "plan"]},
        ["A Plan for balance.", "balance ... plan"],
        ["a planet in balance", "balance only", "imbalance and planning"],
    ),
    "exclude_keywords": ({"keywords": ["future"]}, ["about the past", "futuristic is a different word"], ["The future.", "FUTURE!"]),
    "end_phrase": (
        {"phrase": "That is all."},
        ["Answer here. That is all.", "That is all.\n  "],
        ["That is all. Bye.", "that is all.", "Answer."],
    ),
    "quotation": ({}, ['"quoted answer"', '  "a"  '], ["no quotes", '"open only', "'single'"]),
    "json_format": ({}, ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', "[1, 2]", "```\n{}\n```"], ["{a: 1}", "Sure! {\"a\": 1}", ""]),
    "title": ({}, ["<<My Title>>\ntext", "text <<t>> more"], ["<My Title>", "<<>>", "<< \n >>"]),
    "postscript": ({"marker": "P.S."}, ["Body.\nP.S. see you", "body\np.s. lower"], ["Body only.", "PS no dots"]),
}


def test_there_are_at_least_ten_kinds_and_every_kind_has_cases():
    assert len(KINDS.names()) >= 10
    assert set(CASES) == set(KINDS.names())


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kind_on_hand_written_texts(kind: str) -> None:
    params, good, bad = CASES[kind]
    for text in good:
        assert check_instruction({"kind": kind, **params}, text), f"{kind} should accept {text!r}"
    for text in bad:
        assert not check_instruction({"kind": kind, **params}, text), f"{kind} should reject {text!r}"


def test_postscript_with_the_double_marker():
    assert check_instruction({"kind": "postscript", "marker": "P.P.S"}, "text\nP.P.S also this")
    assert not check_instruction({"kind": "postscript", "marker": "P.P.S"}, "text\nP.S. only one")


def test_loose_variants_forgive_a_first_or_last_line_and_markdown_asterisks():
    instruction = [{"kind": "lowercase"}]
    assert not verify(instruction, "Sure! here it is:\nall lowercase now").prompt_strict
    assert verify(instruction, "Sure! here it is:\nall lowercase now").prompt_loose
    bold = [{"kind": "end_phrase", "phrase": "That is all."}]
    assert verify(bold, "answer. **That is all.**").prompt_loose and not verify(bold, "answer. **That is all.**").prompt_strict
    assert len(loose_variants("a\nb\nc")) == 8
    assert not verify(instruction, "Capital\nStill Capital\nAnd Again").prompt_loose


def test_verdict_levels_and_oracle_score():
    instructions = [{"kind": "no_commas"}, {"kind": "max_words", "n": 3}, {"kind": "lowercase"}]
    full = verify(instructions, "all fine here")
    assert full.prompt_strict and full.inst_strict == 1.0 and full.oracle == 2.0
    partial = verify(instructions, "Too, many words in this one")
    assert partial.strict == (False, False, False) and partial.oracle == 0.0
    two = verify(instructions, "too many words here")
    assert two.strict == (True, False, True) and two.oracle == pytest.approx(2 / 3)
    acc = accuracy([full, partial, two])
    assert acc.prompt_strict == pytest.approx(1 / 3) and acc.inst_strict == pytest.approx(5 / 9)
    assert acc.prompts == 3 and acc.instructions == 9


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_drawn_instructions_are_distinct_compatible_valid_and_phrased(seed: int, count: int) -> None:
    drawn = draw_instructions(np.random.default_rng(seed), count)
    assert len(drawn) == count and len({d["kind"] for d in drawn}) == count
    for a in drawn:
        for b in drawn:
            assert b["kind"] not in KINDS.get(a["kind"]).conflicts
    assert validate_instructions(drawn) == drawn
    assert all(phrase_instruction(d).strip() for d in drawn)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "not valid JSON"),
        ([], "non-empty list"),
        ([{"n": 3}], "item 0: must be an object with a 'kind'"),
        ([{"kind": "telepathy"}], "unknown instruction kind 'telepathy'"),
        ([{"kind": "max_words"}], "item 0 (max_words): parameters [], expected ['n']"),
    ],
)
def test_malformed_instructions_are_refused_with_the_reason(value, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        validate_instructions(value)


def test_the_oracle_orders_following_all_above_following_most():
    instructions = [{"kind": "no_commas"}, {"kind": "lowercase"}]
    assert verify(instructions, "all good").oracle > verify(instructions, "All good").oracle > verify(instructions, "All, bad").oracle
