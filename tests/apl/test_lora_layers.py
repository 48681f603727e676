"""LoRA adapters restricted to the last decoder layers (``dpo.lora.last_layers``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("trl")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tiny_models as tm  # noqa: E402

from activepref.apl.config import DPOSettings, LoraConfig  # noqa: E402
from activepref.apl.policy import dpo_finetune, dpo_rows, trainable_copy  # noqa: E402


@pytest.mark.parametrize("last_layers", [None, 1])
def test_adapters_in_the_last_layers_leave_the_lower_layers_untouched(tmp_path, last_layers) -> None:
    torch.manual_seed(0)
    base = trainable_copy(tm.make_causal_lm(seed=0, layers=3))
    tokenizer = tm.make_tokenizer()
    pairs = [([{"role": "user", "content": f"question {i}"}], f"good answer {i} here", f"bad {i}") for i in range(8)]
    settings = DPOSettings(beta=0.1, learning_rate=0.05, epochs=2, batch_size=4, max_length=64,
                           lora=LoraConfig(r=4, alpha=8, last_layers=last_layers))
    trained, _ = dpo_finetune(base, base, tokenizer, dpo_rows(pairs), settings, seed=0, workdir=tmp_path)
    before, after = base.state_dict(), trained.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    in_layer = lambda i: {n for n in changed if f"layers.{i}." in n}  # noqa: E731
    assert in_layer(2), "the last layer was not trained"
    if last_layers == 1:
        assert not in_layer(0) and not in_layer(1)
        assert changed == in_layer(2)
    else:
        assert in_layer(0) and in_layer(1)
