"""Checks on the shipped built-in pool (src/activepref/resources/builtin_pool.parquet).

Reads the parquet with pyarrow only; the file is produced by
scripts/build_builtin_pool.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

POOL = Path(__file__).resolve().parents[1] / "src" / "activepref" / "resources" / "builtin_pool.parquet"
ASPECTS = ("helpfulness", "truthfulness", "honesty", "instruction_following")
COLUMNS = [
    "prompt_id",
    "prompt",
    "response_id",
    "model",
    "response",
    "principle",
    "score",
    *(f"score_{a}" for a in ASPECTS),
    "oracle",
    "features",
]


@pytest.fixture(scope="module")
def table():
    assert POOL.is_file(), f"missing {POOL}; run scripts/build_builtin_pool.py"
    return pq.read_table(POOL)


@pytest.fixture(scope="module")
def cols(table):
    return table.to_pydict()


@pytest.fixture(scope="module")
def features(table):
    col = table.column("features").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    lengths = col.value_lengths().to_numpy(zero_copy_only=False)
    assert (lengths == 384).all()
    return flat.reshape(len(col), 384)


def test_file_size():
    assert POOL.stat().st_size < 2_000_000


def test_schema(table):
    assert table.column_names == COLUMNS
    schema = table.schema
    for name in ("prompt_id", "prompt", "response_id", "model", "response", "principle"):
        assert schema.field(name).type == pa.string(), name
    for name in ("score", *(f"score_{a}" for a in ASPECTS), "oracle"):
        assert schema.field(name).type == pa.float64(), name
    ftype = schema.field("features").type
    assert pa.types.is_list(ftype) and ftype.value_type == pa.float32()
    for name in COLUMNS:
        assert table.column(name).null_count == 0, name


def test_prompts_and_candidate_counts(cols):
    pids = cols["prompt_id"]
    counts = Counter(pids)
    assert len(counts) == 80
    assert all(5 <= c <= 8 for c in counts.values())
    assert len(set(counts.values())) > 1  # the count varies per prompt
    # rows grouped by prompt, in MT-bench question order
    order = list(dict.fromkeys(pids))
    assert order == [f"mtbench-{q}" for q in range(81, 161)]
    runs = [p for i, p in enumerate(pids) if i == 0 or pids[i - 1] != p]
    assert runs == order
    # one prompt text per prompt id
    prompt_of = {}
    for pid, prompt in zip(pids, cols["prompt"]):
        assert prompt_of.setdefault(pid, prompt) == prompt
        assert prompt.strip()


def test_response_ids(cols):
    rids = cols["response_id"]
    assert len(set(rids)) == len(rids)
    for pid, rid in zip(cols["prompt_id"], rids):
        assert rid.startswith(pid + "-r")
        assert rid[len(pid) + 2 :].isdigit()
    assert all(r.strip() for r in cols["response"])
    pairs = list(zip(cols["prompt_id"], cols["response"]))
    assert len(set(pairs)) == len(pairs)  # no duplicate texts within a prompt


def test_labels(cols):
    assert set(cols["principle"]) <= {"helpfulness", "truthfulness", "honesty"}
    models = set(cols["model"])
    assert {"reference-gpt4", "reference-gpt4-0125", "off-topic", "refusal", "echo"} <= models


def test_features(features):
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    norms = np.linalg.norm(features.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_features_differ_within_prompt(cols, features):
    pids = np.array(cols["prompt_id"])
    for pid in np.unique(pids):
        f = features[pids == pid].astype(np.float64)
        sims = f @ f.T
        off = sims[~np.eye(len(f), dtype=bool)]
        assert off.max() < 0.999, pid


def test_scores(cols):
    score = np.asarray(cols["score"])
    aspects = np.stack([np.asarray(cols[f"score_{a}"]) for a in ASPECTS])
    assert np.isfinite(score).all() and np.isfinite(aspects).all()
    np.testing.assert_allclose(score, aspects.mean(axis=0), rtol=0, atol=1e-9)
    assert score.min() >= 1.0 and score.max() <= 5.0
    assert aspects.min() >= 1.0 and aspects.max() <= 5.0


def test_oracle_correlates_with_score(cols):
    stats = pytest.importorskip("scipy.stats")
    oracle = np.asarray(cols["oracle"])
    assert np.isfinite(oracle).all()
    rho = stats.spearmanr(oracle, np.asarray(cols["score"])).statistic
    assert rho > 0.6


def test_references_beat_refusals(cols):
    oracle = np.asarray(cols["oracle"])
    models = np.asarray(cols["model"])
    ref = oracle[np.isin(models, ["reference-gpt4", "reference-gpt4-0125"])].mean()
    assert ref > oracle[models == "refusal"].mean() > oracle[models == "off-topic"].mean()
