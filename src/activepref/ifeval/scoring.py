"""IFEval's accuracies of one response to a prompt with verifiable instructions.

*Strict*: each instruction is checked on the response as given. *Loose*: also on seven
variants -- without its first line, without its last line, without both, and each of the
four with markdown asterisks removed -- and counts as followed when any variant follows it
(IFEval's remedy for a greeting or sign-off line, or bold markup, around a correct answer).
*Prompt level*: every instruction of the prompt followed; *instruction level*: the share
followed.

The oracle score of a response is ``prompt_loose + instruction_loose`` in [0, 2]: a response
that follows every instruction (2.0) always beats one that does not (< 1), and among those
that miss, more instructions followed is better -- IFEval's loose prompt-level accuracy with
the instruction-level share as tie-breaker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from activepref.ifeval.instructions import check_instruction


def loose_variants(text: str) -> list[str]:
    """The response and its seven loose variants (IFEval's order)."""
    lines = text.split("\n")
    base = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return base + [v.replace("*", "") for v in base]


@dataclass(frozen=True)
class Verdict:
    """strict / loose: per instruction, whether the response follows it."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)

    @property
    def inst_strict(self) -> float:
        return sum(self.strict) / len(self.strict)

    @property
    def inst_loose(self) -> float:
        return sum(self.loose) / len(self.loose)

    @property
    def oracle(self) -> float:
        return float(self.prompt_loose) + self.inst_loose


def verify(instructions: Sequence[Mapping[str, Any]], text: str) -> Verdict:
    """Check every instruction on ``text``, strictly and loosely."""
    if not instructions:
        raise ValueError("a prompt with verifiable instructions needs at least one")
    variants = [v for v in loose_variants(text) if v.strip()]
    strict = tuple(check_instruction(i, text) for i in instructions)
    loose = tuple(s or any(check_instruction(i, v) for v in variants) for i, s in zip(instructions, strict))
    return Verdict(strict, loose)


@dataclass(frozen=True)
class Accuracy:
    """IFEval's four accuracies over a set of (prompt, response) verdicts."""

    prompt_strict: float
    prompt_loose: float
    inst_strict: float
    inst_loose: float
    prompts: int
    instructions: int


def accuracy(verdicts: Sequence[Verdict]) -> Accuracy:
    """Prompt-level: mean over prompts; instruction-level: over all instructions pooled."""
    if not verdicts:
        raise ValueError("no verdicts")
    n_inst = sum(len(v.strict) for v in verdicts)
    return Accuracy(
        prompt_strict=sum(v.prompt_strict for v in verdicts) / len(verdicts),
        prompt_loose=sum(v.prompt_loose for v in verdicts) / len(verdicts),
        inst_strict=sum(sum(v.strict) for v in verdicts) / n_inst,
        inst_loose=sum(sum(v.loose) for v in verdicts) / n_inst,
        prompts=len(verdicts),
        instructions=n_inst,
    )
