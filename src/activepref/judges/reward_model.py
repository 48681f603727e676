"""Reward-model judge: the scalar output of a sequence-classification reward model (e.g. a
Skywork-Reward checkpoint) on the chat-templated (prompt, response) conversation.

Runs locally through the transformers backend's model cache; each conversation is scored
unpadded, so the result never depends on batch composition or on the model's pad token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from activepref.errors import JudgeError
from activepref.judges import JudgeResources, JudgeScore, ScoreRequest, register_judge

if TYPE_CHECKING:
    from activepref.config import JudgeConfig


class RewardModelJudge:
    batch_size = 64

    def __init__(self, model: str, gguf_file: str | None = None, dtype: str = "float32", device: str = "cpu", max_length: int = 4096) -> None:
        from activepref.backends.transformers_local import load_model

        self.entry = load_model(model, gguf_file, dtype, device, "seq_cls")
        self.max_length = max_length
        self.name = f"reward_model|{model}" + (f"|{gguf_file}" if gguf_file else "")

    def _ids(self, req: ScoreRequest) -> list[int]:
        from activepref.backends.transformers_local import prompt_ids

        messages = [*req.prompt.conversation(), {"role": "assistant", "content": req.response.text}]
        tok = self.entry.tokenizer
        ids = prompt_ids(tok, messages, add_generation_prompt=False) if getattr(tok, "chat_template", None) else list(
            tok(req.prompt.text + "\n\n" + req.response.text)["input_ids"]
        )
        return ids[-self.max_length :]  # keep the end: the response's last token is what the head reads

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[JudgeScore | JudgeError]:
        import torch

        model = self.entry.model
        device = next(model.parameters()).device
        out: list[JudgeScore | JudgeError] = []
        for req in requests:
            try:
                ids = torch.tensor([self._ids(req)], device=device)
                with self.entry.lock, torch.inference_mode():
                    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                value = float(logits[0, 0])
            except Exception as exc:  # a model error on one input must not lose the others
                out.append(JudgeError(f"reward model failed on response {req.response.id!r}: {exc}"))
                continue
            out.append(JudgeScore(value))
        return out


@register_judge(
    "reward_model", "Sequence-classification reward model: the scalar score of (prompt, response).",
    backends=["transformers"],
)
def make_reward_model_judge(config: JudgeConfig, resources: JudgeResources) -> RewardModelJudge:
    m = config.require_model()
    return RewardModelJudge(m.model, m.gguf_file, m.dtype, m.device)
