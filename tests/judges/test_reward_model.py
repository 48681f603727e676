"""Reward-model judge against a direct forward pass of a tiny sequence-classification Llama."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import conversation, make_seq_cls, make_tokenizer, save  # noqa: E402

from activepref.config import JudgeConfig  # noqa: E402
from activepref.judges import JudgeResources, JudgeScore, ScoreRequest, make_judge  # noqa: E402
from activepref.pools.records import (
    Prompt,
    Response,  # noqa: E402
)


def test_reward_model_judge_scores_like_a_direct_forward_pass(tmp_path: Path) -> None:
    tok = make_tokenizer(padding_side="right")
    model = make_seq_cls(seed=3)
    path = save(model, tok, tmp_path / "rm")
    config = JudgeConfig(kind="reward_model", model={"backend": "transformers", "model": str(path)})
    judge = make_judge(config, JudgeResources())
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


def test_the_judge_model_config_reaches_the_reward_model_device_included(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: judge.device was refused by the flat JudgeConfig, so a reward-model judge could
    only run on the CPU. The nested judge.model carries device and dtype to the judge."""
    from activepref.judges import reward_model

    seen = {}

    class Recorder:
        def __init__(self, model: str, gguf_file: str | None, dtype: str, device: str) -> None:
            seen.update(model=model, gguf_file=gguf_file, dtype=dtype, device=device)

    monkeypatch.setattr(reward_model, "RewardModelJudge", Recorder)
    config = JudgeConfig.model_validate(
        {"kind": "reward_model", "model": {"backend": "transformers", "model": "rm-dir", "device": "cuda:1", "dtype": "bfloat16"}}
    )
    make_judge(config, JudgeResources())
    assert seen == {"model": "rm-dir", "gguf_file": None, "dtype": "bfloat16", "device": "cuda:1"}


def test_a_reward_model_judge_on_a_server_backend_is_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match="runs on backend transformers, not 'openai'"):
        JudgeConfig.model_validate({"kind": "reward_model", "model": {"backend": "openai", "model": "rm"}})
