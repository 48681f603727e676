"""APL acquisition scores against direct computation from the model's token log-probabilities
(seed 004 §3.1): prompt tokens and padding excluded, tokenisation as TRL's DPOTrainer does it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tiny_models as tm
from hypothesis import given, settings
from hypothesis import strategies as st

from activepref.apl.scores import (
    certainty,
    common_prefix_length,
    completion_ids,
    generated_length,
    implicit_rewards,
    predictive_entropy,
    sequence_logprobs,
    top_m,
)

torch = pytest.importorskip("torch")

COMPLETIONS = ["good", "the cat is good", "no", "write a long story about the sun and the moon because why not", "yes yes"]


@pytest.fixture(scope="module")
def tok():
    return tm.make_tokenizer(padding_side="right")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tm.make_causal_lm(seed=3)


def reference_logprob(model, context: list[int], completion: list[int]) -> float:
    """One sequence alone, no padding: Σ_t log softmax(logits[t-1])[id_t] over completion positions,
    the log-sum-exp done in float64 by hand."""
    ids = torch.tensor([context + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for t in range(len(context), len(context) + len(completion)):
        row = logits[t - 1]
        lse = float(row.max() + torch.log(torch.exp(row - row.max()).sum()))
        total += float(row[ids[0, t]]) - lse
    return total


def test_completion_ids_split_the_conversation_where_the_prompt_ends(tok) -> None:
    messages = tm.conversation("please explain why the sun is good")
    ctx, comp = completion_ids(tok, messages, "the sun is good")
    assert tok.decode(comp) == "the sun is good <eos>"  # the answer and the template's closing EOS
    assert ctx == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix_length([1], [1, 2]) == 1


def test_completion_ids_equal_what_trl_dpo_trains_on(tok, model, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    prompts = tm.PROMPTS[:3]
    rows = [
        {"prompt": tm.conversation(p), "chosen": [{"role": "assistant", "content": COMPLETIONS[i]}],
         "rejected": [{"role": "assistant", "content": COMPLETIONS[i + 1]}]}
        for i, p in enumerate(prompts)
    ]
    args = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=256, per_device_train_batch_size=3)
    trainer = trl.DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    for i, p in enumerate(prompts):
        row = trainer.train_dataset[i]
        ctx, chosen = completion_ids(tok, tm.conversation(p), COMPLETIONS[i])
        _, rejected = completion_ids(tok, tm.conversation(p), COMPLETIONS[i + 1])
        assert list(row["prompt_ids"]) == ctx
        assert list(row["chosen_ids"]) == chosen
        assert list(row["rejected_ids"]) == rejected


def test_sequence_logprobs_match_trl_dpo_logps_before_the_first_update(tok, model, tmp_path) -> None:
    """TRL logs the batch mean of Σ log πθ(chosen tokens) of the first step, computed before
    the step's update: our scores of the same rows must give the same number."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    prompts = tm.PROMPTS[:4]
    rows = [
        {"prompt": tm.conversation(p), "chosen": [{"role": "assistant", "content": COMPLETIONS[i]}],
         "rejected": [{"role": "assistant", "content": COMPLETIONS[(i + 2) % 5]}]}
        for i, p in enumerate(prompts)
    ]
    args = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=256,
                         per_device_train_batch_size=4, num_train_epochs=1, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = trl.DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "logps/chosen" in h)
    chosen = [completion_ids(tok, r["prompt"], r["chosen"][0]["content"]) for r in rows]
    rejected = [completion_ids(tok, r["prompt"], r["rejected"][0]["content"]) for r in rows]
    assert float(np.mean(sequence_logprobs(model, chosen))) == pytest.approx(logged["logps/chosen"], abs=1e-3)
    assert float(np.mean(sequence_logprobs(model, rejected))) == pytest.approx(logged["logps/rejected"], abs=1e-3)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_sequence_logprobs_equal_the_unbatched_token_sum(tok, model, batch_size) -> None:
    seqs = [completion_ids(tok, tm.conversation(p), c) for p, c in zip(tm.PROMPTS, COMPLETIONS * 2)]
    got = sequence_logprobs(model, seqs, batch_size=batch_size, pad_id=tok.pad_token_id)
    want = [reference_logprob(model, list(c), list(y)) for c, y in seqs]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_prompt_tokens_and_padding_contribute_nothing(tok, model) -> None:
    ctx, comp = completion_ids(tok, tm.conversation("hello"), "the cat is good")
    long_ctx, _ = completion_ids(tok, tm.conversation("is the cat a dog or not because the moon and the tree"), "x")
    alone = sequence_logprobs(model, [(ctx, comp)], batch_size=1)[0]
    # batched next to a much longer sequence (lots of padding on this row): same value
    padded = sequence_logprobs(model, [(ctx, comp), (long_ctx, comp)], batch_size=2, pad_id=tok.pad_token_id)[0]
    assert padded == pytest.approx(alone, abs=1e-4)
    # the sum has exactly len(comp) terms: each is a log-probability, so it is below 0 and
    # equals the per-token reference, not a sum that includes the prompt
    per_token = [reference_logprob(model, list(ctx) + list(comp[:k]), [comp[k]]) for k in range(len(comp))]
    assert alone == pytest.approx(sum(per_token), abs=1e-4)
    assert sequence_logprobs(model, [(ctx, [])])[0] == 0.0


