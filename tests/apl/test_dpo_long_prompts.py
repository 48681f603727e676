"""DPO on pairs whose prompt alone fills ``max_length``: TRL drops them; when that is every pair
the policy comes back unchanged instead of TRL failing on an empty dataset (a one-pair budget
fraction with a long prompt crashed benchmarks/dpo_downstream.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
trl = pytest.importorskip("trl")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tiny_models as tm  # noqa: E402

from activepref.apl.config import DPOSettings, LoraConfig  # noqa: E402
from activepref.apl.policy import count_too_long, dpo_finetune, dpo_rows, trainable_copy  # noqa: E402


def pairs(words: list[int]) -> list[tuple[list[dict[str, str]], str, str]]:
    """One pair per entry, its prompt ``n`` words long."""
    return [([{"role": "user", "content": " ".join(["question"] * n)}], f"good answer {i}", f"bad {i}") for i, n in enumerate(words)]


def trl_kept(base, tokenizer, rows, max_length: int, tmp_path: Path) -> int:
    """How many rows TRL's own preprocessing keeps (the reference for count_too_long)."""
    args = trl.DPOConfig(output_dir=str(tmp_path), max_length=max_length, use_cpu=True, report_to=[], precompute_ref_log_probs=False)
    import copy

    import datasets

    trainer = trl.DPOTrainer(model=copy.deepcopy(base), ref_model=copy.deepcopy(base), args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    return len(trainer.train_dataset)


# A template that renders the prompt alone with an empty "thought" after the generation prompt
# (three tokens the prompt + answer rendering does not have), as some thinking models' do: TRL then
# counts only the tokens both renderings share as the prompt.
THINKING_TEMPLATE = tm.CHAT_TEMPLATE.replace("<turn> assistant {% endif %}", "<turn> assistant maybe maybe maybe {% endif %}")


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("words", [[3, 40, 5, 60], [30, 31, 2], [1, 2, 3]])
def test_count_too_long_is_what_trl_drops(tmp_path: Path, words: list[int], thinking: bool) -> None:
    base = trainable_copy(tm.make_causal_lm(seed=0, layers=2))
    tokenizer = tm.make_tokenizer()
    if thinking:
        tokenizer.chat_template = THINKING_TEMPLATE
    rows = dpo_rows(pairs(words))
    lengths = [8, 32, 40]
    if thinking:  # around each prompt's length, where counting the whole templated prompt would differ from TRL
        from activepref.backends.transformers_local import prompt_ids

        alone = sorted({len(prompt_ids(tokenizer, row["prompt"])) for row in rows})
        lengths = sorted({n + d for n in alone for d in (-3, -1, 0, 1)})
        assert any(n - 3 < m <= n for n in alone for m in lengths)  # cases the whole-prompt count gets wrong
    for max_length in lengths:
        assert len(rows) - count_too_long(tokenizer, rows, max_length) == trl_kept(base, tokenizer, rows, max_length, tmp_path), max_length
    assert count_too_long(tokenizer, rows, None) == 0
    assert count_too_long(tokenizer, rows, 8, truncation_mode="keep_end") == 0  # TRL drops nothing then


def test_all_prompts_too_long_leaves_the_policy_unchanged_and_some_trains_on_the_rest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = trainable_copy(tm.make_causal_lm(seed=0, layers=2))
    tokenizer = tm.make_tokenizer()
    settings = DPOSettings(beta=0.1, learning_rate=0.05, epochs=1, batch_size=2, max_length=24, lora=LoraConfig(r=4, alpha=8))
    trained, metrics = dpo_finetune(base, base, tokenizer, dpo_rows(pairs([40])), settings, seed=0, workdir=tmp_path / "a")
    assert metrics["steps"] == 0 and metrics["pairs"] == 1 and metrics["pairs_too_long"] == 1
    assert trained is not base and all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), trained.state_dict().values()))

    trained, metrics = dpo_finetune(base, base, tokenizer, dpo_rows(pairs([40, 2, 3, 50])), settings, seed=0, workdir=tmp_path / "b")
    assert metrics["pairs"] == 4 and metrics["pairs_too_long"] == 2 and metrics["steps"] == 1  # two kept pairs: one batch of 2
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), trained.state_dict().values()))
