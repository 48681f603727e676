"""A live run (generate -> embed -> select -> judge -> train) with in-process backends:
only selected responses are judged, every call goes through the request cache, a crash
and resume or a re-run repeat no call."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from activepref.backends.base import ChatRequest, ChatResult
from activepref.config import load_config
from activepref.core.cache import RequestCache
from activepref.core.loop import LiveParts
from activepref.core.runs import resume, run, status
from activepref.core.store import RunStore


class CountingBackend:
    """Deterministic fake model: text from a hash of the request; Likert digits from the
    response length (longer answers score higher)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.calls: list[ChatRequest] = []

    def complete(self, requests: Sequence[ChatRequest], on_result) -> None:
        for i, r in enumerate(requests):
            self.calls.append(r)
            if r.params.top_logprobs:  # a judge call
                body = r.messages[-1][1].split("## Response\n")[1].split("\n\n## Question")[0]
                # Mass split between two neighbouring digits by length: a continuous, length-increasing score.
                level = min(len(body) / 50.0, 3.999)
                low, frac = int(level), level - int(level)
                lps = {str(low + 1): math.log(max(1 - frac, 1e-9)), str(low + 2): math.log(max(frac, 1e-9)), "The": math.log(0.3)}
                on_result(i, ChatResult(str(low + 1), 50, 1, first_token_logprobs=lps))
            else:
                h = hashlib.sha256(json.dumps([r.messages, r.params.seed, self.endpoint]).encode()).hexdigest()
                text = (h * 4)[: 10 + int(h[:3], 16) % 190]
                on_result(i, ChatResult(text, 20, len(text) // 4))


class HashEmbedder:
    name = "hash"
    dim = 16

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, conversations: Sequence[list[dict[str, str]]]) -> np.ndarray:
        self.calls += len(conversations)
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
            v = rng.normal(size=self.dim)
            v[0] = len(text) / 100.0  # a learnable signal: length, which the fake judge rewards
            out.append(v)
        return np.asarray(out, dtype=np.float32)


@pytest.fixture()
def setup(tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(12)))
    cfg_path = tmp_path / "live.yaml"
    cfg_path.write_text(
        "prompts: prompts.jsonl\nmethod: dts\nbatch_size: 4\niterations: 3\nseed: 1\n"
        "generation:\n  samples_per_model: 2\n  max_tokens: 32\n  models:\n"
        "    - {name: a, backend: openai, base_url: 'http://127.0.0.1:9/v1', model: m1}\n"
        "    - {name: b, backend: openai, base_url: 'http://127.0.0.1:9/v1', model: m2}\n"
        "embedding: {backend: sentence_transformers, model: unused}\n"
        "judge: {kind: likert, backend: openai, base_url: 'http://127.0.0.1:9/v1', model: j}\n"
        f"cache_path: {tmp_path / 'cache.sqlite'}\n"
        "enn: {heads: 4, hidden: 8, steps: 10, lr: 0.01}\n"
    )
    return tmp_path, load_config(cfg_path)


def _parts(tmp_path: Path) -> tuple[LiveParts, dict[str, CountingBackend], CountingBackend, HashEmbedder]:
    gens = {"a": CountingBackend("fake|m1"), "b": CountingBackend("fake|m2")}
    judge = CountingBackend("fake|judge")
    emb = HashEmbedder()
    return LiveParts(gens, emb, RequestCache(tmp_path / "cache.sqlite"), judge_backend=judge), gens, judge, emb


def test_live_run_judges_only_selected_and_records_everything(setup) -> None:
    tmp_path, cfg = setup
    parts, gens, judge, emb = _parts(tmp_path)
    history = run(cfg, tmp_path / "run", live=parts)
    assert len(history) == 3
    # 3 iterations x 4 prompts x (2 models x 2 samples) generated; DTS judges 2 of 4 per prompt, 4 aspects each.
    assert sum(len(g.calls) for g in gens.values()) == 48
    assert len(judge.calls) == 3 * 4 * 2 * 4
    with RunStore.open_readonly(tmp_path / "run") as store:
        responses, _ = store.responses()
        assert len(responses) == 48 and emb.calls == 48
        meta = json.loads(store.conn.execute("SELECT meta FROM responses LIMIT 1").fetchone()[0])
        assert meta["sampling"]["max_tokens"] == 32 and "completion_tokens" in meta
        principles = {r.principle for r in responses}
        assert principles <= {"helpfulness", "truthfulness", "honesty", "instruction_following"} and len(principles) >= 3
        assert all(r.system_prompt for r in responses)
        stats = store.call_stats()
        assert stats["generation"]["calls"] == 48 and stats["judge"]["calls"] == 96
        rows = store.preference_rows()
        counts = [json.loads(s) for (s,) in store.conn.execute("SELECT pair_status FROM iterations")]
        assert sum(c["ok"] for c in counts) == len(rows) and sum(c["ok"] + c["tie"] for c in counts) == 12
        assert len(rows) >= 10
        assert all(p.score_chosen > p.score_rejected for p in rows)
    st = status(tmp_path / "run")
    assert st.annotations == 24 and st.pairs == len(rows)


def test_rerunning_the_same_config_makes_no_new_calls(setup) -> None:
    tmp_path, cfg = setup
    parts, gens, judge, _ = _parts(tmp_path)
    run(cfg, tmp_path / "first", live=parts)
    n_gen, n_judge = sum(len(g.calls) for g in gens.values()), len(judge.calls)
    parts2, gens2, judge2, _ = _parts(tmp_path)
    run(cfg, tmp_path / "second", live=parts2)
    assert sum(len(g.calls) for g in gens2.values()) == 0 and len(judge2.calls) == 0
    assert n_gen == 48 and n_judge == 96
    with RunStore.open_readonly(tmp_path / "first") as a, RunStore.open_readonly(tmp_path / "second") as b:
        assert a.preference_rows() == b.preference_rows()
        assert b.call_stats()["judge"]["cache_hits"] == 96


def test_crash_during_judging_then_resume_repeats_no_call(setup, monkeypatch) -> None:
    tmp_path, cfg = setup
    parts, gens, judge, _ = _parts(tmp_path)
    calls = {"n": 0}
    original = judge.complete

    def dying(requests, on_result):
        def counted(i, r):
            calls["n"] += 1
            on_result(i, r)
            if calls["n"] == 20:  # a crash after 20 answered judge calls of iteration 0
                raise KeyboardInterrupt

        original(requests, counted)

    monkeypatch.setattr(judge, "complete", dying)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", live=parts)
    assert status(tmp_path / "run").iterations_done == 0
    parts2, gens2, judge2, emb2 = _parts(tmp_path)
    resume(tmp_path / "run", live=parts2)
    assert len(judge.calls) == 20
    # The resumed run asked only what was never answered: 96 judge calls in all, none twice.
    assert len(judge.calls) + len(judge2.calls) == 96
    assert sum(len(g.calls) for g in gens2.values()) == 32  # iterations 1-2 only
    parts3, _, judge3, _ = _parts(tmp_path)
    run(cfg, tmp_path / "uninterrupted", live=parts3)  # same seed; answered from the cache
    assert len(judge3.calls) == 0
    with RunStore.open_readonly(tmp_path / "run") as store, RunStore.open_readonly(tmp_path / "uninterrupted") as ref:
        assert store.preference_rows() == ref.preference_rows()
        assert len(ref.preference_rows()) >= 10
