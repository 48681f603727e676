"""The instruction kinds. One :class:`InstructionKind` per kind: ``phrase(params)`` is the
sentence appended to the prompt, ``draw(rng)`` draws its parameters, ``check(text, params)``
says whether a response follows it (strictly: the text as given). An instruction is stored
as a plain dict ``{"kind": name, **params}`` (JSON in pool and prompt files).

Checks follow IFEval's definitions in spirit, written here from their descriptions: words are
``\\w+`` runs; a bullet is a line starting with ``*`` or ``-`` followed by a space; keywords
match whole words, case-insensitively. Kinds that cannot hold together are listed in
``conflicts`` and never drawn for the same prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from activepref.registry import Registry

Params = Mapping[str, Any]

KEYWORD_POOL = (
    "example", "balance", "future", "simple", "detail", "history", "energy", "practice", "result", "value",
    "system", "community", "method", "quality", "focus", "process", "reason", "context", "impact", "plan",
)
END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.", "That is all.")
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")


@dataclass(frozen=True)
class InstructionKind:
    name: str
    description: str
    phrase: Callable[[Params], str]
    draw: Callable[[np.random.Generator], dict[str, Any]]
    check: Callable[[str, Params], bool]
    conflicts: frozenset[str] = frozenset()


KINDS: Registry[InstructionKind] = Registry("instruction kind")


def register_kind(
    name: str, description: str, phrase: Callable[[Params], str], draw: Callable[[np.random.Generator], dict[str, Any]],
    conflicts: tuple[str, ...] = (),
) -> Callable[[Callable[[str, Params], bool]], Callable[[str, Params], bool]]:
    """Decorator registering a kind's check function with its phrasing and parameter draw."""

    def wrap(check: Callable[[str, Params], bool]) -> Callable[[str, Params], bool]:
        KINDS.add(InstructionKind(name, description, phrase, draw, check, frozenset(conflicts)))
        return check

    return wrap


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _no_params(rng: np.random.Generator) -> dict[str, Any]:
    return {}


def _keywords(rng: np.random.Generator) -> dict[str, Any]:
    k = int(rng.integers(1, 3))
    return {"keywords": [str(w) for w in rng.choice(KEYWORD_POOL, size=k, replace=False)]}


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


@register_kind(
    "lowercase", "the whole response in lowercase letters",
    lambda p: "Your entire response must be in lowercase letters; no capital letters are allowed.", _no_params,
    conflicts=("uppercase", "title", "postscript"),
)
def lowercase(text: str, params: Params) -> bool:
    return text == text.lower() and any(c.isalpha() for c in text)


@register_kind(
    "uppercase", "the whole response in capital letters",
    lambda p: "Your entire response must be in English and in capital letters only.", _no_params,
    conflicts=("lowercase", "postscript"),
)
def uppercase(text: str, params: Params) -> bool:
    return text == text.upper() and any(c.isalpha() for c in text)


@register_kind(
    "no_commas", "no comma anywhere in the response",
    lambda p: "Do not use any commas in your response.", _no_params, conflicts=("json_format",),
)
def no_commas(text: str, params: Params) -> bool:
    return "," not in text


@register_kind(
    "max_words", "at most N words",
    lambda p: f"Answer in at most {p['n']} words.", lambda rng: {"n": int(rng.choice([30, 50, 80, 120]))},
    conflicts=("min_words",),
)
def max_words(text: str, params: Params) -> bool:
    return len(words(text)) <= int(params["n"])


@register_kind(
    "min_words", "at least N words",
    lambda p: f"Answer with at least {p['n']} words.", lambda rng: {"n": int(rng.choice([40, 60, 100]))},
    conflicts=("max_words",),
)
def min_words(text: str, params: Params) -> bool:
    return len(words(text)) >= int(params["n"])


BULLET = re.compile(r"^\s*[*-]\s", re.MULTILINE)


@register_kind(
    "bullet_points", "exactly N markdown bullet points",
    lambda p: f"Your answer must contain exactly {p['n']} bullet points, written as markdown bullets such as:\n* This is a point.",
    lambda rng: {"n": int(rng.integers(2, 6))}, conflicts=("json_format", "quotation"),
)
def bullet_points(text: str, params: Params) -> bool:
    return len(BULLET.findall(text)) == int(params["n"])


@register_kind(
    "include_keywords", "every given keyword appears",
    lambda p: f"Include the keywords {', '.join(repr(k) for k in p['keywords'])} in the response.", _keywords,
    conflicts=("exclude_keywords",),
)
def include_keywords(text: str, params: Params) -> bool:
    return all(_has_word(text, k) for k in params["keywords"])


