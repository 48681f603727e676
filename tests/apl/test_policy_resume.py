"""Issue 11 for APL: the policy a round leaves in memory (used by an uninterrupted run for the
next round) and the one a resumed run reads back from the round's checkpoint must be the same
model -- weights, config, generation config, mode and the forward it runs -- so they sample,
score and train alike.

What this caught: TRL patches the model it trains with an instance-level ``forward`` whose
closure holds that object's original forward; a deep copy of a trained policy (the start of
continued training) shared the closure, so after round 2 the "trained" policy ran round 1's
weights whenever it sampled, scored or was evaluated (in the uninterrupted run only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_models as tm
import torch

from activepref.apl.config import DPOSettings
from activepref.apl.policy import dpo_finetune, dpo_rows, load_checkpoint, save_checkpoint, trainable_copy
from activepref.backends.base import ChatRequest, ChatResult, SamplingParams
from activepref.backends.transformers_local import TransformersBackend

pytest.importorskip("trl")

PAIRS = [
    ("why is the sun good", "the sun is good good", "it is bad"),
    ("write a poem", "good poem", "a long and bad poem about a tree"),
    ("how is the cat", "the cat is good", "cat"),
    ("rate the reply", "good", "the reply is bad"),
]


def _same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    assert a.training is False and b.training is False
    assert a.config.to_dict() == b.config.to_dict()
    assert a.generation_config.to_dict() == b.generation_config.to_dict()


def _own_logits_agree(model) -> None:
    """Calling the model must compute with its own weights (the class's forward)."""
    ids = torch.tensor([[1, 5, 9, 13, 20, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, type(model).forward(model, ids).logits)
    assert "forward" not in vars(model)


def _sample(model, tokenizer) -> list[tuple[str, str | None]]:
    backend = TransformersBackend(model, tokenizer, batch_size=4)
    requests = [
        ChatRequest.from_messages(tm.conversation(p), SamplingParams(temperature=1.0, top_p=1.0, max_tokens=8, seed=s))
        for s, (p, _, _) in enumerate(PAIRS)
    ]
    out: dict[int, ChatResult] = {}
    backend.complete(requests, out.__setitem__)
    return [(out[i].text, out[i].finish_reason) for i in range(len(requests))]


def test_the_policy_in_memory_and_its_reloaded_checkpoint_are_the_same_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tokenizer = tm.make_tokenizer()
    theta0 = trainable_copy(tm.make_causal_lm(seed=0))
    settings = DPOSettings(learning_rate=5e-3, epochs=2, batch_size=2)
    rows = dpo_rows([(tm.conversation(p), c, r) for p, c, r in PAIRS])
    trained, metrics = dpo_finetune(theta0, theta0, tokenizer, rows, settings, seed=3, workdir=tmp_path / "w1")
    assert metrics["steps"] >= 2
    save_checkpoint(trained, tmp_path / "round-1.safetensors")
    reloaded = load_checkpoint(theta0, tmp_path / "round-1.safetensors")
    _same_model(trained, reloaded)
    assert not torch.equal(trained.state_dict()["lm_head.weight"], theta0.state_dict()["lm_head.weight"])  # it did train
    assert _sample(trained, tokenizer) == _sample(reloaded, tokenizer)
    # Continued training (dpo.reinit: false) from either copy gives the same next policy.
    next_a, _ = dpo_finetune(trained, theta0, tokenizer, rows, settings, seed=4, workdir=tmp_path / "w2")
    next_b, _ = dpo_finetune(reloaded, theta0, tokenizer, rows, settings, seed=4, workdir=tmp_path / "w3")
    _same_model(next_a, next_b)
    for model in (trained, reloaded, next_a, next_b):
        _own_logits_agree(model)
    assert _sample(next_a, tokenizer) == _sample(next_b, tokenizer)
    assert _sample(next_a, tokenizer) != _sample(trained, tokenizer)  # round 2 moved the policy
