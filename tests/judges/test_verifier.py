"""The verifier judge on a pool whose prompts carry verifiable instructions: scores equal the
IFEval oracle, instructions travel pool -> store -> judge, label noise is seeded per response,
a prompt without instructions is a recorded failure, malformed instructions name the line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from activepref.config import load_config
from activepref.core.runs import run, status
from activepref.core.store import RunStore
from activepref.errors import PoolFormatError
from activepref.ifeval.scoring import verify
from activepref.pools.reader import read_pool, read_prompts

INSTRUCTIONS = [{"kind": "no_commas"}, {"kind": "max_words", "n": 6}]
TEXTS = ["short and clean", "Short, with a comma", "this one is far too long to pass the limit", "ok then", "fine; no comma here",
         "a, b, c, d, e, f, g, h"]


def write_pool(path: Path, prompts: int = 12, with_instructions: bool = True, extra_prompt: bool = False) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(prompts):
        for j, text in enumerate(TEXTS):
            row = {"prompt_id": f"p{p}", "prompt": f"question {p}", "response_id": f"p{p}-r{j}", "model": f"m{j % 3}",
                   "response": f"{text} {p}", "features": rng.normal(size=4).tolist()}
            if with_instructions:
                row["instructions"] = json.dumps(INSTRUCTIONS) if p % 2 else INSTRUCTIONS
            rows.append(row)
    if extra_prompt:
        for j in range(2):
            rows.append({"prompt_id": "bare", "prompt": "no instructions", "response_id": f"bare-{j}", "model": "m0",
                         "response": TEXTS[j], "features": rng.normal(size=4).tolist()})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def cfg(pool: Path, tmp_path: Path, **judge):
    return load_config(None, {
        "pool": str(pool), "method": "maxmin", "batch_size": 4, "iterations": 2, "eval_fraction": 0.2,
        "enn.heads": 2, "enn.hidden": 4, "enn.steps": 2, "judge": {"kind": "verifier", **judge},
    })


def test_instructions_reach_the_judge_through_the_store_and_scores_are_the_oracle(tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.jsonl")
    assert read_pool(pool).prompts[1].meta == {"instructions": INSTRUCTIONS}  # JSON text or list alike
    run(cfg(pool, tmp_path), tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        prompts = [p for p, _, _ in store.prompts()]
        responses, _ = store.responses()
        scores = store.scores("verifier")
        prefs = store.preference_rows()
    assert all(p.meta["instructions"] == INSTRUCTIONS for p in prompts)
    assert len(scores) == 2 * 4 * len(TEXTS)  # maxmin judges every candidate
    for r, value in scores.items():
        assert value == pytest.approx(verify(INSTRUCTIONS, responses[r].text).oracle)
    assert prefs and all(p.score_chosen > p.score_rejected for p in prefs)


def test_label_noise_is_seeded_per_response(tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.jsonl")
    run(cfg(pool, tmp_path, options={"noise_sd": 0.5}), tmp_path / "a")
    run(cfg(pool, tmp_path, options={"noise_sd": 0.5}), tmp_path / "b")
    with RunStore.open_readonly(tmp_path / "a") as a, RunStore.open_readonly(tmp_path / "b") as b:
        noisy, again = a.scores("verifier|noise_sd=0.5"), b.scores("verifier|noise_sd=0.5")
        responses, _ = a.responses()
    assert noisy == again  # same seed, same noise
    clean = {r: verify(INSTRUCTIONS, responses[r].text).oracle for r in noisy}
    diffs = np.array([noisy[r] - clean[r] for r in noisy])
    assert np.all(diffs != 0) and 0.2 < diffs.std() < 1.0


def test_a_prompt_without_instructions_is_a_recorded_failure(tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.jsonl", prompts=3, extra_prompt=True)
    config = load_config(None, {"pool": str(pool), "method": "maxmin", "batch_size": 4, "iterations": 1, "eval_fraction": 0.0,
                                "enn.heads": 2, "enn.hidden": 4, "enn.steps": 2, "judge": {"kind": "verifier"}})
    run(config, tmp_path / "run")
    with RunStore.open_readonly(tmp_path / "run") as store:
        failures = store.failures("verifier")
    assert len(failures) == 2 and all("no verifiable instructions" in e for e in failures.values())
    assert status(tmp_path / "run").failures == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [('"[{\\"kind\\": \\"shout\\"}]"', "unknown instruction kind 'shout'"), ("[{\"kind\": \"max_words\"}]", "expected ['n']")],
)
def test_malformed_instructions_name_file_line_and_field(tmp_path: Path, value: str, message: str) -> None:
    pool = write_pool(tmp_path / "pool.jsonl", prompts=2)
    lines = pool.read_text().splitlines()
    row = json.loads(lines[2])
    row["instructions"] = json.loads(value)
    lines[2] = json.dumps(row)
    pool.write_text("\n".join(lines) + "\n")
    with pytest.raises(PoolFormatError) as err:
        read_pool(pool)
    assert "line 3" in str(err.value) and "'instructions'" in str(err.value) and message in str(err.value)


def test_instructions_must_agree_across_a_prompts_rows_and_prompt_files_carry_them(tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.jsonl", prompts=1)
    lines = pool.read_text().splitlines()
    row = json.loads(lines[1])
    row["instructions"] = [{"kind": "lowercase"}]
    lines[1] = json.dumps(row)
    pool.write_text("\n".join(lines) + "\n")
    with pytest.raises(PoolFormatError, match="line 2.*instructions.*differ"):
        read_pool(pool)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt_id": "a", "prompt": "hi", "instructions": INSTRUCTIONS}) + "\n")
    assert read_prompts(prompts)[0].meta == {"instructions": INSTRUCTIONS}
