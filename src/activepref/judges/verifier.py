"""The verifier judge: scores a response by the prompt's verifiable instructions
(:mod:`activepref.ifeval`), no model involved.

score = prompt-level loose accuracy + instruction-level loose share, in [0, 2] (see
``ifeval.scoring``). With ``options: {noise_sd: s}`` it adds Gaussian noise of standard
deviation ``s`` to each score, drawn from (run seed, response id) so a resumed run sees the
same noisy label: a stand-in for a careful but fallible human. A prompt without instructions
is a judge failure, never a default score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from activepref.core.determinism import Stage, stage_rng, text_key
from activepref.errors import JudgeError
from activepref.ifeval.scoring import verify
from activepref.judges import JudgeResources, JudgeScore, ScoreRequest, register_judge

if TYPE_CHECKING:
    from activepref.config import JudgeConfig


class VerifierJudge:
    batch_size = 256

    def __init__(self, noise_sd: float = 0.0, seed: int = 0) -> None:
        self.noise_sd = noise_sd
        self.seed = seed
        self.name = "verifier" if noise_sd == 0 else f"verifier|noise_sd={noise_sd:g}"

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]:
        return [self._score(r) for r in requests]

    def _score(self, request: ScoreRequest) -> JudgeScore | JudgeError:
        instructions = request.prompt.meta.get("instructions")
        if not instructions:
            return JudgeError(f"prompt {request.prompt.id!r} has no verifiable instructions (the pool's `instructions` column)")
        verdict = verify(instructions, request.response.text)
        value = verdict.oracle
        if self.noise_sd > 0:
            value += self.noise_sd * float(stage_rng(self.seed, 0, Stage.LABEL_NOISE, text_key(request.response.id)).normal())
        aspects = {"prompt_loose": float(verdict.prompt_loose), "inst_loose": verdict.inst_loose,
                   "prompt_strict": float(verdict.prompt_strict), "inst_strict": verdict.inst_strict}
        return JudgeScore(value, aspects)


class VerifierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise_sd: float = Field(0.0, ge=0, description="standard deviation of Gaussian noise added to each score (0: clean labels)")


@register_judge(
    "verifier", "Score by the prompt's verifiable instructions (IFEval-style checks), optionally with Gaussian label noise.",
    needs_model=False, options=VerifierOptions,
)
def make_verifier_judge(config: JudgeConfig, resources: JudgeResources) -> VerifierJudge:
    options = VerifierOptions.model_validate(config.options)
    return VerifierJudge(options.noise_sd, resources.seed)
