"""Shared pieces of the APL tests: a tiny random policy saved to disk, a pairwise judge served
by the fake OpenAI-compatible server (it prefers the response with more occurrences of the word
"good", then the shorter one, so it is a consistent, learnable oracle), and a config writer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tiny_models as tm
from servers.fake_openai import Action

PROMPT_WORDS = [
    "please explain why the sun is good", "write a short poem", "what is the score of the answer",
    "how is the cat", "rate the reply", "hello world", "why is the moon good", "write a long story",
    "explain the river", "is the dog good or bad", "what is python code", "sort the list",
    "who is the cat", "when is the sun", "which tree is good", "where is the river",
    "explain the number", "write a fact", "is it true or false", "what is a poem",
]


def save_tiny_policy(root: Path, seed: int = 0) -> Path:
    return tm.save(tm.make_causal_lm(seed=seed), tm.make_tokenizer(), root / "tiny-policy")


def write_prompt_file(path: Path, texts: list[str] = PROMPT_WORDS) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"prompt_id": f"p{i:02d}", "prompt": t}) + "\n")
    return path


def _responses(user: str) -> tuple[str, str] | None:
    m = re.search(r"## Response A\n(.*?)\n\n## Response B\n(.*?)\n\n## Question", user, re.S)
    return (m.group(1), m.group(2)) if m else None


def oracle_prefers_first(a: str, b: str) -> bool:
    key_a = (a.split().count("good"), -len(a.split()))
    key_b = (b.split().count("good"), -len(b.split()))
    return key_a >= key_b


class PairwiseScript:
    """Callable script for FakeOpenAIServer: answers pairwise judge prompts with A/B
    log-probabilities from :func:`oracle_prefers_first`; ``garbage`` makes every answer letterless."""

    def __init__(self, garbage: bool = False) -> None:
        self.garbage = garbage
        self.judged: list[tuple[str, str]] = []

    def __call__(self, n: int, body: dict) -> Action | None:
        user = body["messages"][-1]["content"]
        pair = _responses(user)
        if pair is None:
            return None
        self.judged.append(pair)
        if self.garbage:
            return Action.reply("Well", top_logprobs=[("Well", -0.1), ("The", -2.0)])
        first = oracle_prefers_first(*pair)
        return Action.reply("A" if first else "B", top_logprobs=[("A", -0.05 if first else -3.0), ("B", -3.0 if first else -0.05)])


def apl_config(root: Path, policy: Path, prompts: Path, base_url: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "prompts": str(prompts),
        "eval_size": 4,
        "policy": {"backend": "transformers", "model": str(policy), "batch_size": 8},
        "judge": {"kind": "pairwise", "model": {"backend": "openai", "model": "judge", "base_url": base_url,
                                                 "api_key_env": "APL_TEST_KEY", "max_retries": 0}, "max_retries": 1},
        "acquisitions": ["random", "certainty"],
        "seeds": [0],
        "rounds": 2,
        "prompts_per_round": 4,
        "labels_per_round": 2,
        "entropy_samples": 3,
        "hybrid_factor": 2,
        "max_tokens": 8,
        "dpo": {"beta": 0.1, "learning_rate": 1e-3, "epochs": 1, "batch_size": 2, "max_length": 128},
        "cache_path": str(root / "requests.sqlite"),
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg
