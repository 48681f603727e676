"""Reward-model judge against a direct forward pass of a tiny sequence-classification Llama."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import conversation, make_seq_cls, make_tokenizer, save  # noqa: E402

from activepref.data import Prompt, Response  # noqa: E402
from activepref.judges import JudgeScore, ScoreRequest, make_judge  # noqa: E402


def test_reward_model_judge_scores_like_a_direct_forward_pass(tmp_path: Path) -> None:
    tok = make_tokenizer(padding_side="right")
    model = make_seq_cls(seed=3)
    path = save(model, tok, tmp_path / "rm")
    judge = make_judge("reward_model", model=str(path))
    reqs = [
        ScoreRequest(0, Prompt("p", "hello there"), Response("a", "p", "m", "good answer")),
        ScoreRequest(1, Prompt("p", "hello there"), Response("b", "p", "m", "bad bad answer here")),
    ]
    results = judge.score_batch(reqs)
    assert all(isinstance(r, JudgeScore) for r in results)
    for req, res in zip(reqs, results):
        ids = tok.apply_chat_template(conversation(req.prompt.text, req.response.text), tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            direct = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
        assert res.value == pytest.approx(direct, rel=1e-5, abs=1e-6)  # type: ignore[union-attr]
    assert results[0].value != results[1].value  # type: ignore[union-attr]