def test_generated_length_drops_the_template_closing_except_a_generated_stop(tok) -> None:
    messages = tm.conversation("hello")
    _, comp = completion_ids(tok, messages, "the cat is good")
    assert tok.decode(comp[-1:]) == "<eos>"
    assert generated_length(tok, messages, comp, stopped=True) == len(comp)  # the model emitted <eos>
    assert generated_length(tok, messages, comp, stopped=False) == len(comp) - 1  # cut by max_tokens


def test_prefix_lengths_sum_only_the_first_tokens(tok, model) -> None:
    seqs = [completion_ids(tok, tm.conversation(p), c) for p, c in zip(tm.PROMPTS, COMPLETIONS)]
    lengths = [max(0, len(comp) - 1 - (i % 2)) for i, (_, comp) in enumerate(seqs)]
    got = sequence_logprobs(model, seqs, batch_size=3, pad_id=tok.pad_token_id, prefix_lengths=lengths)
    want = [reference_logprob(model, list(c), list(y[:k])) for (c, y), k in zip(seqs, lengths)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_sequence_logprobs_leave_the_model_mode_alone(tok, model) -> None:
    model.train()
    sequence_logprobs(model, [completion_ids(tok, tm.conversation("hello"), "good")])
    assert model.training
    model.eval()


# -- the acquisition functions ----------------------------------------------------------------


def test_hand_checked_scores() -> None:
    logps = np.array([[-10.0, -20.0, -30.0], [-1.0, -2.0, -3.0]])
    np.testing.assert_allclose(predictive_entropy(logps), [20.0, 2.0])
    r = implicit_rewards(np.array([[-10.0, -12.0]]), np.array([[-11.0, -11.0]]), beta=0.5)
    np.testing.assert_allclose(r, [[0.5, -0.5]])
    np.testing.assert_allclose(certainty(r), [1.0])
    with pytest.raises(ValueError):
        certainty(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        predictive_entropy(np.zeros(3))


finite = st.floats(-200, 0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.data())
def test_entropy_is_minus_the_mean_sample_logprob(p, n, data) -> None:
    logps = np.array(data.draw(st.lists(st.lists(finite, min_size=n, max_size=n), min_size=p, max_size=p)))
    want = [-sum(row) / len(row) for row in logps.tolist()]
    np.testing.assert_allclose(predictive_entropy(logps), want, rtol=1e-12, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.floats(0.01, 5), st.data())
def test_certainty_is_the_absolute_implicit_reward_gap(p, beta, data) -> None:
    pol = np.array(data.draw(st.lists(st.lists(finite, min_size=2, max_size=2), min_size=p, max_size=p)))
    ref = np.array(data.draw(st.lists(st.lists(finite, min_size=2, max_size=2), min_size=p, max_size=p)))
    got = certainty(implicit_rewards(pol, ref, beta))
    want = [abs(beta * (a1 - r1) - beta * (a2 - r2)) for (a1, a2), (r1, r2) in zip(pol.tolist(), ref.tolist())]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]), min_size=1, max_size=12), st.integers(0, 14), st.integers(0, 2**31 - 1))
def test_top_m_takes_the_best_and_breaks_ties_by_the_seeded_permutation(scores, m, seed) -> None:
    got = top_m(np.array(scores), m, np.random.default_rng(seed))
    perm = np.random.default_rng(seed).permutation(len(scores)).tolist()
    reference = sorted(range(len(scores)), key=lambda i: (-scores[i], perm[i]))[: min(m, len(scores))]
    assert got.tolist() == reference
    assert len(set(got.tolist())) == len(got)


def test_certainty_at_theta0_is_zero_so_the_first_pick_is_random() -> None:
    logp = np.array([[-3.0, -4.0], [-1.0, -9.0], [-2.0, -2.5]])
    cert = certainty(implicit_rewards(logp, logp, beta=0.1))
    assert np.all(cert == 0)
    picks = {tuple(top_m(cert, 1, np.random.default_rng(s)).tolist()) for s in range(20)}
    assert len(picks) == 3  # every prompt gets picked for some seed
