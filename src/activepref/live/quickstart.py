"""`activepref quickstart`: the whole loop for real, offline, on models shipped in PyPI packages.

16 MT-bench prompts (two per category), candidates from two local model configurations
(SmolLM2-135M-Instruct at two temperatures, or SmolLM2 and Qwen2.5-Coder-0.5B when the
latter's packages are installed), features from SmolLM2's last layer at the last token,
DTS selection, the probabilistic Likert judge from local logits (Qwen when installed, else
SmolLM2), ENN retraining, then a TRL dataset, a summary and a plot.
"""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from activepref.config import RunConfig
from activepref.errors import ActivePrefError
from activepref.live.local_models import LocalModelMissing, qwen_coder_if_installed, smollm2_gguf
from activepref.pools.reader import read_prompts

QUICKSTART_PROMPTS = 16
QUICKSTART_BATCH = 4  # prompts per iteration -> 4 iterations


def mtbench_questions_path() -> Path:
    return Path(str(resources.files("activepref") / "resources" / "mtbench_questions.jsonl"))


def write_quickstart_prompts(path: Path, n: int = QUICKSTART_PROMPTS) -> Path:
    """The first ``n // 8`` questions of each MT-bench category, first turn only."""
    rows = [json.loads(line) for line in mtbench_questions_path().read_text(encoding="utf-8").splitlines() if line.strip()]
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    per = max(n // len(by_category), 1)
    chosen = [r for cat in sorted(by_category) for r in by_category[cat][:per]][:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in chosen:
            fh.write(json.dumps({"prompt_id": f"mtbench-{r['question_id']}", "prompt": r["turns"][0], "category": r["category"]}) + "\n")
    read_prompts(path)  # validate what we wrote
    return path


def quickstart_config(
    out: Path, n_prompts: int = QUICKSTART_PROMPTS, method: str = "dts", seed: int = 0, max_tokens: int = 96, use_qwen: bool = True
) -> RunConfig:
    try:
        smol_dir, smol_file = smollm2_gguf()
    except LocalModelMissing as exc:
        raise ActivePrefError(f"quickstart needs the shipped SmolLM2 model: {exc}") from None
    prompts = write_quickstart_prompts(out / "prompts.jsonl", n_prompts)
    smol = {"backend": "transformers", "model": smol_dir, "gguf_file": smol_file, "batch_size": 8}
    qwen = qwen_coder_if_installed() if use_qwen else None
    if qwen is not None:
        models = [
            {"name": "smollm2-135m", **smol},
            {"name": "qwen2.5-coder-0.5b", "backend": "transformers", "model": qwen[0], "gguf_file": qwen[1], "batch_size": 8},
        ]
        judge = {"backend": "transformers", "model": qwen[0], "gguf_file": qwen[1], "batch_size": 8}
    else:
        models = [
            {"name": "smollm2-135m-t0.6", **smol, "temperature": 0.6},
            {"name": "smollm2-135m-t1.1", **smol, "temperature": 1.1},
        ]
        judge = dict(smol)
    return RunConfig.model_validate({
        "prompts": str(prompts),
        "method": method,
        "seed": seed,
        "batch_size": QUICKSTART_BATCH,
        "generation": {"models": models, "samples_per_model": 2, "max_tokens": max_tokens, "temperature": 1.0},
        "embedding": {"backend": "transformers", "model": smol_dir, "gguf_file": smol_file, "batch_size": 8, "max_length": 512},
        "judge": {"kind": "likert", "model": {"name": "judge", **judge}},
        "cache_path": str(out / "requests.sqlite"),
        # 16 prompts: a faster learner than the paper's lr 5e-5 (see the README).
        "enn": {"lr": 1e-3, "zeta_decay": 0.9},
    })
