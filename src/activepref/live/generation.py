"""Candidate generation as in UltraFeedback / 001 §4.1: every (prompt, model) pair gets a
randomly drawn guiding principle and one of that principle's system prompts.

The texts are ours. Each request carries a seed drawn from the step's generator, so the
same run seed reproduces the same requests (and hits the request cache on resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from activepref.backends.base import ChatRequest, SamplingParams
from activepref.pools.records import Prompt

PRINCIPLES = ("helpfulness", "truthfulness", "honesty", "instruction_following")

SYSTEM_PROMPTS: dict[str, tuple[str, ...]] = {
    "helpfulness": (
        "You are an assistant whose first concern is to be useful. Answer the question fully, "
        "give concrete steps or examples where they help, and keep the answer focused.",
        "Aim to leave the user better equipped than before: explain the reasoning behind your "
        "answer and point out anything they should watch for.",
    ),
    "truthfulness": (
        "Say only what you have good reason to believe is true. Do not invent facts, numbers, "
        "names or sources; if something is uncertain, say so plainly.",
        "Accuracy matters more than sounding complete. Check each claim before you make it and "
        "correct any false premise in the question.",
    ),
    "honesty": (
        "Be candid about what you know and what you do not. State your confidence where it "
        "matters, and decline rather than guess when you cannot answer well.",
        "If the question is ambiguous or outside what you can answer reliably, say so and explain "
        "what you would need to answer it properly.",
    ),
    "instruction_following": (
        "Follow the user's instructions exactly: respect every requested format, length, style "
        "and constraint, and do not add what was not asked for.",
        "Read the request carefully and satisfy each part of it in order; when the user fixes a "
        "format, use that format and nothing else.",
    ),
}


@dataclass(frozen=True)
class CandidateSpec:
    """What one generation call will be: which prompt, model, principle and system prompt."""

    prompt_idx: int
    model: str
    principle: str
    system_prompt: str
    request: ChatRequest


def plan_candidates(
    prompts: Sequence[tuple[int, Prompt]],
    models: Sequence[str],
    params: SamplingParams,
    rng: np.random.Generator,
    principles: Sequence[str] = PRINCIPLES,
) -> list[CandidateSpec]:
    """One spec per (prompt, model), principle and system prompt drawn uniformly.

    Random stream per pair, in order: principle index, system-prompt index, request seed.
    """
    specs = []
    for idx, prompt in prompts:
        for model in models:
            principle = principles[int(rng.integers(len(principles)))]
            variants = SYSTEM_PROMPTS[principle]
            system = variants[int(rng.integers(len(variants)))]
            seed = int(rng.integers(2**31 - 1))
            messages = [{"role": "system", "content": system}, *prompt.conversation()]
            request = ChatRequest.from_messages(messages, SamplingParams(**{**params.__dict__, "seed": seed}))
            specs.append(CandidateSpec(idx, model, principle, system, request))
    return specs
