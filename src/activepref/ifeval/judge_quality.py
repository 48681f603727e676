"""How good is a judge on a pool with verifiable instructions? Its pairwise agreement with the
verifiers, overall and per instruction kind -- what a user wants to know before paying for it.

Pairs are two candidates of one prompt. *Overall*: among pairs whose oracle (verifier score)
differs, the share the judge orders the same way (a tie in the judge's scores counts half).
*Per kind*: among pairs of prompts carrying an instruction of that kind where exactly one of the
two responses follows it (loose), the share where the judge scores that one higher (ties half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from activepref.ifeval.scoring import verify


@dataclass(frozen=True)
class Agreement:
    """share: agreement in [0, 1] (NaN without pairs); pairs: how many pairs it is over."""

    kind: str  # "overall" or an instruction kind
    share: float
    pairs: int


def _agree(a: float, b: float) -> float:
    return 1.0 if a > b else (0.5 if a == b else 0.0)


def judge_agreement(
    instructions: Sequence[Sequence[dict[str, Any]] | None], prompt_of: np.ndarray, texts: Sequence[str], scores: np.ndarray
) -> list[Agreement]:
    """Overall and per-kind agreement of ``scores`` (the judge's, NaN where missing) with the
    verifiers. instructions: per prompt (None where a prompt has none); prompt_of: [n] prompt
    of each response; texts: [n] responses."""
    by_prompt: dict[int, list[int]] = {}
    for r, p in enumerate(prompt_of):
        if instructions[int(p)] and np.isfinite(scores[r]):
            by_prompt.setdefault(int(p), []).append(r)
    overall: list[float] = []
    per_kind: dict[str, list[float]] = {}
    for p, rows in by_prompt.items():
        inst = list(instructions[p] or [])
        verdicts = {r: verify(inst, texts[r]) for r in rows}  # one check of every instruction per response
        oracle = {r: v.oracle for r, v in verdicts.items()}
        follows = {(k, r): verdicts[r].loose[k] for k in range(len(inst)) for r in rows}
        for x in range(len(rows)):
            for y in range(x + 1, len(rows)):
                a, b = rows[x], rows[y]
                if oracle[a] != oracle[b]:
                    better, worse = (a, b) if oracle[a] > oracle[b] else (b, a)
                    overall.append(_agree(scores[better], scores[worse]))
                for k, i in enumerate(inst):
                    if follows[(k, a)] != follows[(k, b)]:
                        good, bad = (a, b) if follows[(k, a)] else (b, a)
                        per_kind.setdefault(str(i["kind"]), []).append(_agree(scores[good], scores[bad]))
    out = [Agreement("overall", float(np.mean(overall)) if overall else float("nan"), len(overall))]
    out += [Agreement(k, float(np.mean(v)), len(v)) for k, v in sorted(per_kind.items())]
    return out