@register_kind(
    "exclude_keywords", "none of the given keywords appears",
    lambda p: f"Do not include the words {', '.join(repr(k) for k in p['keywords'])} in the response.", _keywords,
    conflicts=("include_keywords",),
)
def exclude_keywords(text: str, params: Params) -> bool:
    return not any(_has_word(text, k) for k in params["keywords"])


@register_kind(
    "end_phrase", "the response ends with an exact phrase",
    lambda p: f"Finish your response with this exact phrase: {p['phrase']} No other words should follow it.",
    lambda rng: {"phrase": str(rng.choice(END_PHRASES))}, conflicts=("quotation", "json_format", "postscript", "lowercase", "uppercase"),
)
def end_phrase(text: str, params: Params) -> bool:
    return text.strip().endswith(params["phrase"])


@register_kind(
    "quotation", "the whole response wrapped in double quotes",
    lambda p: "Wrap your entire response with double quotation marks.", _no_params,
    conflicts=("json_format", "end_phrase", "bullet_points"),
)
def quotation(text: str, params: Params) -> bool:
    t = text.strip()
    return len(t) > 1 and t[0] == '"' and t[-1] == '"'


@register_kind(
    "json_format", "the whole response is valid JSON",
    lambda p: "Your entire output must be wrapped in JSON format. You can use markdown ticks such as ```.", _no_params,
    conflicts=("quotation", "end_phrase", "bullet_points", "no_commas", "title", "postscript"),
)
def json_format(text: str, params: Params) -> bool:
    t = text.strip()
    t = re.sub(r"^```(?:json|JSON|Json)?\s*", "", t)
    t = re.sub(r"\s*```$", "", t)
    try:
        json.loads(t)
    except ValueError:
        return False
    return True


@register_kind(
    "title", "a title wrapped in double angular brackets",
    lambda p: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.", _no_params,
    conflicts=("json_format", "lowercase"),
)
def title(text: str, params: Params) -> bool:
    return any(m.strip() for m in re.findall(r"<<([^\n]+?)>>", text))


@register_kind(
    "postscript", "a postscript starting with a given marker",
    lambda p: f"At the end of your response, please explicitly add a postscript starting with {p['marker']}",
    lambda rng: {"marker": str(rng.choice(POSTSCRIPT_MARKERS))},
    conflicts=("json_format", "end_phrase", "lowercase", "uppercase"),
)
def postscript(text: str, params: Params) -> bool:
    marker = str(params["marker"])
    pattern = r"\s*p\.\s?p\.\s?s.*$" if marker == "P.P.S" else r"\s*p\.\s?s\..*$"
    return re.search(pattern, text.lower(), flags=re.MULTILINE) is not None


def check_instruction(instruction: Mapping[str, Any], text: str) -> bool:
    """Whether ``text`` follows one instruction ``{"kind": name, **params}`` (strictly)."""
    kind = KINDS.get(str(instruction["kind"]))
    return bool(kind.check(text, {k: v for k, v in instruction.items() if k != "kind"}))


def phrase_instruction(instruction: Mapping[str, Any]) -> str:
    kind = KINDS.get(str(instruction["kind"]))
    return kind.phrase({k: v for k, v in instruction.items() if k != "kind"})


def validate_instructions(value: Any) -> list[dict[str, Any]]:
    """A list of instruction dicts from a pool or prompt file (a list, or its JSON text);
    ValueError naming the problem otherwise. Each must name a known kind and carry the
    parameters that kind draws."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("not valid JSON (a list of {kind: ..., ...})") from None
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of {kind: ..., ...}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "kind" not in item:
            raise ValueError(f"item {i}: must be an object with a 'kind'")
        if str(item["kind"]) not in KINDS.names():
            raise ValueError(f"item {i}: {KINDS.unknown_message(item['kind'])}")
        expected = set(KINDS.get(str(item["kind"])).draw(np.random.default_rng(0)))
        given = set(item) - {"kind"}
        if given != expected:
            raise ValueError(f"item {i} ({item['kind']}): parameters {sorted(given)}, expected {sorted(expected)}")
        out.append(dict(item))
    return out


def draw_instructions(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    """``count`` instructions of distinct, mutually compatible kinds, each with drawn parameters."""
    chosen: list[InstructionKind] = []
    names = KINDS.names()
    for name in rng.permutation(names):
        kind = KINDS.get(str(name))
        if any(kind.name in c.conflicts or c.name in kind.conflicts for c in chosen):
            continue
        chosen.append(kind)
        if len(chosen) == count:
            break
    return [{"kind": k.name, **k.draw(rng)} for k in chosen]
