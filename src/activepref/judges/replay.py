"""The replay judge: reveals a stored score only when asked, and counts every reveal.

This is the paper's simulation setup (001 §5): candidates come pre-scored, and the
annotation cost of a method is the number of scores it had revealed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from activepref.errors import ConfigError, JudgeError
from activepref.judges import JudgeResources, JudgeScore, ScoreRequest, StoredScore, register_judge

if TYPE_CHECKING:
    from activepref.config import JudgeConfig


class ReplayJudge:
    name = "replay"
    batch_size = 1  # every reveal is committed on its own

    def __init__(self, stored_score: StoredScore) -> None:
        self._stored_score = stored_score
        self.reveals = 0

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]:
        return [self._reveal(r) for r in requests]

    def _reveal(self, request: ScoreRequest) -> JudgeScore | JudgeError:
        value, aspects = self._stored_score(request.response_idx)
        self.reveals += 1
        if value is None or not math.isfinite(value):
            return JudgeError(f"response {request.response.id!r} has no stored score in the pool")
        return JudgeScore(float(value), aspects or None)


@register_judge(
    "replay", "Reveal the pool's stored scores on request (simulation; each reveal is one annotation).",
    needs_model=False, pool_scores=True,
)
def make_replay_judge(config: JudgeConfig, resources: JudgeResources) -> ReplayJudge:
    if resources.stored_score is None:
        raise ConfigError("judge.kind replay reads the pool's stored scores, and this run has no pool")
    return ReplayJudge(resources.stored_score)
