"""`activepref evaluate` and its pieces: held-out pairs against a slow reference, the reward
model's accuracy on clean / reversed / random labels, label accuracy by hand, dataset reading."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from activepref.bench.dataset_quality import (
    HARD_QUANTILE,
    evaluate_pool_pairs,
    heldout_pairs,
    read_dataset_pairs,
    standardized_features,
)
from activepref.cli import app
from activepref.errors import PoolFormatError
from activepref.pools.reader import Pool
from activepref.pools.records import Prompt, Response

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_fixtures import one_torch_thread, wide_consoles  # noqa: E402,F401 - autouse fixtures

runner = CliRunner()


def _reference_pairs(prompt_index, reference, prompts):
    out = set()
    for p in prompts:
        idx = [i for i in range(len(prompt_index)) if prompt_index[i] == p]
        for i, j in itertools.combinations(idx, 2):
            if reference[i] > reference[j]:
                out.add((i, j))
            elif reference[j] > reference[i]:
                out.add((j, i))
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_heldout_pairs_are_every_strictly_ordered_same_prompt_pair(n_prompts: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prompt_index = rng.integers(0, n_prompts, size=n_prompts * m)
    reference = rng.integers(0, 3, size=len(prompt_index)).astype(float)  # ties on purpose
    chosen = sorted(set(rng.choice(n_prompts, size=rng.integers(1, n_prompts + 1)).tolist()))
    got = heldout_pairs(prompt_index, reference, chosen, seed=0, limit=10**9)
    assert {tuple(map(int, r)) for r in got} == _reference_pairs(prompt_index, reference, chosen)
    assert len(got) == len({tuple(r) for r in got.tolist()})


def test_heldout_pairs_sample_is_seeded_and_limited() -> None:
    prompt_index = np.repeat(np.arange(20), 10)
    reference = np.random.default_rng(0).normal(size=200)
    a = heldout_pairs(prompt_index, reference, range(20), seed=3, limit=100)
    b = heldout_pairs(prompt_index, reference, range(20), seed=3, limit=100)
    c = heldout_pairs(prompt_index, reference, range(20), seed=4, limit=100)
    assert len(a) == 100 and np.array_equal(a, b) and not np.array_equal(a, c)


def _linear_pool(n_prompts: int = 120, m: int = 6, d: int = 8, seed: int = 0) -> Pool:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_prompts * m, d)).astype(np.float32)
    w = rng.normal(size=d)
    oracle = x.astype(np.float64) @ w
    prompts = [Prompt(f"p{i}", f"prompt {i}") for i in range(n_prompts)]
    responses = [Response(f"r{k}", f"p{k // m}", f"model-{k % m}", f"answer {k}") for k in range(n_prompts * m)]
    return Pool(prompts, responses, np.repeat(np.arange(n_prompts), m), x, oracle + rng.normal(size=len(oracle)), {}, oracle)


def _pairs(pool: Pool, prompts: range, flip: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    chosen, rejected = [], []
    for p in prompts:
        a, b = rng.choice(np.nonzero(pool.prompt_index == p)[0], size=2, replace=False)
        better, worse = (a, b) if pool.oracle[a] > pool.oracle[b] else (b, a)
        if flip == "reversed" or (flip == "random" and rng.random() < 0.5):
            better, worse = worse, better
        chosen.append(better)
        rejected.append(worse)
    return np.asarray(chosen), np.asarray(rejected)


@pytest.mark.parametrize(("flip", "low", "high"), [("clean", 0.85, 1.0), ("reversed", 0.0, 0.15), ("random", 0.3, 0.7)])
def test_the_reward_model_learns_what_the_labels_say(flip: str, low: float, high: float) -> None:
    pool = _linear_pool()
    chosen, rejected = _pairs(pool, range(80), flip)
    q = evaluate_pool_pairs(pool, chosen, rejected, heldout=range(80, 120), seed=0)
    assert low <= q.rm_accuracy <= high, q
    assert abs(q.rm_accuracy_hard - 0.5) <= abs(q.rm_accuracy - 0.5) + 0.05  # small-gap pairs sit nearer chance
    assert q.pairs == 80 and q.prompts == 80 and q.heldout_prompts == 40 and q.reference == "oracle"
    again = evaluate_pool_pairs(pool, chosen, rejected, heldout=range(80, 120), seed=0)
    assert again == q  # seeded: the same numbers twice


def test_label_accuracy_and_table21_means_by_hand() -> None:
    pool = _linear_pool(n_prompts=4, m=3)
    chosen = np.array([0, 4, 6])
    rejected = np.array([1, 3, 8])
    q = evaluate_pool_pairs(pool, chosen, rejected, heldout=[3], seed=0)
    o = pool.oracle
    assert q.label_accuracy == pytest.approx(np.mean([o[0] > o[1], o[4] > o[3], o[6] > o[8]]))
    assert q.mean_oracle_chosen == pytest.approx((o[0] + o[4] + o[6]) / 3)
    assert q.mean_oracle_rejected == pytest.approx((o[1] + o[3] + o[8]) / 3)
    assert q.heldout_pairs == 3  # prompt 3: three candidates, three ordered pairs
    assert 0 < HARD_QUANTILE < 1


def test_standardized_features_are_z_scores() -> None:
    x = np.random.default_rng(0).normal(loc=5, scale=3, size=(500, 4)).astype(np.float32)
    z = standardized_features(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-3)


def test_dataset_rows_are_found_by_response_id_or_by_text(tmp_path: Path) -> None:
    pool = _linear_pool(n_prompts=3, m=3)
    path = tmp_path / "d.jsonl"
    rows = [
        {"prompt_id": "p0", "chosen": [{"role": "assistant", "content": "answer 1"}], "rejected": [{"role": "assistant", "content": "answer 2"}]},
        {"prompt_id": "p1", "chosen": "answer 4", "rejected": "answer 3"},
        {"prompt_id": "p2", "chosen": "x", "rejected": "y", "response_id_chosen": "r8", "response_id_rejected": "r6"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chosen, rejected = read_dataset_pairs(pool, path)
    assert chosen.tolist() == [1, 4, 8] and rejected.tolist() == [2, 3, 6]
    path.write_text(json.dumps({"prompt_id": "p0", "chosen": "answer 1", "rejected": "answer 7"}) + "\n")
    with pytest.raises(PoolFormatError, match=r"d.jsonl.*line 1.*rejected.*no response of prompt 'p0'"):
        read_dataset_pairs(pool, path)
    path.write_text("{not json\n")
    with pytest.raises(PoolFormatError, match="line 1"):
        read_dataset_pairs(pool, path)


def test_cli_evaluate_ends_with_one_json_line(tmp_path: Path) -> None:
    from activepref.pools.sources import write_pool

    pool = _linear_pool()
    pool_path = write_pool(pool, tmp_path / "pool.parquet")
    chosen, rejected = _pairs(pool, range(60), "clean")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(
        json.dumps({"prompt_id": pool.responses[c].prompt_id, "chosen": pool.responses[c].text, "rejected": pool.responses[r].text}) + "\n"
        for c, r in zip(chosen, rejected)))
    result = runner.invoke(app, ["evaluate", "--pool", str(pool_path), "--dataset", str(data)])
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"rm_accuracy", "rm_accuracy_hard", "label_accuracy", "mean_oracle_chosen", "mean_oracle_rejected", "pairs", "prompts"} <= set(last)
    assert last["pairs"] == 60 and last["prompts"] == 60 and last["heldout_prompts"] == 60 and last["label_accuracy"] == 1.0
    assert last["rm_accuracy"] > 0.8
