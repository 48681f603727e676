"""Acquisition scores of active preference learning for DPO (seed 004 §3.1), as plain functions.

- :func:`completion_ids`: how a (prompt messages, completion text) pair is tokenised, exactly
  as TRL's ``DPOTrainer`` does for conversational rows: the prompt through the chat template
  with the generation prompt, the whole conversation through the template, and the completion
  = the tokens after their common prefix (the closing end-of-turn tokens included).
- :func:`sequence_logprobs`: log pθ(y|x) = Σ over completion tokens of log-softmax(logits),
  batched with right padding; prompt tokens and padding contribute nothing.
- :func:`generated_length`: the completion tokens the model sampled itself (the template's
  closing tokens excluded, the stop token kept when the model stopped): eq. 8's log pθ(yⁿ|x)
  is over those, while DPO (and so the implicit reward) sees the whole templated completion.
- :func:`predictive_entropy` (eq. 8): −(1/N) Σₙ log pθ(yⁿ|x) over N samples from pθ(·|x).
- :func:`implicit_rewards` (eq. 5): r̂ = β (log pθ(y|x) − log pθ₀(y|x)).
- :func:`certainty` (eq. 9): |r̂(x, y₁) − r̂(x, y₂)|.
- :func:`top_m`: the M best scores, ties broken by a seeded random order (at θ = θ₀ every
  certainty is 0, so the first round of ``certainty`` is a random draw, as 004 observes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from activepref.backends.transformers_local import prompt_ids
from activepref.extras import require

Messages = list[dict[str, str]]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def completion_ids(tokenizer: Any, messages: Messages, completion: str) -> tuple[list[int], list[int]]:
    """(context ids, completion ids) of ``completion`` as the assistant's answer to ``messages``."""
    prompt = prompt_ids(tokenizer, messages, add_generation_prompt=True)
    full = prompt_ids(tokenizer, [*messages, {"role": "assistant", "content": completion}], add_generation_prompt=False)
    k = common_prefix_length(prompt, full)
    return full[:k], full[k:]


def generated_length(tokenizer: Any, messages: Messages, completion: Sequence[int], stopped: bool) -> int:
    """How many of ``completion``'s tokens the model itself produced: the tokens the chat
    template adds after an answer (e.g. ``<|im_end|>`` and a newline) are not, except the stop
    token when the model stopped by emitting it (``stopped``). A sample cut by ``max_tokens``
    never produced an end-of-turn token, so none of the closing tokens count."""
    _, closing = completion_ids(tokenizer, messages, "")
    n = len(completion)
    if closing and list(completion[n - len(closing) :]) == list(closing):
        return n - len(closing) + (1 if stopped else 0)
    return n


def sequence_logprobs(
    model: Any, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, pad_id: int = 0,
    prefix_lengths: Sequence[int] | None = None,
) -> np.ndarray:
    """Σ log p(completion token | everything before it) for each (context ids, completion ids),
    as float64; with ``prefix_lengths``, over the first ``prefix_lengths[i]`` completion tokens
    of sequence i only. See :func:`completion_logprob_sums`."""
    full, prefix = completion_logprob_sums(model, sequences, batch_size, pad_id, prefix_lengths)
    return full if prefix_lengths is None else prefix


def completion_logprob_sums(
    model: Any, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, pad_id: int = 0,
    prefix_lengths: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(Σ over all completion tokens, Σ over the first ``prefix_lengths[i]`` of them) of
    log p(token | everything before it), both float64 and from one forward pass; without
    ``prefix_lengths`` the second equals the first. Sequences are sorted by length,
    right-padded and run ``batch_size`` at a time under ``torch.no_grad`` in the model's current
    dtype/device; the log-softmax is taken in float32."""
    torch = require("torch")
    full = np.zeros(len(sequences), dtype=np.float64)
    prefix = np.zeros(len(sequences), dtype=np.float64)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                rows = [list(sequences[i][0]) + list(sequences[i][1]) for i in idx]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
                attn = torch.zeros((len(rows), width), dtype=torch.long)
                full_mask = torch.zeros((len(rows), width), dtype=torch.bool)
                prefix_mask = torch.zeros((len(rows), width), dtype=torch.bool)
                for j, i in enumerate(idx):
                    ctx, comp = sequences[i]
                    n = len(ctx) + len(comp)
                    ids[j, :n] = torch.tensor(rows[j], dtype=torch.long)
                    attn[j, :n] = 1
                    full_mask[j, len(ctx) : n] = True
                    k = len(comp) if prefix_lengths is None else min(int(prefix_lengths[i]), len(comp))
                    prefix_mask[j, len(ctx) : len(ctx) + k] = True
                logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                picked = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
                full[idx] = (picked * full_mask[:, 1:].to(device)).sum(dim=1).double().cpu().numpy()
                prefix[idx] = (picked * prefix_mask[:, 1:].to(device)).sum(dim=1).double().cpu().numpy()
    finally:
        model.train(was_training)
    return full, prefix


def predictive_entropy(logps: np.ndarray) -> np.ndarray:
    """[P, N] sequence log-probs of N samples per prompt -> [P] Monte-Carlo entropy (eq. 8)."""
    logps = np.asarray(logps, dtype=np.float64)
    if logps.ndim != 2 or logps.shape[1] < 1:
        raise ValueError(f"expected [prompts, samples] log-probs, got shape {logps.shape}")
    return -logps.mean(axis=1)


def implicit_rewards(policy_logps: np.ndarray, ref_logps: np.ndarray, beta: float) -> np.ndarray:
    """β (log πθ(y|x) − log πθ₀(y|x)), elementwise (eq. 5)."""
    return beta * (np.asarray(policy_logps, dtype=np.float64) - np.asarray(ref_logps, dtype=np.float64))


def certainty(rewards: np.ndarray) -> np.ndarray:
    """[P, 2] implicit rewards of the two completions per prompt -> [P] |r̂₁ − r̂₂| (eq. 9)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2 or rewards.shape[1] != 2:
        raise ValueError(f"expected [prompts, 2] rewards, got shape {rewards.shape}")
    return np.abs(rewards[:, 0] - rewards[:, 1])


def top_m(scores: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``m`` highest scores, best first; equal scores in a random order drawn
    from ``rng`` (one permutation of all indices, so the draw does not depend on ``m``)."""
    scores = np.asarray(scores, dtype=np.float64)
    tiebreak = rng.permutation(len(scores))
    order = np.lexsort((tiebreak, -scores))
    return order[: max(0, min(int(m), len(scores)))]
